"""Fixtures for batch tests: a small clip and manifests of identity-backbone jobs (no model, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture
def manifest(tmp_path: Path, make_clip):
    """``manifest(**changes) -> path``: 2 clips × 2 prompts × 2 presets × 2 seeds = 16 jobs in 2 groups."""
    make_clip(tmp_path / "clip.mp4", frames=5)

    def write(**changes) -> Path:
        data = {
            "output": "runs",
            "base": {"video": {"path": "clip.mp4", "frames": 4, "size": [64, 64]}, "prompt": "a red cat",
                     "regions": {"cat": "red cat"}, "layout": {"name": "full-frame"}, "backbone": "identity",
                     "modulator": "null"},
            "clips": {"first": {}, "second": {"video": {"start": 1}}},
            "prompts": {"red": {}, "blue": {"prompt": "a blue cat", "regions": {"cat": "blue cat"}}},
            "presets": {"baseline": {"modulation": {"modulate_cross": False, "modulate_self": False}}, "full": {}},
            "seeds": [0, 1],
        }
        data.update(changes)
        path = tmp_path / "batch.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
