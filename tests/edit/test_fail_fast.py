"""Weights that cannot be had fail in `check`, within seconds, in one line; relative model folders work."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stmod.testing import run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}


def test_unreachable_hub_is_one_line_from_check(job_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id that is not in the HF cache, with the hub unreachable (a closed local port here): exit 2 at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    job = job_file(backbone={"name": "sd15", "model": "someone/missing-model"}, layout=[], regions={})
    started = time.perf_counter()
    result = run_cli([*TESTING, "check", str(job)], env=ENV)
    assert time.perf_counter() - started < 20
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "someone/missing-model" in result.stderr and "cannot be reached (127.0.0.1:9" in result.stderr
    assert "hf download someone/missing-model" in result.stderr


def test_a_relative_model_folder_without_dot_slash(job_file, tiny_folder: Path, tmp_path: Path) -> None:
    """`model: ckpt/tiny` (as the official configs write it) is the job folder's ckpt/tiny, not a hub id."""
    (tmp_path / "ckpt").mkdir()
    os.symlink(tiny_folder, tmp_path / "ckpt" / "tiny")
    job = job_file(backbone={"name": "sd15", "model": "ckpt/tiny", "device": "cpu"}, layout=[], regions={})
    result = run_cli([*TESTING, "check", str(job)], env=ENV)
    assert result.exit_code == 0, result.stderr


def test_eval_clip_fails_within_seconds_when_the_hub_is_unreachable(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """CLIP weights neither local nor cached, the hub unreachable: one clear error at once (not a minute of retries)."""
    from stmod.core.errors import CheckpointError
    from stmod.plugins.eval.clipscore import ClipScorer

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="hub cannot be reached .127.0.0.1:9"):
        ClipScorer.load("someone/clip-model")
    assert time.perf_counter() - started < 10
