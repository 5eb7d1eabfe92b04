"""The Python API in diffusers' conventions (docs/python.md): from_pretrained, from_pipe, step callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import stmod
from stmod import EditCancelled, Editor


def _job(demo_job) -> dict:
    path = demo_job()
    job = yaml.safe_load(path.read_text())
    job["video"]["path"] = str(path.parent / job["video"]["path"])
    job["layout"]["dir"] = str(path.parent / job["layout"]["dir"])
    return job


def test_from_pretrained_runs_a_mapping_with_a_step_callback(demo_job, tiny_folder: Path, tmp_path: Path) -> None:
    """torch_dtype and device reach the backbone; the callback hears every inversion and denoising step."""
    editor = Editor.from_pretrained(tiny_folder, torch_dtype=torch.float32, device="cpu", progress=False, cache=False)
    assert stmod.Editor is Editor and editor.backbone.options["dtype"] == "float32"
    calls = []
    result = editor.run(_job(demo_job), callback_on_step_end=lambda *call: calls.append(call))
    steps = yaml.safe_load(demo_job().read_text())["steps"]
    assert [(c[0], c[1]) for c in calls] == ([("inversion", i) for i in range(steps)]
                                             + [("denoising", i) for i in range(steps)])
    assert all(isinstance(c[2], int) and c[3].shape[1] == 4 for c in calls)
    assert result.frames.dtype.name == "uint8" and (result.output / "result.mp4").exists()
    from diffusers.utils import export_to_video

    export_to_video(list(result.frames / 255.0), str(tmp_path / "diffusers.mp4"), fps=8)
    assert (tmp_path / "diffusers.mp4").stat().st_size > 0


def test_a_callback_returning_false_cancels_and_writes_nothing(demo_job, tiny_folder: Path, tmp_path: Path) -> None:
    editor = Editor.from_pretrained(tiny_folder, device="cpu", progress=False, cache=False)
    with pytest.raises(EditCancelled, match="denoising step 1"):
        editor.run(_job(demo_job), callback_on_step_end=lambda phase, step, t, x: not (phase == "denoising" and step == 1))
    assert not (tmp_path / "out").exists()


def test_from_pipe_uses_a_loaded_pipeline(demo_job, tiny_folder: Path) -> None:
    """An already-loaded StableDiffusionPipeline is the backbone; changed weights change the cache identity."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None, requires_safety_checker=False)
    editor = Editor.from_pipe(pipe, device="cpu", progress=False, cache=False)
    result = editor.run(_job(demo_job))
    assert result.run["frames"] == len(result.frames)
    backbone = next(iter(editor._backbones.values()))
    before = backbone.model_id
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1.0)  # as a fine-tune or a fused LoRA would
    assert Editor.from_pipe(pipe, device="cpu").registry.create("backbone", "pipeline").model_id != before


def test_from_pretrained_refuses_bad_options_at_once() -> None:
    with pytest.raises(stmod.ConfigError, match="vae_tilling"):
        Editor.from_pretrained("some/model", vae_tilling=True)
