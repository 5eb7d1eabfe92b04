"""Deterministic DDIM: the schedule, one step, inversion and denoising loops.

Pure tensor code: the model enters as a callable ``predict(latents, timestep, step_index) -> eps``,
so the loops are tested without any network and every backbone shares them.

Noise levels are keyed by timestep; the clean latent is level ``0`` (its ᾱ is the scheduler's
"final" ᾱ: ``alphas_cumprod[0]`` for SD 1.5, whose ``set_alpha_to_one`` is false). Denoising with
timesteps ``[981, 961, …, 1]`` visits levels 981 → 961 → … → 1 → 0; inversion visits them in reverse
and records every level, so the latent blend can look up ``trajectory[level]`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch

from stmod.core.errors import InputError

__all__ = ["NoiseSchedule", "ddim_timesteps", "ddim_move", "invert", "denoise", "Predict", "Blend", "StepEnd"]

#: ``predict(latents, timestep, step_index) -> eps`` (same shape as latents).
Predict = Callable[[torch.Tensor, int, int], torch.Tensor]

#: ``blend(latents, step_index, timestep, next_timestep) -> latents`` after each denoising step.
Blend = Callable[[torch.Tensor, int, int, int], torch.Tensor]

#: The level key of clean latents.
CLEAN = 0


@attrs.frozen(kw_only=True)
class NoiseSchedule:
    """ᾱ per training timestep (``alphas_cumprod``, float64 ``(T,)``), ᾱ of the clean level, and the
    offset of the DDIM timesteps (``steps_offset``: 1 for SD 1.5)."""

    alphas_cumprod: torch.Tensor = attrs.field(eq=False)
    clean_alpha: float
    steps_offset: int = 0

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Build from a diffusers DDIM scheduler config (betas, ``set_alpha_to_one``)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(config)
        alphas = scheduler.alphas_cumprod.double()
        clean = 1.0 if scheduler.config.set_alpha_to_one else float(alphas[0])
        return cls(alphas_cumprod=alphas, clean_alpha=clean, steps_offset=int(scheduler.config.steps_offset))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM denoising timesteps of this schedule for ``steps`` steps (high to low)."""
        return ddim_timesteps(steps, self.num_train_timesteps, self.steps_offset)

    def alpha(self, level: int) -> float:
        """ᾱ at ``level`` (a timestep, or ``0`` for clean latents)."""
        return self.clean_alpha if level == CLEAN else float(self.alphas_cumprod[level])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """Forward noising ``√ᾱ·x0 + √(1−ᾱ)·noise`` at ``timestep``."""
        a = self.alpha(timestep)
        return (a**0.5) * x0 + ((1 - a) ** 0.5) * noise


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000, offset: int = 1) -> list[int]:
    """Denoising timesteps, high to low, with diffusers' "leading" spacing (SD 1.5: 981, 961, …, 1)."""
    if not 1 <= steps <= num_train_timesteps // 2:
        raise ValueError(f"steps must be between 1 and {num_train_timesteps // 2}, got {steps}")
    ratio = num_train_timesteps // steps
    timesteps = [i * ratio + offset for i in reversed(range(steps))]
    if timesteps[-1] <= CLEAN or timesteps[0] >= num_train_timesteps:
        raise ValueError(f"offset {offset} puts timesteps outside 1..{num_train_timesteps - 1}")
    return timesteps


def ddim_move(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Deterministic DDIM (η = 0) move of ``x`` from level ᾱ_from to ᾱ_to given the noise estimate.

    ``x0 = (x − √(1−ᾱ_from)·ε)/√ᾱ_from`` and ``x' = √ᾱ_to·x0 + √(1−ᾱ_to)·ε``. Works in both
    directions, which is what makes DDIM invertible up to the change of ε along the path.
    """
    x0 = (x - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * eps


#: ``on_step_end(step, timestep, latents)``: after each step, with the latents that step produced; latents it
#: returns replace them (diffusers' ``callback_on_step_end`` may replace ``latents``), ``None`` keeps them.
StepEnd = Callable[[int, int, torch.Tensor], "torch.Tensor | None"]


def invert(
    x0: torch.Tensor,
    predict: Predict,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    on_step: Callable[[int], None] | None = None,
    on_step_end: StepEnd | None = None,
) -> dict[int, torch.Tensor]:
    """DDIM inversion of clean latents ``x0`` through the levels of ``timesteps`` (given high to low).

    Step ``k`` moves from the previous level to timestep ``t_k`` (ascending) with ``ε = predict(x, t_k, k)``.
    Returns the trajectory ``{0: x0, t: x_t for every t}``; ``trajectory[timesteps[0]]`` starts denoising.
    ``on_step(k)`` and ``on_step_end(k, t_k, latents)`` run after every step.
    """
    trajectory = {CLEAN: x0}
    x, level = x0, CLEAN
    for k, t in enumerate(reversed(list(timesteps))):
        eps = predict(x, t, k)
        x = ddim_move(x, eps, schedule.alpha(level), schedule.alpha(t))
        level = t
        if on_step is not None:
            on_step(k)
        if on_step_end is not None:
            x = _replaced(on_step_end(k, t, x), x)
        trajectory[t] = x
    return trajectory


def denoise(
    x: torch.Tensor,
    predict: Predict,
    schedule: NoiseSchedule,
    timesteps: Sequence[int],
    *,
    blend: Blend | None = None,
    on_step: Callable[[int], None] | None = None,
    on_step_end: StepEnd | None = None,
) -> torch.Tensor:
    """DDIM denoising from level ``timesteps[0]`` to clean latents; ``blend``, then ``on_step(i)`` and
    ``on_step_end(i, t_i, latents)`` run after every step."""
    timesteps = list(timesteps)
    for i, t in enumerate(timesteps):
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else CLEAN
        eps = predict(x, t, i)
        x = ddim_move(x, eps, schedule.alpha(t), schedule.alpha(nxt))
        if blend is not None:
            x = blend(x, i, t, nxt)
        if on_step is not None:
            on_step(i)
        if on_step_end is not None:
            x = _replaced(on_step_end(i, t, x), x)
    return x


def _replaced(returned: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
    """What a step-end hook returned in place of ``latents``; a different shape is refused at once."""
    if returned is None:
        return latents
    if not isinstance(returned, torch.Tensor) or returned.shape != latents.shape:
        raise InputError("callback_on_step_end", getattr(returned, "shape", type(returned)),
                         f"the latents it returns must be a tensor shaped {tuple(latents.shape)}")
    return returned
