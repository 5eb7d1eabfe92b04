"""An example stmod plugin: the ``stripes`` layout provider and the ``fade`` blender.

Registered through the ``stmod`` entry-point group (see ``pyproject.toml``); stmod calls the two hook
implementations below with a registrar for each component kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import attrs
import numpy as np

from stmod import LayoutError, LayoutMasks, hookimpl

if TYPE_CHECKING:  # stmod loads every plugin for `stmod-run --help`: import torch (and video I/O) where used
    import torch

    from stmod import BlendContext, ClipPlan, EditSpec, LayoutRequest

__version__ = "0.1.0"


@attrs.frozen(kw_only=True)
class StripesOptions:
    """Options of the ``stripes`` layout."""

    #: ``vertical`` stripes split the width, ``horizontal`` stripes split the height.
    axis: Literal["vertical", "horizontal"] = attrs.field(
        default="vertical", validator=attrs.validators.in_(("vertical", "horizontal")))


class StripesLayout:
    """Region ``i`` of ``n`` is the ``i``-th of ``n`` equal stripes of every frame."""

    feature_request = None  # no inversion features needed

    def __init__(self, options: StripesOptions) -> None:
        self.options = options

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        width, height = spec.video.size
        extent = width if self.options.axis == "vertical" else height
        if len(regions) > extent:
            raise LayoutError(f"stripes: {len(regions)} regions do not fit in {extent} pixels")

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        import torch

        frames = np.asarray(request.frames)
        count, height, width = frames.shape[:3]
        masks = torch.zeros((count, len(regions), height, width), dtype=torch.bool)
        extent = width if self.options.axis == "vertical" else height
        edges = np.linspace(0, extent, len(regions) + 1).round().astype(int)
        for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            if self.options.axis == "vertical":
                masks[:, k, :, lo:hi] = True
            else:
                masks[:, k, lo:hi, :] = True
        return LayoutMasks(masks=masks, names=tuple(regions))


@attrs.frozen(kw_only=True)
class FadeOptions:
    """Options of the ``fade`` blender."""

    #: Number of denoising steps over which the edited area fades in (>= 1).
    ramp_steps: int = attrs.field(default=5, validator=attrs.validators.ge(1))


class FadeBlend:
    """Latent blend whose mask weight grows linearly from 0 to 1 over ``ramp_steps`` steps."""

    def __init__(self, options: FadeOptions) -> None:
        self.options = options

    def blend(self, latents: torch.Tensor, *, step_index: int, timestep: int, next_timestep: int,
              context: BlendContext) -> torch.Tensor:
        weight = min(1.0, (step_index + 1) / self.options.ramp_steps)
        source = context.trajectory[next_timestep].to(latents.device, latents.dtype)
        mask = context.mask.to(latents.dtype) * weight
        return source + mask * (latents - source)


@hookimpl
def stmod_register_layout_providers(register) -> None:
    register.add("stripes", StripesLayout, options=StripesOptions,
                 summary="Equal stripes, one per region (try an edit before you have masks)")


@hookimpl
def stmod_register_blenders(register) -> None:
    register.add("fade", FadeBlend, options=FadeOptions,
                 summary="Latent blend whose edited area fades in over the first steps")
