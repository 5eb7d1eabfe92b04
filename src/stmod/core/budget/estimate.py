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

from attrs import frozen

from stmod.core.budget.attention import modulated_extra
from stmod.core.budget.constants import DeviceRates, rates_for
from stmod.core.budget.formulas import (PER_FRAME, TEXT_TOKENS, Cost, self_attention_elements, self_attention_flops,
                                        skip_elements, tokens, unet_cost, vae_cost)
from stmod.core.budget.job import JobShape, ModelFootprint
from stmod.core.budget.sizes import Component, UNetShape, VAEShape, unet_shape, vae_shape

__all__ = ["Part", "PhaseEstimate", "Estimate", "estimate"]


@frozen
class Part:
    """A named share of a peak, in bytes (``None``: the backbone could not tell)."""

    name: str
    bytes: float | None


@frozen
class PhaseEstimate:
    """One phase: its peak (bytes), what it is made of, and its seconds (``None``: unknown)."""

    name: str
    parts: tuple[Part, ...]
    seconds: float | None

    @property
    def peak_bytes(self) -> float | None:
        known = [p.bytes for p in self.parts if p.bytes is not None]
        return None if len(known) < len(self.parts) else float(sum(known))


@frozen(kw_only=True)
class Estimate:
    """Predicted peak memory (by part, of the largest phase) and seconds per phase of one edit.

    :ivar attention: ``(level, bytes)`` of the denoising self-attention working set per UNet level
        (one level at a time; the largest is inside the peak when attention is what peaks).
    """

    device: str
    dtype_bytes: int
    phases: tuple[PhaseEstimate, ...]
    attention: tuple[tuple[int, float], ...]
    measured_rates: bool

    @property
    def peak_phase(self) -> PhaseEstimate:
        """The phase with the largest known peak (the first one when none is known)."""
        known = [p for p in self.phases if p.peak_bytes is not None]
        return max(known, key=lambda p: p.peak_bytes or 0.0) if known else self.phases[0]  # known: never None

    @property
    def peak_bytes(self) -> float | None:
        """The edit's peak, ``None`` when a part of any phase is unknown."""
        if any(p.peak_bytes is None for p in self.phases):
            return None
        return self.peak_phase.peak_bytes

    @property
    def seconds(self) -> float | None:
        known = [p.seconds for p in self.phases if p.seconds is not None]
        return None if len(known) < len(self.phases) else float(sum(known))


def _params_bytes(component: Component | None, item: int) -> float | None:
    return None if component is None or component.params is None else float(component.params * item)


def _weights(models: ModelFootprint) -> dict[str, float | None]:
    item = models.dtype_bytes
    found = {"unet": _params_bytes(models.unet, item), "vae": _params_bytes(models.vae, item),
             "text encoder": _params_bytes(models.text_encoder, item)}
    for i, net in enumerate(models.controlnets):
        found[f"controlnet {i}" if len(models.controlnets) > 1 else "controlnet"] = _params_bytes(net, item)
    return found


def _resident(models: ModelFootprint, rates: DeviceRates, weights: dict[str, float | None],
              running: tuple[str, ...]) -> list[Part]:
    """Weights on the device during a phase (``cpu_offload`` on a GPU: only the ``running`` models)."""
    offload = models.cpu_offload and models.device != "cpu"
    names = [n for n in weights if not offload or n.split(" ")[0] in running or n in running]
    if offload and names:  # one model on the device at a time: the largest of those that run
        known = [weights[n] for n in names]
        largest = max(names, key=lambda n: weights[n] or 0.0)
        parts = [Part(f"weights: {largest} (offloaded, one at a time)", None if None in known else weights[largest])]
    else:
        parts = [Part(f"weights: {n}", weights[n]) for n in names]
    if rates.runtime_bytes:
        parts.append(Part("runtime (libraries)", rates.runtime_bytes))
    return parts


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
    seconds += _transfer(models, rates, ("vae",))
    label = "VAE decoder" if decoder else "VAE encoder"
    return PhaseEstimate(name, (*resident, Part("frames and latents", data),
                                Part(f"{label} activations ({chunk} frames)", working)), seconds)


def _load_phase(models: ModelFootprint, rates: DeviceRates, weights: dict[str, float | None]) -> PhaseEstimate:
    """Loading, in the backbone's order: each component's file is read into memory whole and converted
    to the run's dtype, so the moment after the largest file is read, with what is loaded before it,
    peaks (on the CPU; on a GPU the weights are moved there once converted: weights only)."""
    components = [("vae", models.vae), ("unet", models.unet), ("text encoder", models.text_encoder)]
    components += [(name, net) for name, net in zip([n for n in weights if n.startswith("controlnet")],
                                                      models.controlnets)]
    files = sum(c.file_bytes for _, c in components if c is not None)
    seconds = files / rates.load_bytes
    if models.device != "cpu" or not rates.load_copy:
        offloaded = models.cpu_offload and models.device != "cpu"  # loaded into host memory, not the GPU
        resident = [] if offloaded else _resident(models, rates, weights, tuple(weights))
        return PhaseEstimate("load", tuple(resident), seconds)
    loaded, best, reading = 0.0, -1.0, ("", 0.0, 0.0)
    for name, component in components:
        size = (component.file_bytes if component is not None else 0) * rates.load_copy
        if loaded + size + (weights[name] or 0.0) > best:
            best, reading = loaded + size + (weights[name] or 0.0), (name, loaded, size)
        loaded += weights[name] or 0.0
    name, before, size = reading
    parts = [Part("weights loaded before it", None if None in weights.values() else before),
             Part(f"weights: {name}", weights[name]), Part(f"reading {name} (its file, while converted)", size)]
    if rates.runtime_bytes:
        parts.append(Part("runtime (libraries)", rates.runtime_bytes))
    return PhaseEstimate("load", tuple(parts), seconds)


def _transfer(models: ModelFootprint, rates: DeviceRates, running: tuple[str, ...]) -> float:
    """Seconds moving ``running`` models to the device and back once (``cpu_offload`` on a GPU)."""
    if not models.cpu_offload or models.device == "cpu" or not rates.transfer_bytes:
        return 0.0
    weights = _weights(models)
    moved = sum(v or 0.0 for n, v in weights.items() if n.split(" ")[0] in running)
    return 2.0 * moved / rates.transfer_bytes


def estimate(job: JobShape, models: ModelFootprint, rates: DeviceRates | None = None) -> Estimate:
    """Peak memory and seconds per phase of ``job`` run with ``models`` (see the module docs)."""
    rates = rates or rates_for(models.device)
    weights = _weights(models)
    unet = unet_shape(models.unet.config) if models.unet is not None else None
    vae = vae_shape(models.vae.config) if models.vae is not None else None
    scale = vae.scale_factor if vae is not None else 8
    latent = (math.ceil(job.height / scale), math.ceil(job.width / scale))
    data = _data_bytes(job, models, latent, unet.in_channels if unet else 4)
    step = ("unet", "controlnet")
    phases = (
        _load_phase(models, rates, weights),
        _vae_phase("encode", job, models, rates, vae, _resident(models, rates, weights, ("vae",)), data,
                   decoder=False),
        _unet_phase("inversion", job, models, rates, unet, latent, _resident(models, rates, weights, step), data),
        *([_unet_phase("direct inversion", job, models, rates, unet, latent, _resident(models, rates, weights, step),
                       data)] if job.direct_inversion else []),
        _unet_phase("denoising", job, models, rates, unet, latent, _resident(models, rates, weights, step), data),
        _vae_phase("decoding", job, models, rates, vae, _resident(models, rates, weights, ("vae",)), data,
                   decoder=True),
    )
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
    seconds = None if None in nets else job.steps * (
        items * ((cost.dense + control_cost.dense) / rates.dense_flops
                 + (cost.attention_work + control_cost.attention_work) / rates.attention_flops)
        + (1 + len(nets)) * rates.call_seconds + _transfer(models, rates, ("unet", "controlnet")))
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
