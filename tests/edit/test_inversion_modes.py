"""``inversion``: how denoising keeps to the inversion — ``plain`` (the official code), ``direct`` (per-step
drift corrections, Ju et al. 2024) and ``negative-prompt`` (guidance away from the source prompt, Miyake et
al. 2023)."""

from __future__ import annotations

import pytest
import torch
import yaml

import stmod.core.pipeline.editor as editor_module
from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import ConfigError
from stmod.core.pipeline.editor import Editor
from stmod.core.sampling import FlowSchedule, NoiseSchedule, denoise, drift_corrections, invert
from stmod.testing import fresh_plugin_manager

SCHEDULES = {
    "ddim": NoiseSchedule(alphas_cumprod=torch.linspace(0.9991, 0.0047, 1000, dtype=torch.float64),
                          clean_alpha=0.9991, steps_offset=1),
    "flow": FlowSchedule(shift=3.0),
}


def _linear_predict(seed: int, channels: int):
    """A prediction ``A_t·x + b_t`` per timestep, random and fixed: a stand-in network."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def predict(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        if t not in weights:
            weights[t] = (torch.randn(channels, channels, generator=generator, dtype=torch.float64) * 0.3,
                          torch.randn(channels, 1, 1, generator=generator, dtype=torch.float64) * 0.3)
        a, b = weights[t]
        return torch.einsum("dc,fchw->fdhw", a, x) + b

    return predict


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_direct_corrections_keep_denoising_on_the_trajectory(kind: str) -> None:
    """With the corrections of the prediction it denoises with, every step lands on the inversion's next level
    exactly (float64), though that prediction differs from the inversion's; without them it does not."""
    schedule, channels = SCHEDULES[kind], 3
    x0 = torch.randn(2, channels, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    timesteps = schedule.timesteps(6)
    trajectory = invert(x0, _linear_predict(2, channels), schedule, timesteps)
    guided = _linear_predict(3, channels)  # "the source prompt at guidance 7.5": not the inversion's prediction
    corrections = drift_corrections(trajectory, guided, schedule, timesteps)
    levels = [*timesteps[1:], 0]
    # the formula, step by step
    for i, t in enumerate(timesteps):
        x = trajectory[t]
        expected = trajectory[levels[i]] - schedule.move(x, guided(x, t, i), t, levels[i])
        torch.testing.assert_close(corrections[i], expected, rtol=0, atol=1e-12)
    seen: list[torch.Tensor] = []
    out = denoise(trajectory[timesteps[0]], guided, schedule, timesteps, corrections=corrections,
                  on_step_end=lambda i, t, x: seen.append(x.clone()))
    for i, x in enumerate(seen):
        torch.testing.assert_close(x, trajectory[levels[i]], rtol=0, atol=1e-10)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)
    plain = denoise(trajectory[timesteps[0]], guided, schedule, timesteps)
    assert (plain - x0).abs().max() > 1e-2  # the drift the corrections cancel
    with pytest.raises(ValueError, match="5 corrections for 6 denoising steps"):
        denoise(trajectory[timesteps[0]], guided, schedule, timesteps, corrections=corrections[:5])


def _final_latents(monkeypatch: pytest.MonkeyPatch, job: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``job``; its denoised latents and the clean source latents of its inversion."""
    seen: dict[str, torch.Tensor] = {}
    real_denoise, real_inversion = editor_module.denoise, editor_module.cached_inversion

    def spy_denoise(*args, **kwargs):
        seen["out"] = real_denoise(*args, **kwargs)
        return seen["out"]

    def spy_inversion(*args, **kwargs):
        inversion = real_inversion(*args, **kwargs)
        seen["x0"] = inversion.trajectory[0]
        return inversion

    monkeypatch.setattr(editor_module, "denoise", spy_denoise)
    monkeypatch.setattr(editor_module, "cached_inversion", spy_inversion)
    Editor(fresh_plugin_manager().registry, progress=False, cache=False).run(job)
    return seen["out"], seen["x0"]


def _reconstruction(demo_job, tmp_path, name: str, **changes) -> dict:
    """The demo job edited into a reconstruction: its source prompt as the target, no regions, no blend."""
    job = yaml.safe_load(demo_job().read_text())
    job.update(prompt=job["source_prompt"], regions={}, layout=[], blend="none", output=str(tmp_path / name),
               **changes)
    job["video"]["path"] = str(demo_job().parent / job["video"]["path"])
    return job


def test_direct_inversion_reconstructs_the_clip_at_any_guidance(demo_job, tmp_path, monkeypatch) -> None:
    """The source prompt as the target at guidance 7.5 (ControlNet on): direct inversion returns the clean
    source latents; the plain inversion drifts away from them."""
    direct, x0 = _final_latents(monkeypatch, _reconstruction(demo_job, tmp_path, "direct", inversion="direct"))
    torch.testing.assert_close(direct, x0, rtol=0, atol=1e-4)
    plain, x0_again = _final_latents(monkeypatch, _reconstruction(demo_job, tmp_path, "plain"))
    assert torch.equal(x0, x0_again)
    assert (plain - x0).abs().max() > 100 * (direct - x0).abs().max()


def test_negative_prompt_inversion_reconstructs_as_guidance_one(demo_job, tmp_path, monkeypatch) -> None:
    """With guidance away from the source prompt, its reconstruction at 7.5 is the one at guidance 1."""
    npi, _ = _final_latents(monkeypatch, _reconstruction(demo_job, tmp_path, "npi", inversion="negative-prompt"))
    one, _ = _final_latents(monkeypatch, _reconstruction(demo_job, tmp_path, "one", guidance=1.0))
    torch.testing.assert_close(npi, one, rtol=0, atol=1e-4)
    plain, _ = _final_latents(monkeypatch, _reconstruction(demo_job, tmp_path, "plain"))
    assert (plain - one).abs().max() > 100 * (npi - one).abs().max()


def test_direct_inversion_still_edits(demo_job, tmp_path, monkeypatch) -> None:
    """An edit (other prompts, regions) under direct inversion moves the latents inside its regions."""
    edited, x0 = _final_latents(monkeypatch, load_job(demo_job(inversion="direct", blend="none")))
    assert (edited - x0).abs().max() > 0.1


def test_inversion_modes_are_checked(tmp_path) -> None:
    """An unknown mode, or a mode that needs the source prompt without one, is a job error naming the key."""
    job = {"video": {"path": "clip.mp4"}, "prompt": "a cat", "steps": 3}
    assert job_from_mapping(job, base_dir=tmp_path).inversion == "plain"
    assert job_from_mapping({**job, "source_prompt": "a dog", "inversion": "direct"}, base_dir=tmp_path).inversion == "direct"
    for mode in ("direct", "negative-prompt"):
        with pytest.raises(ConfigError, match="source_prompt"):
            job_from_mapping({**job, "inversion": mode}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="inversion"):
        job_from_mapping({**job, "source_prompt": "a dog", "inversion": "null-text"}, base_dir=tmp_path)


def _first_prediction(monkeypatch: pytest.MonkeyPatch, job: object) -> torch.Tensor:
    """The guided prediction of the first denoising step of ``job``."""
    seen: list[torch.Tensor] = []
    real_denoise = editor_module.denoise

    def spy_denoise(x, predict, *args, **kwargs):
        def recording(latents, t, i):
            out = predict(latents, t, i)
            seen.append(out.detach().clone())
            return out
        return real_denoise(x, recording, *args, **kwargs)

    monkeypatch.setattr(editor_module, "denoise", spy_denoise)
    Editor(fresh_plugin_manager().registry, progress=False, cache=False).run(job)
    return seen[0]


def test_guidance_rescale_gives_the_guided_prediction_the_conditional_spread(demo_job, tmp_path, monkeypatch) -> None:
    """``guidance_rescale: 1`` rescales each frame's guided prediction to the spread of the conditional one
    (the prediction at guidance 1 from the same latent); 0 leaves guidance as it was."""
    def job(name: str, **changes) -> object:
        return load_job(demo_job(output=str(tmp_path / name), **changes))

    rescaled = _first_prediction(monkeypatch, job("rescaled", guidance_rescale=1.0))
    conditional = _first_prediction(monkeypatch, job("conditional", guidance=1.0))
    plain = _first_prediction(monkeypatch, job("plain"))
    spread = lambda eps: eps.flatten(1).std(dim=1)  # noqa: E731
    torch.testing.assert_close(spread(rescaled), spread(conditional), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(spread(plain), spread(conditional), rtol=1e-2)
    torch.testing.assert_close(_first_prediction(monkeypatch, job("zero", guidance_rescale=0.0)), plain,
                               rtol=0, atol=0)
