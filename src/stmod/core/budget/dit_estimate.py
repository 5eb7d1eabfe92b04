"""The estimate of one edit on a video diffusion transformer (``wan``): the phases of :mod:`.estimate`
(shared parts: :mod:`.phases`) with the transformer and Wan's causal video VAE in place of the UNet and
the image VAE.

What differs from the UNet's estimate, and why:

* one transformer call per step runs **every CFG branch at once** (Wan's ``predict_noise`` batches the
  branches) over the **whole clip as one sequence** of ``L = f·(H/16)·(W/16)`` tokens, ``f`` latent
  frames; the self-attention focus (``full``, ``window``) is over latent frames;
* the modulated kernel runs on the cond branch over the call's query and key tokens
  (:func:`~stmod.core.budget.attention.modulated_call_bytes`, never an ``L × L`` map);
* the VAE works on :data:`~stmod.core.budget.dit.VAE_CHUNK_FRAMES` frames at a time whatever the clip's
  length, in float32, and holds the whole clip's pixels (input or output) in float32 beside;
* the text encoder (umT5-XXL for the real models) stays resident in the run's dtype, as ``wan`` loads it.

Constants that are assumptions until a GPU measures them are named in :mod:`.dit` and
:mod:`.constants`; ``docs/wan.md`` has the table for the 1.3B and 14B models.
"""

from __future__ import annotations

from stmod.core.budget.attention import modulated_call_bytes
from stmod.core.budget.constants import DeviceRates
from stmod.core.budget.dit import (DiTShape, WanVAEShape, dit_cost, dit_shape, dit_tokens, latent_frames,
                                   wan_vae_cost, wan_vae_shape)
from stmod.core.budget.phases import Estimate, Part, PhaseEstimate, edit_phases, transfer_seconds, weights_of
from stmod.core.budget.job import JobShape, ModelFootprint

__all__ = ["estimate_dit", "modulated_bytes", "VAE_FP32_SLOWDOWN"]

#: ASSUMPTION (until bench/gpu.sh measures it): Wan's VAE runs in float32, this many times slower than the
#: half-precision rate of :class:`~stmod.core.budget.constants.DeviceRates` on a GPU (the CPU's rates are
#: float32 already).
VAE_FP32_SLOWDOWN = 4.0


def estimate_dit(job: JobShape, models: ModelFootprint, rates: DeviceRates) -> Estimate:
    """Peak memory and seconds per phase of ``job`` on a transformer backbone (see the module docs)."""
    weights = weights_of(models)
    shape = dit_shape(models.unet.config) if models.unet is not None else None
    vae = wan_vae_shape(models.vae.config) if models.vae is not None else None
    scale = vae.scale_factor if vae is not None else 8
    frames = latent_frames(job.frames, models.time_ratio)
    data = _data_bytes(job, models, frames, scale, vae.z_dim if vae is not None else 16)
    phases = edit_phases(
        job, models, rates, weights, denoiser=(models.denoiser,),
        vae_phase=lambda name, resident, decoder: _vae_phase(name, job, models, rates, vae, resident, data,
                                                             decoder=decoder),
        denoiser_phase=lambda name, resident: _dit_phase(name, job, models, rates, shape, frames, resident, data))
    return Estimate(device=models.device, dtype_bytes=models.dtype_bytes, phases=phases, attention=(),
                    measured_rates=rates.measured)


def _data_bytes(job: JobShape, models: ModelFootprint, frames: int, scale: int, channels: int) -> float:
    """The inversion trajectory and latents on the device, and the clip's pixels in float32 (the VAE's input
    or output, whole; on the CPU also the uint8 frames and the model input)."""
    latents = (job.steps + 2) * frames * channels * (job.height // scale) * (job.width // scale) * models.dtype_bytes
    pixels = job.frames * job.height * job.width * 3
    return float(latents + pixels * (4 if models.device != "cpu" else 1 + 4 + 4 + 1))


def modulated_bytes(job: JobShape, models: ModelFootprint, shape: DiTShape, frames: int, per_frame: int) -> float:
    """Bytes the modulated self-attention kernel adds to one call (the cond branch; ``frames`` latent frames of
    ``per_frame`` tokens): one sequence of the call's query and key frames, or frame by frame."""
    focus = job.focus
    if focus.joined:
        batch, queries = 1, round(focus.query_share * frames) * per_frame
        keys = round(focus.key_share * frames) * per_frame
    else:
        batch, queries, keys = frames, per_frame, round(focus.key_frames) * per_frame
    return modulated_call_bytes(batch=batch, heads=shape.heads, channels=shape.dim, queries=queries, keys=keys,
                                codes=job.codes, item=models.dtype_bytes, budget=job.budget_bytes,
                                device=models.device, kernel=models.kernel)


def _dit_phase(name: str, job: JobShape, models: ModelFootprint, rates: DeviceRates, shape: DiTShape | None,
               frames: int, resident: list[Part], data: float) -> PhaseEstimate:
    """One transformer call per step: the cond branch (inversion) or every branch (denoising)."""
    if shape is None:
        return PhaseEstimate(name, (*resident, Part("transformer activations", None)), None)
    denoising = name == "denoising"
    items = job.branches if name != "inversion" else 1  # direct inversion's pass is guided
    per_frame = dit_tokens(job.height, job.width, shape)
    length, item = frames * per_frame, models.dtype_bytes
    extra = modulated_bytes(job, models, shape, frames, per_frame) / item if denoising and job.modulated_steps else 0.0
    plain = dit_cost(shape, frames, per_frame, job.focus)
    cost = dit_cost(shape, frames, per_frame, job.focus, extra=extra / items)
    activations = items * cost.peak * item * rates.activation_factor
    parts = [*resident, Part("frames, latents and the trajectory", data),
             Part(f"transformer activations ({items} × {length} tokens, largest stage)", activations)]
    per_step = job.mean_branches if name != "inversion" else 1  # outside guidance_interval: one branch
    seconds = job.steps * (per_step * (plain.dense / rates.dense_flops + plain.attention_work / rates.attention_flops)
                           + rates.call_seconds + transfer_seconds(models, rates, (models.denoiser,)))
    if denoising and job.modulated_steps:
        self_work = shape.layers * 4.0 * length * job.focus.key_frames * per_frame * shape.dim
        seconds += job.modulated_steps * self_work * (rates.modulation_cost - 1) / rates.attention_flops
    return PhaseEstimate(name, tuple(parts), seconds)


def _vae_phase(name: str, job: JobShape, models: ModelFootprint, rates: DeviceRates, vae: WanVAEShape | None,
               resident: list[Part], data: float, *, decoder: bool) -> PhaseEstimate:
    if vae is None:
        return PhaseEstimate(name, (*resident, Part("VAE activations", None)), None)
    height, width = job.height, job.width
    if models.vae_tiling:  # diffusers' Wan tiles of 256 pixels (their overlap left out)
        height, width = min(height, models.vae_tile), min(width, models.vae_tile)
    working = wan_vae_cost(vae, height, width, decoder=decoder).peak * 4 * rates.vae_factor  # float32
    full = wan_vae_cost(vae, job.height, job.width, decoder=decoder)
    slowdown = VAE_FP32_SLOWDOWN if models.device != "cpu" else 1.0
    seconds = job.frames * full.dense * slowdown / rates.vae_flops + transfer_seconds(models, rates, ("vae",))
    label = "VAE decoder" if decoder else "VAE encoder"
    return PhaseEstimate(name, (*resident, Part("frames, latents and the trajectory", data),
                                Part(f"{label} activations (a chunk of frames)", working)), seconds)
