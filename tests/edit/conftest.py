"""Fixtures for end-to-end edits: the tiny model saved once per session and small demo jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stmod.backbones.tiny import build_tiny_model
from stmod.core.demo import write_demo_inputs

FRAMES, STEPS, SIZE = 4, 3, (64, 64)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD-1.5-shaped model, written with save_pretrained like a user's model folder."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture
def demo_job(tmp_path: Path, tiny_folder: Path):
    """``demo_job(**changes) -> job path``: the demo's synthetic clip, masks and job, made small.

    The backbone is ``sd15`` pointed at the saved tiny folder (the path users take with their own
    model folder) with its ControlNet for ``canny``.
    """

    def make(**changes) -> Path:
        path = write_demo_inputs(tmp_path / "inputs", frames=FRAMES, size=SIZE, steps=STEPS)
        job = yaml.safe_load(path.read_text())
        job["backbone"] = {"name": "sd15", "model": str(tiny_folder), "device": "cpu"}
        job["control"] = [{"annotator": "canny", "model": str(tiny_folder / "controlnet"), "scale": 1.0}]
        job["output"] = str(tmp_path / "out")
        job["save_attention"] = False
        job.update(changes)
        path.write_text(yaml.safe_dump(job))
        return path

    return make
