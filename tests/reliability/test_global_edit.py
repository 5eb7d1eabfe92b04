"""A global edit (a prompt, no regions, no layout: what ``stmod-run edit --video … --prompt …`` writes)
runs with the default st-layout modulator: nothing to modulate, stock attention, and a latent blend
keeps nothing of the source (the whole frame is the edit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


@pytest.mark.parametrize("blend", ["none", "latent"])
def test_global_edit_without_regions_runs(clip: Path, tmp_path: Path, tiny_folder: Path, blend: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"video": {"path": clip.name, "frames": 2, "size": [64, 64]}, "prompt": "a red cat",
                                   "backbone": {"name": "sd15", "model": str(tiny_folder), "device": "cpu"},
                                   "steps": 2, "blend": blend, "output": "out"}))
    assert run_cli(["check", str(job)], env=ENV).exit_code == 0
    result = run_cli(["edit", str(job), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["attention"] is None and (tmp_path / "out" / "result.mp4").is_file()


def test_global_edit_blend_mask_is_the_whole_frame() -> None:
    """The blend context of a layout without regions covers every latent pixel (a region-less blend
    would otherwise return the source)."""
    import torch

    from stmod.core.pipeline.editor import _blend_context
    from stmod.core.types import LayoutMasks

    class _Session:
        class spec:  # noqa: N801 - a stand-in for EditSpec's two fields read here
            seed = 0

            class modulation:  # noqa: N801
                mask_downsample = "nearest"

        class backbone:  # noqa: N801
            device, dtype = torch.device("cpu"), torch.float32

    layout = LayoutMasks(masks=torch.zeros(2, 0, 16, 16, dtype=torch.bool), names=())
    context = _blend_context(_Session, layout, torch.zeros(2, 4, 2, 2), {}, None)
    assert context.mask.shape == (2, 1, 2, 2) and bool(context.mask.all())
