"""The estimate of one edit: peak memory split into parts, and seconds per phase.

Each phase's peak is what stays resident (weights on the device, the runtime, frames and latents)
plus that phase's working set: the VAE encoder on ``vae_batch`` frames; one UNet (+ ControlNet)
forward on ``F`` items in the inversion (conditional branch only) and on ``branches × F`` items in
the denoising, where the cond branch runs the modulated kernel; the VAE decoder on ``vae_batch``
frames. The edit's peak is the largest phase peak; its parts are reported. Seconds are FLOPs over
the device's rates (:mod:`.constants`) plus fixed costs per call. See ``docs/memory.md``.
"""

from __future__ import annotations

import math

from stmod.core.budget.attention import modulated_extra
from stmod.core.budget.constants import DeviceRates, rates_for
from stmod.core.budget.dit_estimate import estimate_dit
from stmod.core.budget.formulas import (PER_FRAME, TEXT_TOKENS, Cost, self_attention_elements, self_attention_flops,
                                        skip_elements, tokens, unet_cost, vae_cost)
from stmod.core.budget.job import JobShape, ModelFootprint
from stmod.core.budget.phases import Estimate, Part, PhaseEstimate, edit_phases, transfer_seconds, weights_of
from stmod.core.budget.sizes import UNetShape, VAEShape, unet_shape, vae_shape

__all__ = ["Part", "PhaseEstimate", "Estimate", "estimate"]


def _data_bytes(job: JobShape, models: ModelFootprint, latent: tuple[int, int], channels: int) -> float:
    """Latents and the inversion trajectory on the device; on the CPU also the clip, model input and decoded frames."""
    h, w = latent
    latents = (job.steps + 2) * job.frames * channels * h * w * models.dtype_bytes
    if models.device != "cpu":
        return float(latents)
    pixels = job.frames * job.height * job.width * 3
    return float(latents + pixels * (1 + 4 + 4 + 1))


def _vae_phase(name: str, job: JobShape, models: ModelFootprint, rates: DeviceRates, vae: VAEShape | None,
               resident: list[Part], data: float, *, decoder: bool) -> PhaseEstimate:
    if vae is None:
        return PhaseEstimate(name, (*resident, Part("VAE activations", None)), None)
    grid_h, grid_w = job.height, job.width
    if models.vae_tiling:  # diffusers tiles frames larger than the VAE's sample size
        grid_h, grid_w = min(grid_h, models.vae_tile), min(grid_w, models.vae_tile)
    cost = vae_cost(vae, grid_h, grid_w, decoder=decoder)
    chunk = min(models.vae_batch, job.frames)
    working = chunk * cost.peak * models.dtype_bytes * rates.vae_factor
    full = vae_cost(vae, job.height, job.width, decoder=decoder)
    seconds = job.frames * (full.dense / rates.vae_flops + full.attention_work / rates.attention_flops)
    seconds += transfer_seconds(models, rates, ("vae",))
    label = "VAE decoder" if decoder else "VAE encoder"
    return PhaseEstimate(name, (*resident, Part("frames and latents", data),
                                Part(f"{label} activations ({chunk} frames)", working)), seconds)


def estimate(job: JobShape, models: ModelFootprint, rates: DeviceRates | None = None) -> Estimate:
    """Peak memory and seconds per phase of ``job`` run with ``models`` (see the module docs)."""
    rates = rates or rates_for(models.device)
    if models.denoiser != "unet":  # a video transformer (wan)
        return estimate_dit(job, models, rates)
    weights = weights_of(models)
    unet = unet_shape(models.unet.config) if models.unet is not None else None
    vae = vae_shape(models.vae.config) if models.vae is not None else None
    scale = vae.scale_factor if vae is not None else 8
    latent = (math.ceil(job.height / scale), math.ceil(job.width / scale))
    data = _data_bytes(job, models, latent, unet.in_channels if unet else 4)
    phases = edit_phases(
        job, models, rates, weights, denoiser=("unet", "controlnet"),
        vae_phase=lambda name, resident, decoder: _vae_phase(name, job, models, rates, vae, resident, data,
                                                             decoder=decoder),
        denoiser_phase=lambda name, resident: _unet_phase(name, job, models, rates, unet, latent, resident, data))
    attention = _attention_levels(job, models, unet, latent) if unet is not None else ()
    return Estimate(device=models.device, dtype_bytes=models.dtype_bytes, phases=phases, attention=attention,
                    measured_rates=rates.measured)


def _extra(job: JobShape, models: ModelFootprint, unet: UNetShape, latent: tuple[int, int]) -> dict[int, float]:
    if not job.modulated_steps:
        return {}
    return modulated_extra(unet, *latent, job.focus, frames=job.frames, branches=job.branches, codes=job.codes,
                           item=models.dtype_bytes, budget=job.budget_bytes, device=models.device,
                           kernel=models.kernel)


def _attention_levels(job: JobShape, models: ModelFootprint, unet: UNetShape,
                      latent: tuple[int, int]) -> tuple[tuple[int, float], ...]:
    """Denoising self-attention working set per level (bytes): per-token copies plus the kernel's buffers."""
    items, item = job.branches * job.frames, models.dtype_bytes
    extra = _extra(job, models, unet, latent)
    return tuple((level, items * item * (self_attention_elements(unet.channels[level], job.focus)
                                         * tokens(*latent, level) + extra.get(level, 0.0)))
                 for level, has in enumerate(unet.attention) if has)


def _unet_phase(name: str, job: JobShape, models: ModelFootprint, rates: DeviceRates, unet: UNetShape | None,
                latent: tuple[int, int], resident: list[Part], data: float) -> PhaseEstimate:
    """One UNet (+ ControlNet) forward per step: ``F`` items (inversion) or ``branches × F`` (denoising)."""
    denoising = name == "denoising"
    items = job.frames * (job.branches if name != "inversion" else 1)  # direct inversion's pass is guided
    if unet is None:
        return PhaseEstimate(name, (*resident, Part("UNet activations", None)), None)
    item, factor = models.dtype_bytes, rates.activation_factor
    extra = _extra(job, models, unet, latent) if denoising else {}
    cost = unet_cost(unet, *latent, job.focus, extra=extra)
    nets = [unet_shape(c.config) if c is not None else None for c in models.controlnets]
    control, control_cost = _control_parts(job, models, nets, latent, items, cost.peak * items * item * factor)
    parts = [*resident, Part("frames and latents", data),
             Part("UNet activations (skips + largest block)", items * cost.peak * item * factor), *control]
    per_step = job.frames * (job.mean_branches if name != "inversion" else 1)  # outside guidance_interval: one
    seconds = None if None in nets else job.steps * (
        per_step * ((cost.dense + control_cost.dense) / rates.dense_flops
                 + (cost.attention_work + control_cost.attention_work) / rates.attention_flops)
        + (1 + len(nets)) * rates.call_seconds + transfer_seconds(models, rates, ("unet", "controlnet")))
    if seconds is not None and denoising and job.modulated_steps:
        flops = job.frames * self_attention_flops(unet, *latent, job.focus)
        seconds += job.modulated_steps * flops * (rates.modulation_cost - 1) / rates.attention_flops
    return PhaseEstimate(name, tuple(parts), seconds)


def _control_parts(job: JobShape, models: ModelFootprint, nets: list[UNetShape | None], latent: tuple[int, int],
                   items: int, unet_bytes: float) -> tuple[list[Part], Cost]:
    """The ControlNets' share of a step: their inputs (control images, the cached condition embedding),
    the residuals alive during the UNet forward, or their own forward when that is larger."""
    if not nets:
        return [], Cost(0.0, 0.0, 0.0)
    shapes = [n for n in nets if n is not None]
    if len(shapes) < len(nets):
        return [Part("ControlNet", None)], Cost(0.0, 0.0, 0.0)
    item = models.dtype_bytes
    inputs = items * (3 * job.height * job.width + shapes[0].channels[0] * latent[0] * latent[1]) * item * len(nets)
    residual = max(skip_elements(n, *latent) + n.channels[-1] * tokens(*latent, len(n.channels) - 1) for n in shapes)
    residuals = items * residual * item * (1 if len(nets) == 1 else 2)
    costs = [unet_cost(n, *latent, PER_FRAME, down_only=True) for n in shapes]
    own = max(items * (c.peak + residual) * item for c in costs)
    total = Cost(0.0, sum(c.dense for c in costs), sum(c.attention for c in costs),
                 sum(c.attention_work for c in costs))
    parts = [Part("ControlNet inputs (control images, condition embedding)", inputs),
             Part("ControlNet residuals", residuals)]
    if own > residuals + unet_bytes:  # the ControlNet's own forward is the larger moment
        parts[1] = Part("ControlNet forward (its activations and residuals)", own - unet_bytes)
    return parts, total
