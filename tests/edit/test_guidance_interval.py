"""``guidance_interval``: classifier-free guidance in a part of the denoising steps only (Kynkäänniemi et al.,
2024); the other steps take the conditional prediction alone, as at guidance 1."""

from __future__ import annotations

import pytest
import torch

import stmod.core.pipeline.editor as editor_module
from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import ConfigError
from stmod.backbones.sd15 import StableDiffusionBackbone
from stmod.core.pipeline.editor import Editor
from stmod.testing import fresh_plugin_manager

JOB = {"video": {"path": "clip.mp4"}, "prompt": "a cat", "steps": 3}


def test_guided_steps_are_the_interval_of_the_steps_run(tmp_path) -> None:
    spec = lambda **keys: job_from_mapping({**JOB, **keys}, base_dir=tmp_path)  # noqa: E731
    assert spec().guidance_interval == (0.0, 1.0)
    assert spec().guided_steps(20) == range(0, 20)
    assert spec(guidance_interval=[0, 0.3]).guided_steps(20) == range(0, 6)
    assert spec(guidance_interval=[0.25, 0.75]).guided_steps(8) == range(2, 6)
    assert spec(guidance_interval=[0, 0.01]).guided_steps(20) == range(0, 0)  # rounds to no step
    assert spec(guidance=1.0).guided_steps(20) == range(0)  # guidance 1 guides nothing, whatever the interval


@pytest.mark.parametrize("value, match", [
    ([0.5, 0.5], "start < end"), ([0.6, 0.2], "start < end"), ([0, 1.5], "guidance_interval"),
    ([0, 0.5, 1], "list of 2 items"), (0.5, "list of 2 items"), (["a", 1], "guidance_interval"),
])
def test_a_wrong_guidance_interval_is_a_job_error_naming_the_key(tmp_path, value, match) -> None:
    with pytest.raises(ConfigError, match=match) as error:
        job_from_mapping({**JOB, "guidance_interval": value}, base_dir=tmp_path)
    assert "guidance_interval" in str(error.value)


def _run_recording_batches(monkeypatch: pytest.MonkeyPatch, job: object) -> tuple[list[int], torch.Tensor]:
    """Run ``job``; the batch size of every call to the backbone while denoising, in order, and the denoised
    latents."""
    batches: list[int] = []
    seen: dict[str, torch.Tensor] = {}
    real_denoise, real_predict = editor_module.denoise, StableDiffusionBackbone.predict_noise

    def spy_predict(self, latents, *args, **kwargs):
        if "denoising" in seen:
            batches.append(len(latents))
        return real_predict(self, latents, *args, **kwargs)

    def spy_denoise(*args, **kwargs):
        seen["denoising"] = torch.empty(0)
        seen["out"] = real_denoise(*args, **kwargs)
        return seen["out"]

    with monkeypatch.context() as patch:  # undone after the run: the next run spies on the real methods again
        patch.setattr(editor_module, "denoise", spy_denoise)
        patch.setattr(StableDiffusionBackbone, "predict_noise", spy_predict)
        Editor(fresh_plugin_manager().registry, progress=False, cache=False).run(job)
    return batches, seen["out"]


def test_steps_outside_the_interval_run_the_conditional_branch_alone(demo_job, tmp_path, monkeypatch) -> None:
    """Guided steps batch both branches; the others the conditional one (half the work). An interval that
    rounds to no step is guidance 1 exactly; the whole interval is the default exactly."""
    def job(name: str, **changes) -> object:
        return load_job(demo_job(output=str(tmp_path / name), **changes))

    steps = job("probe").steps
    full, full_out = _run_recording_batches(monkeypatch, job("full"))
    frames = full[0] // 2
    assert full == [2 * frames] * steps
    first, _ = _run_recording_batches(monkeypatch, job("first", guidance_interval=[0, 0.5]))
    guided = round(0.5 * steps)
    assert first == [2 * frames] * guided + [frames] * (steps - guided)
    none, none_out = _run_recording_batches(monkeypatch, job("none", guidance_interval=[0, 0.01]))
    one, one_out = _run_recording_batches(monkeypatch, job("one", guidance=1.0))
    assert none == one == [frames] * steps
    torch.testing.assert_close(none_out, one_out, rtol=0, atol=0)
    _, whole_out = _run_recording_batches(monkeypatch, job("whole", guidance_interval=[0, 1]))
    torch.testing.assert_close(whole_out, full_out, rtol=0, atol=0)
    assert (none_out - full_out).abs().max() > 1e-3  # the guidance changes the edit: the checks above can fail
