"""Bad input exits 2 with one clear line, before any model loads, and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


def _edit(job: Path, *flags: str):
    return run_cli(["edit", str(job), "--quiet", *flags], env=ENV)


def _assert_clean_failure(result, tmp_path: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_region_without_mask(demo_job, tmp_path: Path) -> None:
    """More regions than mask folders: the region without a folder is named."""
    job = demo_job(regions={"square": "red cat", "disc": "blue dog", "tree": "a"})
    _assert_clean_failure(_edit(job), tmp_path, "region 'tree' has no mask folder", "disc, square")


def test_mask_frames_fewer_than_selected(demo_job, tmp_path: Path) -> None:
    """A mask folder missing a selected frame names the region, the frame and the folder."""
    job = demo_job()
    (tmp_path / "inputs" / "masks" / "disc" / "00003.png").unlink()
    _assert_clean_failure(_edit(job), tmp_path, "region 'disc'", "source frame 3")


def test_unreadable_video(demo_job, tmp_path: Path) -> None:
    """A file that is not a video names video.path."""
    job = demo_job()
    (tmp_path / "inputs" / "clip.mp4").write_bytes(b"this is not a video")
    _assert_clean_failure(_edit(job), tmp_path, "video.path=")


def test_empty_frames_folder(demo_job, tmp_path: Path) -> None:
    """An empty frames folder is an unusable video."""
    (tmp_path / "empty").mkdir()
    job = demo_job(video={"path": str(tmp_path / "empty"), "frames": 4, "size": [64, 64]})
    _assert_clean_failure(_edit(job), tmp_path, "video.path=")


def test_too_many_frames_selected(demo_job, tmp_path: Path) -> None:
    """Asking for more frames than the clip has says how many exist."""
    _assert_clean_failure(_edit(demo_job(), "--frames", "9"), tmp_path, "clip has 4 frames")


def test_local_prompt_not_in_global_prompt(demo_job, tmp_path: Path) -> None:
    """A local prompt that is not part of the global prompt is named."""
    job = demo_job(regions={"square": "green tree", "disc": "blue dog"})
    _assert_clean_failure(_edit(job), tmp_path, "'green tree'")


def test_local_prompt_inside_a_longer_word(demo_job, tmp_path: Path) -> None:
    """'man' inside 'spiderman' is explained (the official code drops it silently)."""
    job = demo_job(prompt="a spiderman and a blue dog", regions={"square": "man", "disc": "blue dog"})
    _assert_clean_failure(_edit(job), tmp_path, "'man'", "spiderman")


def test_prompt_over_77_tokens(demo_job, tmp_path: Path) -> None:
    """A prompt longer than CLIP's 77 tokens is refused, not truncated."""
    long_prompt = "a red cat and a blue dog " + "on the grass " * 40
    _assert_clean_failure(_edit(demo_job(prompt=long_prompt)), tmp_path, "77")


def test_missing_model_folder(demo_job, tmp_path: Path) -> None:
    """A model folder that does not exist names it."""
    job = demo_job(backbone={"name": "sd15", "model": str(tmp_path / "nowhere"), "device": "cpu"})
    _assert_clean_failure(_edit(job), tmp_path, "nowhere", "not found")


def test_incomplete_model_folder(demo_job, tmp_path: Path, tiny_folder: Path) -> None:
    """A folder that is not a diffusers model says which parts are missing."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder / "unet", broken / "unet")
    job = demo_job(backbone={"name": "sd15", "model": str(broken), "device": "cpu"})
    _assert_clean_failure(_edit(job), tmp_path, "lacks vae/, text_encoder/, tokenizer/, scheduler/")


def test_hub_model_not_cached_offline(demo_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with a hub id that is not cached: say how to get the weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    job = demo_job(backbone={"name": "sd15", "model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "device": "cpu"})
    _assert_clean_failure(_edit(job), tmp_path, "not in the Hugging Face cache", "hf download stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_missing_controlnet_folder(demo_job, tmp_path: Path) -> None:
    """A ControlNet path that does not exist is named."""
    job = demo_job(control=[{"annotator": "canny", "model": str(tmp_path / "no-cn")}])
    _assert_clean_failure(_edit(job), tmp_path, "no-cn")


def test_cuda_requested_without_cuda(demo_job, tmp_path: Path) -> None:
    """--device cuda on a machine without CUDA is a clear error."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_clean_failure(_edit(demo_job(), "--device", "cuda"), tmp_path, "no CUDA device")


def test_unknown_option_of_a_component(demo_job, tmp_path: Path) -> None:
    """A misspelled component option names it and suggests the right one."""
    job = demo_job(blend={"name": "latent", "soft_egde": 1})
    _assert_clean_failure(_edit(job), tmp_path, "unknown key 'soft_egde'", "soft_edge")


def test_job_names_frames_folder_relative_to_job(demo_job, tmp_path: Path) -> None:
    """Relative paths in a job are relative to the job file, not the working directory."""
    job = demo_job()
    data = yaml.safe_load(job.read_text())
    assert data["video"]["path"] == "clip.mp4"
    assert run_cli(["check", str(job)], env=ENV).exit_code == 0
