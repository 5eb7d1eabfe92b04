"""An output folder's ``config.yaml`` is a job that reruns from anywhere and never overwrites by itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


def test_config_yaml_reruns_from_another_working_directory(demo_job, tiny_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative clip, mask folder, model and ControlNet paths; the rerun starts in an unrelated folder."""
    inputs = tmp_path / "inputs"
    relative = os.path.relpath(tiny_folder, inputs)
    job = demo_job(backbone={"name": "sd15", "model": relative, "device": "cpu"}, overwrite=True,
                   control=[{"annotator": "canny", "model": os.path.join(relative, "controlnet")}])
    assert run_cli(["edit", str(job), "--quiet"], env=ENV).exit_code == 0
    config = tmp_path / "out" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    assert "overwrite" not in saved
    assert Path(saved["layout"][0]["dir"]).is_absolute() and saved["layout"][0]["name"] == "masks"
    assert Path(saved["backbone"]["model"]) == tiny_folder.resolve() and Path(saved["control"][0]["model"]).is_absolute()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = run_cli(["edit", str(config), "--quiet"], env=ENV)
    assert again.exit_code == 2 and "--overwrite" in again.stderr  # the finished run is kept
    rerun = run_cli(["edit", str(config), "--quiet", "--out", "second"], env=ENV)
    assert rerun.exit_code == 0, rerun.stderr
    assert (elsewhere / "second" / "result.mp4").exists()
    assert yaml.safe_load((elsewhere / "second" / "config.yaml").read_text())["layout"] == saved["layout"]
