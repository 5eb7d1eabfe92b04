"""The shipped ``shapes-wan`` model: intact, loadable through the wan path, editing end to end on the CPU."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from stmod.backbones.shapes import edits, verify_model
from stmod.backbones.shapes_wan import SHIPPED_MODEL
from stmod.core.errors import CheckpointError
from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
#: Another model folder to run these tests on (e.g. one just trained), instead of the shipped one.
MODEL = Path(os.environ.get("STMOD_SHAPES_WAN_MODEL", SHIPPED_MODEL))


def test_shipped_model_matches_its_manifest() -> None:
    manifest = verify_model(MODEL, what="shapes-wan model")
    assert manifest["model"] == "shapes-wan"
    assert manifest["command"].startswith("python -m stmod.backbones.shapes_wan.train")
    assert all(not name.endswith((".bin", ".pt", ".ckpt", ".pth")) for name in manifest["files"])
    assert sum((MODEL / n).stat().st_size for n in manifest["files"]) < 40 * 2**20


def test_a_changed_weight_file_is_refused(tmp_path: Path) -> None:
    copy = shutil.copytree(MODEL, tmp_path / "model")
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="shapes-wan model file does not match its checksum"):
        verify_model(copy, what="shapes-wan model")


def _job(tmp_path: Path, frames: int = 5, **changes) -> Path:
    """A shapes-world instance edit (two identical objects, a colour each) as a ``shapes-wan`` job."""
    job = edits.write_case(tmp_path / "case", edits.make_case("instance", 0), frames=frames, steps=3)
    data = yaml.safe_load(job.read_text())
    data["backbone"] = {"name": "shapes-wan", **({} if MODEL == SHIPPED_MODEL else {"folder": str(MODEL)})}
    job.write_text(yaml.safe_dump({**data, **changes}))
    return job


def test_two_region_edit_end_to_end(tmp_path: Path) -> None:
    result = run_cli(["edit", str(_job(tmp_path)), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "case" / "result"
    run = json.loads((out / "run.json").read_text())
    assert run["frames"] == 5 and (out / "result.mp4").exists() and run["modulated_steps"]


def test_a_word_outside_the_world_is_refused_by_check(tmp_path: Path) -> None:
    job = _job(tmp_path)
    data = yaml.safe_load(job.read_text())
    data["regions"] = {name: "a red cat" for name in data["regions"]}
    job.write_text(yaml.safe_dump(data))
    result = run_cli(["check", str(job)], env=ENV)
    assert result.exit_code == 2 and "shapes-wan model does not know 'cat'" in result.stderr, result.stderr


def test_a_frame_count_the_vae_cannot_take_is_refused_by_check(tmp_path: Path) -> None:
    result = run_cli(["check", str(_job(tmp_path, frames=8))], env=ENV)
    assert result.exit_code == 2 and "use 5 or 9" in result.stderr, result.stderr
