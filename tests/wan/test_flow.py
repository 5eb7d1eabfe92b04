"""The flow-matching schedule: diffusers' levels, exact steps on a straight flow, inversion on the tiny Wan."""

from __future__ import annotations

import pytest
import torch

from stmod.core.sampling import FlowSchedule, NoiseSchedule, ddim_move, denoise, flow_sigma, invert


@pytest.mark.parametrize(("steps", "shift"), [(3, 3.0), (10, 5.0), (50, 3.0), (50, 1.0)])
def test_levels_are_diffusers_flow_match_timesteps_rounded(steps: int, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    expected = [max(1, round(float(t))) for t in scheduler.timesteps.double()]
    assert FlowSchedule(shift=shift).timesteps(steps) == expected


def test_shift_and_config() -> None:
    assert flow_sigma(0.5, 3.0) == pytest.approx(0.75)
    assert FlowSchedule.from_scheduler_config({"shift": 5.0}).shift == 5.0
    unipc = {"_class_name": "UniPCMultistepScheduler", "flow_shift": 3.0, "use_flow_sigmas": True, "shift": 1.0}
    assert FlowSchedule.from_scheduler_config(unipc).shift == 3.0


def test_inversion_and_denoising_are_exact_on_a_straight_flow() -> None:
    """With the true velocity of ``x_σ = (1 − σ)·x0 + σ·n`` (``v = n − x0``) Euler steps are exact, in float64,
    in both directions: inversion reaches ``add_noise`` at every level and denoising comes back to ``x0``."""
    generator = torch.Generator().manual_seed(0)
    x0, noise = (torch.randn(2, 4, 3, 3, generator=generator, dtype=torch.float64) for _ in range(2))
    schedule = FlowSchedule(shift=3.0)
    timesteps = schedule.timesteps(7)
    trajectory = invert(x0, lambda x, t, k: noise - x0, schedule, timesteps)
    for t in timesteps:
        assert torch.allclose(trajectory[t], schedule.add_noise(x0, noise, t), atol=1e-12)
    back = denoise(trajectory[timesteps[0]], lambda x, t, i: noise - x0, schedule, timesteps)
    assert torch.allclose(back, x0, atol=1e-12)


def test_ddim_schedule_step_is_the_ddim_move_bit_for_bit() -> None:
    """SD 1.5's path: ``NoiseSchedule.move`` is exactly ``ddim_move`` with the levels' ᾱ."""
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    schedule = NoiseSchedule(alphas_cumprod=alphas, clean_alpha=float(alphas[0]), steps_offset=1)
    x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(schedule.move(x, eps, 981, 961), ddim_move(x, eps, schedule.alpha(981), schedule.alpha(961)))
    assert schedule.prediction_type == "epsilon" and FlowSchedule.prediction_type == "flow"


def test_inversion_reconstruction_on_the_tiny_wan(wan_backbone) -> None:
    """Invert a clip's latents with the tiny model (Euler backwards, source prompt, no CFG) and denoise them
    back: the relative error is what ``docs/wan.md`` reports (it shrinks with more steps)."""
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(5, 3, 32, 32, generator=generator) * 2 - 1
    x0 = wan_backbone.encode(frames)
    text = wan_backbone.encode_text(["a cat"]).repeat(len(x0), 1, 1)
    schedule = wan_backbone.noise_schedule()

    def error(steps: int) -> float:
        timesteps = schedule.timesteps(steps)
        predict = lambda x, t, k: wan_backbone.predict_noise(x, t, text)  # noqa: E731
        trajectory = invert(x0, predict, schedule, timesteps)
        back = denoise(trajectory[timesteps[0]], predict, schedule, timesteps)
        return float((back - x0).norm() / x0.norm())

    coarse, fine = error(4), error(20)
    assert fine < coarse / 3, (coarse, fine)  # 0.62 and 0.11 at the time of writing (docs/wan.md)
