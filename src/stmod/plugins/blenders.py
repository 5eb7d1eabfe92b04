"""Built-in blenders: how edited latents are mixed with the source after each denoising step.

* ``none`` — no blending; the whole frame may change.
* ``latent`` — the paper's latent blend (App. I): ``z = (1 − M)·z̃ + M·z`` with ``z̃`` the DDIM
  inversion latent at the same noise level, so everything outside the edited regions follows the
  inversion trajectory exactly.
* ``videograin`` — the official code's variant: outside the mask, the clean source latent re-noised
  with fresh noise at the step's *current* timestep (one level behind the latents, as the official
  code does).

``latent`` and ``videograin`` accept ``soft_edge``: the standard deviation, in latent pixels, of a
Gaussian that feathers the mask edge (0 keeps it hard).

Both also put the source's **pixels** back outside the regions after decoding (``composite``, on by
default): latents equal to the source's outside the regions do not decode to the source's pixels there,
because a VAE decoder's GroupNorm statistics and mid-block attention spread what the edit put inside the
regions across the frame (measured in ``docs/shapes.md``). The regions are grown by ``composite_dilate``
pixels (the latent grid is 8× coarser than the pixels, so an edited object's outline moves by a few) and
the seam feathered by a Gaussian of ``composite_feather`` pixels; beyond that band the output is the input,
pixel for pixel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from attrs import field, frozen, validators

from stmod import BlendContext, hookimpl, number

if TYPE_CHECKING:  # torch is imported where a blend runs, so that loading the plugin (--help, list) is cheap
    import torch

    from stmod.core.registry import ComponentRegistrar

__all__ = ["BlendOptions", "NoBlend", "LatentBlend", "VideoGrainBlend", "feather", "composite_weights",
           "composite_frames"]


@frozen(kw_only=True)
class BlendOptions:
    """Options of the ``latent`` and ``videograin`` blenders."""

    #: Gaussian feathering of the mask edge, in latent pixels (0: hard edge).
    soft_edge: float = number(0.0, low=0.0, high=64.0)
    #: After decoding, the source's pixels outside the (grown, feathered) regions: the background is the
    #: user's, pixel for pixel. ``false`` keeps the decoder's output everywhere.
    composite: bool = field(default=True, validator=validators.instance_of(bool))
    #: How far the regions are grown before compositing, in pixels.
    composite_dilate: int = number(4, low=0, high=256)
    #: Gaussian feathering of the composite's seam, in pixels (0: a hard seam).
    composite_feather: float = number(2.0, low=0.0, high=64.0)


def feather(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur a float ``(F, 1, h, w)`` mask with a separable Gaussian of std ``sigma`` (replicate padding)."""
    if sigma <= 0:
        return mask
    import torch
    import torch.nn.functional as F

    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(mask.dtype)
    out = F.pad(mask, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).clamp(0.0, 1.0)


def composite_weights(regions: np.ndarray, dilate: int, sigma: float) -> np.ndarray:
    """float32 ``(F, H, W)`` in ``[0, 1]``: how much of the edit each pixel takes — 1 on ``regions`` (bool
    ``(F, H, W)``) grown by ``dilate`` pixels (a disc), falling off over a Gaussian of std ``sigma`` outside."""
    from scipy.ndimage import binary_dilation, gaussian_filter

    grown = regions.astype(bool)
    if dilate > 0:
        yy, xx = np.mgrid[-dilate:dilate + 1, -dilate:dilate + 1]
        disc = (yy**2 + xx**2 <= dilate**2)[None]
        grown = binary_dilation(grown, structure=disc)
    weights = grown.astype(np.float32)
    if sigma > 0:
        weights = np.maximum(gaussian_filter(weights, sigma=(0, sigma, sigma), mode="nearest"), weights)
    return weights


def composite_frames(source: np.ndarray, edited: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """uint8 ``source·(1 − w) + edited·w`` per pixel, rounded (``w`` float ``(F, H, W)``): the source exactly
    where ``w`` rounds the difference away, the edit exactly where ``w = 1``."""
    w = weights[..., None].astype(np.float32)
    mixed = source.astype(np.float32) + w * (edited.astype(np.float32) - source.astype(np.float32))
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


class _Composites:
    """The ``composite`` ability of the latent blenders (:class:`stmod.core.protocols.CompositesFrames`)."""

    options: BlendOptions

    def composite(self, source: np.ndarray, edited: np.ndarray, regions: np.ndarray) -> np.ndarray:
        if not self.options.composite:
            return edited
        weights = composite_weights(regions, self.options.composite_dilate, self.options.composite_feather)
        return composite_frames(source, edited, weights)


class NoBlend:
    """Leaves the latents untouched."""

    def blend(self, latents: torch.Tensor, *, step_index: int, timestep: int, next_timestep: int,
              context: BlendContext) -> torch.Tensor:
        return latents


class LatentBlend(_Composites):
    """Outside the mask, take the inversion trajectory's latent at the same noise level."""

    def __init__(self, options: BlendOptions) -> None:
        self.options = options

    def blend(self, latents: torch.Tensor, *, step_index: int, timestep: int, next_timestep: int,
              context: BlendContext) -> torch.Tensor:
        trajectory = context.trajectory
        if next_timestep not in trajectory:
            raise KeyError(
                f"the inversion trajectory has no latent at timestep {next_timestep} "
                f"(it has {sorted(trajectory)}); inversion and denoising must use the same schedule"
            )
        mask = feather(context.mask, self.options.soft_edge).to(latents.dtype)
        source = trajectory[next_timestep].to(latents.device, latents.dtype)
        return source.lerp(latents, mask.expand_as(latents))  # exact at mask 0 and 1


class VideoGrainBlend(_Composites):
    """Outside the mask, the clean source latent re-noised at the current step's timestep."""

    def __init__(self, options: BlendOptions) -> None:
        self.options = options

    def blend(self, latents: torch.Tensor, *, step_index: int, timestep: int, next_timestep: int,
              context: BlendContext) -> torch.Tensor:
        import torch

        source = context.source_latents.to(latents.device, latents.dtype)
        noise = torch.randn(source.shape, generator=context.generator, dtype=torch.float32,
                            device=context.generator.device).to(latents.device, latents.dtype)
        noised = context.add_noise(source, noise, timestep)
        mask = feather(context.mask, self.options.soft_edge).to(latents.dtype)
        return noised.lerp(latents, mask.expand_as(latents))


@hookimpl
def stmod_register_blenders(register: ComponentRegistrar) -> None:
    register.add("none", NoBlend, summary="No blending: the whole frame may change")
    register.add("latent", LatentBlend, options=BlendOptions,
                 summary="Paper latent blend: outside the regions follow the DDIM inversion trajectory")
    register.add("videograin", VideoGrainBlend, options=BlendOptions,
                 summary="Official VideoGrain blend: outside the regions, the source re-noised each step")
