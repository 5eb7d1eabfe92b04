"""The protocols every pluggable component implements.

A plugin registers a *factory* for a component (see :mod:`stmod.plugins.hookspecs`); the factory is
called with the component's validated options and must return an object that satisfies one of these
protocols. Tensor conventions used throughout:

* frames: ``uint8`` numpy arrays ``(F, H, W, 3)`` RGB, or ``float32`` tensors ``(F, 3, H, W)`` in
  ``[-1, 1]`` when handed to a backbone;
* latents: ``(F, C, H/8, W/8)`` tensors in the backbone's dtype (``C = 4`` for SD 1.5), already
  multiplied by the VAE scaling factor;
* masks: :class:`~stmod.core.types.LayoutMasks`, bool ``(F, K, H, W)`` at pixel resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest

__all__ = [
    "Backbone",
    "LayoutProvider",
    "Modulator",
    "Blender",
    "ControlAnnotator",
    "Phase",
    "ProgressFactory",
]

#: Which pass of an edit a model call belongs to: DDIM inversion or denoising.
Phase = Literal["invert", "denoise"]

#: ``progress(total, description)`` returns a context manager with ``update(n)``; tqdm's signature.
ProgressFactory = Callable[..., Any]


@runtime_checkable
class ControlAnnotator(Protocol):
    """**Protocol:** turns source frames into ControlNet control images.

    ``annotate`` receives ``uint8 (F, H, W, 3)`` RGB frames (already selected, resized and cropped)
    and returns ``uint8 (F, H, W, 3)`` control images of the same size. It must be deterministic and
    must not keep references to the frames.
    """

    def check(self, spec: EditSpec) -> None:
        """Validate options and files (e.g. annotator weights folder) without loading weights."""

    def annotate(self, frames: np.ndarray) -> np.ndarray:
        """Control images for ``frames``; same shape and dtype."""


@runtime_checkable
class LayoutProvider(Protocol):
    """**Protocol:** supplies the region masks of an edit.

    ``check`` validates the provider's own files and options against the job without loading any
    model and raises :class:`~stmod.core.errors.LayoutError` naming the file or region at fault.
    ``layout`` returns :class:`~stmod.core.types.LayoutMasks` for exactly ``regions`` (names, in that
    order) with one mask per selected frame at the edit's pixel size ``(H, W)``.
    ``needs_inversion_features`` tells the orchestrator to run inversion first and pass its
    self-attention features (K-Means layouts).
    """

    needs_inversion_features: bool

    def check(self, spec: EditSpec, regions: Sequence[str]) -> None:
        """Validate options and files for ``regions``; raise ``LayoutError`` on the first problem."""

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Masks for ``regions`` (see :class:`~stmod.core.types.LayoutRequest` for what is given)."""


@runtime_checkable
class Modulator(Protocol):
    """**Protocol:** decides how the backbone's attention behaves during an edit.

    The orchestrator calls ``prepare`` once per edit, then wraps every model that should be
    modulated in ``install(model, role=...)`` (a context manager that swaps the attention processors
    and restores the originals on exit, even on error). Before each model call the backbone asks
    ``call_kwargs(...)`` for the ``cross_attention_kwargs`` to pass; the processors read the step
    index and timestep from there (never from counters).
    """

    def prepare(self, plan: Any) -> None:
        """Precompute what every layer needs for this edit (region labels, token spans, sizes)."""

    def install(self, model: torch.nn.Module, *, role: str) -> AbstractContextManager[None]:
        """Install processors on ``model`` (``role`` is ``"unet"`` or ``"controlnet"``)."""

    def call_kwargs(self, *, phase: Phase, step_index: int, timestep: int) -> dict[str, Any]:
        """``cross_attention_kwargs`` for one model call."""


@runtime_checkable
class Blender(Protocol):
    """**Protocol:** combines the edited latents with the source after each denoising step.

    ``blend`` receives the latents right after scheduler step ``step_index`` moved them from noise
    level ``timestep`` to ``next_timestep`` (``0`` after the last step), and a context mapping with:
    ``mask`` (float ``(F, 1, h, w)`` in ``[0, 1]``, 1 where the edit may change the video),
    ``source_latents`` (clean source latents ``x0``), ``trajectory`` (``{timestep: latents}`` from
    DDIM inversion, including ``0: x0``), ``add_noise`` (``add_noise(x0, noise, timestep)``, the
    scheduler's forward noising) and ``generator`` (a ``torch.Generator`` for fresh noise).
    It returns latents of the same shape, dtype and device and must not modify its inputs.
    """

    def blend(
        self,
        latents: torch.Tensor,
        *,
        step_index: int,
        timestep: int,
        next_timestep: int,
        context: Mapping[str, Any],
    ) -> torch.Tensor:
        """Blended latents."""


@runtime_checkable
class Backbone(Protocol):
    """**Protocol:** a frozen text-to-image diffusion model (plus ControlNets) driven for video edits.

    ``check`` validates the job cheaply (checkpoint locations, prompt lengths when a tokenizer is
    available locally) and must not load weights. ``load`` loads weights once. The remaining methods
    follow the tensor conventions of this module; progress is reported through ``progress``.
    """

    def check(self, spec: EditSpec) -> None:
        """Validate model locations and prompts for ``spec`` without loading weights."""

    def load(self) -> None:
        """Load weights (idempotent)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``float32 (F, 3, H, W)`` in ``[-1, 1]`` → latents ``(F, C, H/8, W/8)``."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → ``float32 (F, 3, H, W)`` in ``[-1, 1]``."""
