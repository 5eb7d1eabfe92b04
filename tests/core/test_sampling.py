"""DDIM math against diffusers' schedulers and plain float64 references."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler

from stmod.core.sampling import NoiseSchedule, ddim_move, ddim_timesteps, denoise, invert

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, steps_offset=1)


@pytest.fixture(scope="module")
def scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SD15)


@pytest.mark.parametrize("steps", [1, 4, 10, 50])
def test_timesteps_match_diffusers(scheduler: DDIMScheduler, steps: int) -> None:
    """Leading spacing with offset 1, as diffusers gives for SD 1.5 (50 steps: 981, 961, …, 1)."""
    scheduler.set_timesteps(steps)
    assert ddim_timesteps(steps, 1000, 1) == scheduler.timesteps.tolist()
    if steps == 50:
        assert ddim_timesteps(50)[:3] == [981, 961, 941] and ddim_timesteps(50)[-1] == 1


def test_timesteps_validation() -> None:
    """Step counts outside 1..T/2 are refused."""
    with pytest.raises(ValueError, match="steps must be between"):
        ddim_timesteps(0)
    with pytest.raises(ValueError, match="steps must be between"):
        ddim_timesteps(600)


def test_ddim_move_matches_diffusers_step(scheduler: DDIMScheduler) -> None:
    """One denoising move equals DDIMScheduler.step(eta=0), including the last step to the clean level."""
    scheduler.set_timesteps(10)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    g = torch.Generator().manual_seed(0)
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        x, eps = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        ours = ddim_move(x, eps, schedule.alpha(t), schedule.alpha(nxt))
        theirs = scheduler.step(eps, t, x, eta=0.0).prev_sample
        assert torch.allclose(ours, theirs, atol=1e-5), t


def test_ddim_move_float64_reference() -> None:
    """x0 = (x − √(1−a)ε)/√a; x' = √b·x0 + √(1−b)·ε, on fresh random inputs."""
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    a, b = 0.3, 0.8
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    assert torch.allclose(ddim_move(x, eps, a, b), math.sqrt(b) * x0 + math.sqrt(1 - b) * eps, atol=1e-12)


def test_invert_then_denoise_is_exact_when_eps_is_constant(scheduler: DDIMScheduler) -> None:
    """With ε independent of x, inversion followed by denoising returns x0 (float64)."""
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    timesteps = ddim_timesteps(20)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    const = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    trajectory = invert(x0, lambda x, t, k: const, schedule, timesteps)
    assert sorted(trajectory) == sorted([0, *timesteps]) and trajectory[0] is x0
    back = denoise(trajectory[timesteps[0]], lambda x, t, i: const, schedule, timesteps)
    assert torch.allclose(back, x0, atol=1e-10)


def test_denoise_calls_blend_after_every_step_with_levels(scheduler: DDIMScheduler) -> None:
    """The blend sees (step, current level, next level), ending at the clean level 0."""
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    seen = []
    denoise(torch.ones(1, 4, 2, 2), lambda x, t, i: torch.zeros_like(x), schedule, [41, 21, 1],
            blend=lambda x, i, t, nxt: seen.append((i, t, nxt)) or x)
    assert seen == [(0, 41, 21), (1, 21, 1), (2, 1, 0)]


def test_add_noise_matches_diffusers(scheduler: DDIMScheduler) -> None:
    """Forward noising equals DDIMScheduler.add_noise."""
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    ours = schedule.add_noise(x0, noise, 501)
    theirs = scheduler.add_noise(x0, noise, torch.tensor([501]))
    assert torch.allclose(ours, theirs, atol=1e-6)
