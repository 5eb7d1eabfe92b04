"""Deterministic sampling: the schedules, one step, inversion and denoising loops.

Pure tensor code: the model enters as a callable ``predict(latents, timestep, step_index) -> prediction``,
so the loops are tested without any network and every backbone shares them. The loops know no
prediction type: the backbone's schedule moves latents from one level to another given the model's
prediction (:meth:`NoiseSchedule.move`: DDIM with ε, SD 1.5; :meth:`FlowSchedule.move`: an Euler step
of the flow ODE with a velocity, Wan 2.1), in either direction.

Noise levels are keyed by timestep; the clean latent is level ``0`` (its ᾱ is the scheduler's
"final" ᾱ: ``alphas_cumprod[0]`` for SD 1.5, whose ``set_alpha_to_one`` is false). Denoising with
timesteps ``[981, 961, …, 1]`` visits levels 981 → 961 → … → 1 → 0; inversion visits them in reverse
and records every level, so the latent blend can look up ``trajectory[level]`` after each step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import attrs
import torch

from stmod.core.errors import InputError

__all__ = ["NoiseSchedule", "FlowSchedule", "Schedule", "ddim_timesteps", "ddim_move", "flow_sigma", "invert",
           "denoise", "drift_corrections", "Predict", "Blend", "StepEnd"]

#: ``predict(latents, timestep, step_index) -> prediction`` (same shape as latents; ε or velocity, as the
#: schedule's ``prediction_type`` says).
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

    #: What the model predicts for this schedule (diffusers' ``prediction_type``).
    prediction_type: ClassVar[str] = "epsilon"

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

    def move(self, x: torch.Tensor, prediction: torch.Tensor, level_from: int, level_to: int) -> torch.Tensor:
        """One deterministic DDIM step of ``x`` from ``level_from`` to ``level_to`` given ε (either direction)."""
        return ddim_move(x, prediction, self.alpha(level_from), self.alpha(level_to))


@attrs.frozen(kw_only=True)
class FlowSchedule:
    """A rectified-flow (flow-matching) schedule: ``x_σ = (1 − σ)·x0 + σ·noise``, the model predicts the
    velocity ``v = noise − x0`` (Wan 2.1; diffusers' ``FlowMatchEulerDiscreteScheduler`` and UniPC with
    ``use_flow_sigmas``).

    Levels are integers ``0 … num_train_timesteps`` with ``σ = level / num_train_timesteps`` (level ``0``
    is the clean latent), so a level is also the timestep the transformer is given (diffusers passes
    ``σ·1000``). :meth:`timesteps` spaces σ as diffusers' ``FlowMatchEulerDiscreteScheduler`` does
    (evenly from 1 to the shifted ``1/T``, then the resolution ``shift``:
    ``σ' = shift·σ / (1 + (shift − 1)·σ)``) and rounds to a level (σ off by at most ``0.5/T``).
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000

    prediction_type: ClassVar[str] = "flow"

    @classmethod
    def from_scheduler_config(cls, config: Mapping[str, Any]) -> FlowSchedule:
        """From a diffusers flow scheduler config (``shift`` of FlowMatchEuler, ``flow_shift`` of UniPC)."""
        shift = config.get("flow_shift") if config.get("use_flow_sigmas") else config.get("shift", 1.0)
        return cls(shift=float(shift if shift is not None else 1.0),
                   num_train_timesteps=int(config.get("num_train_timesteps", 1000)))

    def sigma(self, level: int) -> float:
        """σ at ``level``."""
        return level / self.num_train_timesteps

    def timesteps(self, steps: int) -> list[int]:
        """The denoising levels for ``steps`` steps (high to low, distinct, all above the clean level)."""
        total = self.num_train_timesteps
        if not 1 <= steps <= total // 2:
            raise ValueError(f"steps must be between 1 and {total // 2}, got {steps}")
        # diffusers FlowMatchEulerDiscreteScheduler.set_timesteps: evenly from 1 to the shifted σ_min, then shifted
        unshifted = torch.linspace(1.0, flow_sigma(1.0 / total, self.shift), steps, dtype=torch.float64)
        levels = [max(1, round(flow_sigma(float(s), self.shift) * total)) for s in unshifted]
        if len(set(levels)) != len(levels):
            raise ValueError(f"{steps} steps with shift {self.shift} put two steps on one of {total} levels; "
                             "use fewer steps")
        return levels

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """Forward noising ``(1 − σ)·x0 + σ·noise`` at ``timestep`` (a level)."""
        sigma = self.sigma(timestep)
        return (1 - sigma) * x0 + sigma * noise

    def move(self, x: torch.Tensor, prediction: torch.Tensor, level_from: int, level_to: int) -> torch.Tensor:
        """One Euler step of the flow ODE ``dx/dσ = v``: ``x + (σ_to − σ_from)·v``; towards noise it is the
        backward integration that inverts the clip. :func:`invert` asks for the velocity at the latent the
        step starts from with the timestep it goes to, as DDIM inversion asks for ε (``docs/wan.md``)."""
        return x + (self.sigma(level_to) - self.sigma(level_from)) * prediction


def flow_sigma(sigma: float, shift: float) -> float:
    """The shifted σ of flow-matching schedulers: ``shift·σ / (1 + (shift − 1)·σ)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


class Schedule(Protocol):
    """What the loops and the blenders ask of a schedule (:class:`NoiseSchedule`, :class:`FlowSchedule`)."""

    @property
    def prediction_type(self) -> str: ...

    def timesteps(self, steps: int) -> list[int]: ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor: ...

    def move(self, x: torch.Tensor, prediction: torch.Tensor, level_from: int, level_to: int) -> torch.Tensor: ...


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
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    on_step: Callable[[int], None] | None = None,
    on_step_end: StepEnd | None = None,
) -> dict[int, torch.Tensor]:
    """Inversion of clean latents ``x0`` through the levels of ``timesteps`` (given high to low).

    Step ``k`` moves from the previous level to timestep ``t_k`` (ascending) with the prediction
    ``predict(x, t_k, k)`` (ε for DDIM inversion, a velocity for the flow ODE integrated backwards).
    Returns the trajectory ``{0: x0, t: x_t for every t}``; ``trajectory[timesteps[0]]`` starts denoising.
    ``on_step(k)`` and ``on_step_end(k, t_k, latents)`` run after every step.
    """
    trajectory = {CLEAN: x0}
    x, level = x0, CLEAN
    for k, t in enumerate(reversed(list(timesteps))):
        x = schedule.move(x, predict(x, t, k), level, t)
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
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    blend: Blend | None = None,
    corrections: Sequence[torch.Tensor] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_step_end: StepEnd | None = None,
) -> torch.Tensor:
    """Denoising from level ``timesteps[0]`` to clean latents (the schedule's step); ``corrections[i]`` (see
    :func:`drift_corrections`) is added to step ``i``'s result, then ``blend``, ``on_step(i)`` and
    ``on_step_end(i, t_i, latents)`` run after every step."""
    timesteps = list(timesteps)
    if corrections is not None and len(corrections) != len(timesteps):
        raise ValueError(f"{len(corrections)} corrections for {len(timesteps)} denoising steps")
    for i, t in enumerate(timesteps):
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else CLEAN
        x = schedule.move(x, predict(x, t, i), t, nxt)
        if corrections is not None:
            x = x + corrections[i]
        if blend is not None:
            x = blend(x, i, t, nxt)
        if on_step is not None:
            on_step(i)
        if on_step_end is not None:
            x = _replaced(on_step_end(i, t, x), x)
    return x


def drift_corrections(
    trajectory: Mapping[int, torch.Tensor],
    predict: Predict,
    schedule: Schedule,
    timesteps: Sequence[int],
    *,
    on_step: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Direct inversion (Ju et al., "PnP Inversion", ICLR 2024): per denoising step, how far one step taken
    from the inversion's own latent lands from the inversion's next level.

    ``corrections[i] = trajectory[t_{i+1}] − move(trajectory[t_i], predict(trajectory[t_i], t_i, i))``, with
    ``predict`` the guided prediction of the *source* prompt. Added after each step of the edit
    (:func:`denoise`'s ``corrections``), they cancel the drift that guidance and the inversion's own error
    put between denoising and inversion: with the source prompt as the target the loop returns the
    trajectory exactly, whatever the guidance; a target prompt still moves the latents by its difference.
    """
    timesteps = list(timesteps)
    corrections = []
    for i, t in enumerate(timesteps):
        nxt = timesteps[i + 1] if i + 1 < len(timesteps) else CLEAN
        x = trajectory[t]
        corrections.append(trajectory[nxt] - schedule.move(x, predict(x, t, i), t, nxt))
        if on_step is not None:
            on_step(i)
    return corrections


def _replaced(returned: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
    """What a step-end hook returned in place of ``latents``; a different shape is refused at once."""
    if returned is None:
        return latents
    if not isinstance(returned, torch.Tensor) or returned.shape != latents.shape:
        raise InputError("callback_on_step_end", getattr(returned, "shape", type(returned)),
                         f"the latents it returns must be a tensor shaped {tuple(latents.shape)}")
    return returned
