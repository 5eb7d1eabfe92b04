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

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

    from stmod.core.sampling import NoiseSchedule
    from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest

__all__ = [
    "Backbone",
    "LayoutProvider",
    "Modulator",
    "Blender",
    "ControlAnnotator",
    "Phase",
]

#: Which pass of an edit a model call belongs to: DDIM inversion or denoising.
Phase = Literal["invert", "denoise"]


@runtime_checkable
class ControlAnnotator(Protocol):
    """**Protocol:** turns source frames into ControlNet control images.

    ``annotate`` receives the clip request (``request.frames``: ``uint8 (F, H, W, 3)`` RGB frames,
    already selected, resized and cropped; plus the frame indices and the transform, for annotators
    that read precomputed images) and returns ``uint8 (F, H, W, 3)`` control images of the same size.
    It must be deterministic and must not keep references to the frames.
    """

    def check(self, spec: EditSpec) -> None:
        """Validate options and files (e.g. annotator weights folder) without loading weights."""

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        """Control images for ``request.frames``; same shape and dtype."""


@runtime_checkable
class LayoutProvider(Protocol):
    """**Protocol:** supplies the region masks of an edit.

    ``check`` validates the provider's own files and options against the job without loading any
    model and raises :class:`~stmod.core.errors.LayoutError` naming the file or region at fault.
    ``layout`` returns :class:`~stmod.core.types.LayoutMasks` for exactly ``regions`` (names, in that
    order) with one mask per selected frame at the edit's pixel size ``(H, W)``.
    ``needs_inversion_features`` tells the orchestrator to run inversion first and pass its
    self-attention features (K-Means layouts) as ``request.features``
    (:class:`~stmod.core.features.InversionFeatures`, for the provider's optional ``feature_request``).
    """

    needs_inversion_features: bool

    def check(self, spec: EditSpec, regions: Sequence[str]) -> None:
        """Validate options and files for ``regions``; raise ``LayoutError`` on the first problem."""

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Masks for ``regions`` (see :class:`~stmod.core.types.LayoutRequest` for what is given)."""


@runtime_checkable
class Modulator(Protocol):
    """**Protocol:** decides how the backbone's attention behaves during an edit.

    The orchestrator calls ``prepare(plan)`` once per edit (the built-in ``st-layout`` modulator
    takes a :class:`stmod.core.engine.ModulationPlan`: pixel masks bool ``(F, K, H, W)``, regions
    with their token spans, frame count, latent ``(h, w)``, ``ModulationConfig``), then wraps every
    model that should be modulated in ``install(model, role=...)`` (a context manager that swaps the
    attention processors and restores the originals on exit, even on error). Before each model call
    the backbone asks ``call_kwargs(...)`` for the ``cross_attention_kwargs`` to pass to the UNet and
    the ControlNet; the processors read the phase, step index, timestep and CFG batch layout from
    there (never from counters).

    Batch layout: model inputs are ``(B·F, C, h, w)`` latents with the CFG branches outermost in the
    order given by ``branches`` and the F frames inner (row ``b·F + f``).
    """

    def prepare(self, plan: Any) -> None:
        """Precompute what every layer needs for this edit (region labels, token spans, sizes)."""

    def install(self, model: torch.nn.Module, *, role: str) -> AbstractContextManager[None]:
        """Install processors on ``model`` (``role`` is ``"unet"`` or ``"controlnet"``)."""

    def call_kwargs(
        self,
        *,
        phase: Phase,
        step_index: int,
        timestep: int,
        branches: Sequence[Literal["uncond", "cond"]] = ("uncond", "cond"),
    ) -> dict[str, Any]:
        """``cross_attention_kwargs`` for one model call.

        :param phase: ``"invert"`` or ``"denoise"``.
        :param step_index: 0-based index of the step within its phase's loop.
        :param timestep: the scheduler timestep of this call.
        :param branches: the CFG branches in batch order, e.g. ``("uncond", "cond")`` or ``("cond",)``.
        """


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

    The orchestrator owns the loops (:mod:`stmod.core.sampling`); the backbone answers model calls.
    ``check`` validates the job cheaply (checkpoint locations, device) and must not load weights;
    ``load_tokenizer`` returns the tokenizer alone (no weights) so prompts are checked before loading,
    or ``None`` when that is not possible. After ``load``:

    * ``encode``: ``float32 (F, 3, H, W)`` in ``[-1, 1]`` → latents ``(F, C, H/8, W/8)`` (scaled);
      ``decode`` the inverse, returning ``float32`` on the CPU;
    * ``encode_text(prompts)`` → ``(n, 77, D)`` text embeddings; ``tokenizer`` is a CLIP tokenizer;
    * ``predict_noise(latents (B, C, h, w), timestep, text (B, 77, D), *, controls, control_text,
      cross_attention_kwargs)`` → ε ``(B, C, h, w)``; ``controls`` pairs a ControlNet location
      (from ``controlnet_location``) with a :class:`~stmod.core.types.Control`;
    * ``noise_schedule()`` (:class:`~stmod.core.sampling.NoiseSchedule`) defines the DDIM levels; ``attention_models()`` maps roles (``"unet"``, ``"controlnet.<i>"``) to the
      modules whose attention processors a modulator may replace;
    * ``control_tensor(images uint8 (F, H, W, 3), repeat)`` → ``(repeat·F, 3, H, W)`` in ``[0, 1]``.

    ``model_id``, ``device`` and ``dtype`` identify the weights and numerics (inversion cache key).
    """

    model_id: str
    device: torch.device
    dtype: torch.dtype

    def check(self, spec: EditSpec) -> None:
        """Validate model locations for ``spec`` without loading weights."""

    def load_tokenizer(self, base_dir: Path | None = None) -> Any:
        """The tokenizer without model weights, or ``None`` if it cannot be had before ``load``."""

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        """The ControlNet weights for a control entry (its ``model`` or a default for the annotator)."""

    def load(self, controlnets: Sequence[str] = (), base_dir: Path | None = None) -> None:
        """Load weights and the given ControlNets (idempotent)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames → latents."""

    def decode(self, latents: torch.Tensor, *, progress: Any = None) -> torch.Tensor:
        """Latents → frames; ``progress(n)``, if given, is called after each ``n`` decoded frames."""

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings of ``prompts``."""

    def predict_noise(self, latents: torch.Tensor, timestep: int, text: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """ε for one batch (see the class docs for the keyword arguments)."""

    def noise_schedule(self) -> NoiseSchedule:
        """ᾱ per timestep and the clean level's ᾱ."""

    def attention_models(self) -> Mapping[str, torch.nn.Module]:
        """Role → module whose attention processors a modulator may swap."""

    def control_tensor(self, images: np.ndarray, repeat: int = 1) -> torch.Tensor:
        """Control images → model input."""
