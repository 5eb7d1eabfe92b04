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
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

    from stmod.core.budget.job import ModelFootprint
    from stmod.core.features import FeatureRequest, InversionFeatureRecorder
    from stmod.core.io.video import ClipPlan
    from stmod.core.sampling import Schedule
    from stmod.core.st_layout.recorders import AttentionRecorder
    from stmod.core.types import (BlendContext, Branch, Control, EditSpec, ExtensionInput, LayoutMasks, LayoutReport,
                                  LayoutRequest, ModulationInput, TextConditioning)

__all__ = [
    "Backbone",
    "DescribesFootprint",
    "SizeRule",
    "DEFAULT_SIZE_MULTIPLE",
    "size_multiple",
    "VideoBackbone",
    "LayoutProvider",
    "LayoutReporting",
    "Modulator",
    "FeatureRecording",
    "RecordsAttention",
    "ConditionsText",
    "Blender",
    "Extension",
    "ChecksJob",
    "PreparesFromClip",
    "FollowsSteps",
    "AttentionLevels",
    "AttentionBlocks",
    "ControlAnnotator",
    "JobFormat",
    "Phase",
    "Tokenizer",
]

#: Which pass of an edit a model call belongs to: DDIM inversion or denoising.
Phase = Literal["invert", "denoise"]


class Tokenizer(Protocol):
    """What stmod uses of a ``transformers`` (CLIP) tokenizer: ``tokenizer(text, ...)["input_ids"]``."""

    model_max_length: int

    def __call__(self, text: str, *, add_special_tokens: bool = True,
                 truncation: bool = False) -> Mapping[str, Sequence[int]]:
        """Token ids of ``text`` under ``"input_ids"``."""


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
    ``feature_request`` is ``None`` for a provider that needs no model (masks, boxes, SAM 2); a
    :class:`~stmod.core.features.FeatureRequest` makes the editor run the inversion first, record those
    self-attention features, and pass them as ``request.features`` (K-Means layouts).
    """

    feature_request: FeatureRequest | None

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Validate options and files for ``regions``; raise ``LayoutError`` on the first problem.

        ``clip`` is the job's clip, probed once for every check: ``clip.info`` (frame count, source
        size), ``clip.indices`` (the selected source frames) and ``clip.transform`` (scale and crop).
        """

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Masks for ``regions`` (see :class:`~stmod.core.types.LayoutRequest` for what is given)."""


@runtime_checkable
class LayoutReporting(Protocol):
    """**Optional ability** of a layout provider: a report of what its last ``layout`` call found.

    ``stmod-run layout`` draws it (``clusters.mp4``) and writes its table to ``layout.json``.
    """

    def report(self, height: int, width: int) -> LayoutReport | None:
        """What the last ``layout`` found at the edit's pixel size ``(height, width)``; ``None`` if nothing."""


@runtime_checkable
class Modulator(Protocol):
    """**Protocol:** decides how the backbone's attention behaves during an edit.

    The editor calls ``prepare(request)`` once per pass (inversion: no masks; denoising: the layout)
    with a :class:`~stmod.core.types.ModulationInput` (pixel masks bool ``(F, K, H, W)``, regions with
    their token spans, frame count, latent ``(h, w)``, ``ModulationConfig``, prompts); the modulator
    derives its own plan from it. It then wraps every model that should be modulated in
    ``install(model, role=...)`` (a context manager that swaps the attention processors and restores
    the originals on exit, even on error). Before each model call the editor asks ``call_kwargs(...)``
    for the ``cross_attention_kwargs`` to pass to the UNet and the ControlNet; processors read the
    phase, step index, timestep and CFG batch layout from there (never from counters).

    Optional abilities, each a protocol of its own checked with ``isinstance``:
    :class:`ConditionsText` (the text each CFG branch sees; without it, standard CFG text),
    :class:`FeatureRecording` (inversion features for K-Means layouts) and :class:`RecordsAttention`
    (cross-attention maps for ``--save-attention``).

    Batch layout: model inputs are ``(B·F, C, h, w)`` latents with the CFG branches outermost in the
    order given by ``branches`` and the F frames inner (row ``b·F + f``).
    """

    def prepare(self, request: ModulationInput) -> None:
        """Precompute what every layer needs for this pass (region labels, token spans, sizes)."""

    def install(self, model: torch.nn.Module, *, role: str) -> AbstractContextManager[None]:
        """Install processors on ``model`` (``role`` is ``"unet"`` or ``"controlnet"``)."""

    def call_kwargs(
        self,
        *,
        phase: Phase,
        step_index: int,
        timestep: int,
        branches: Sequence[Branch] = ("uncond", "cond"),
    ) -> Mapping[str, object]:
        """``cross_attention_kwargs`` for one model call.

        :param phase: ``"invert"`` or ``"denoise"``.
        :param step_index: 0-based index of the step within its phase's loop.
        :param timestep: the scheduler timestep of this call.
        :param branches: the CFG branches in batch order, e.g. ``("uncond", "cond")`` or ``("cond",)``.
        """


@runtime_checkable
class Extension(Protocol):
    """**Protocol:** a change to the backbone's networks for a whole edit, inversion and denoising alike
    (FreeU, FLATTEN trajectory attention, PnP feature injection).

    What every extension needs: ``inversion_settings()`` for the inversion cache key, and
    ``install(model, role=...)``, called for the inversion and again for the denoising on every model
    of ``Backbone.attention_models()`` — after the modulator, extensions in job order (torch forward
    hooks compose in registration order: a hook that replaces an output feeds the next one).
    ``install`` must restore the model on exit, even on error; an extension that only concerns the
    UNet returns a null context for other roles. Batch layout as for :class:`Modulator`: CFG branches
    outermost, frames inner.

    Optional abilities, each used when an extension has it (checked with ``isinstance``):
    :class:`ChecksJob` (validate the job before any model loads), :class:`PreparesFromClip` (compute
    or load what the edit needs once the backbone has loaded; may turn a cached inversion into a
    miss) and :class:`FollowsSteps` (told every step of either loop).
    """

    def inversion_settings(self) -> Mapping[str, object]:
        """What of this extension changes the inversion or what it records (JSON-able), ``{}`` if nothing."""

    def install(self, model: torch.nn.Module, *, role: str) -> AbstractContextManager[None]:
        """Change ``model`` (``role``: ``"unet"`` or ``"controlnet"``) inside the ``with`` block."""


@runtime_checkable
class ChecksJob(Protocol):
    """**Optional ability** of an extension: validate the job before any model loads."""

    def check(self, spec: EditSpec) -> None:
        """Raise a ``StmodError`` naming what in ``spec`` this extension cannot use."""


@runtime_checkable
class PreparesFromClip(Protocol):
    """**Optional ability** of an extension: work on the source clip once the backbone has loaded."""

    def prepare(self, request: ExtensionInput) -> None:
        """Compute or load what the edit needs from the source clip (once per edit; an
        :class:`~stmod.core.types.ExtensionInput`: the clip, the latent size and a ``store`` folder beside
        the inversion's cache entry)."""

    def needs_inversion(self) -> bool:
        """After ``prepare``: whether the inversion must run even though its trajectory is cached (e.g.
        recorded features missing from the store)."""


@runtime_checkable
class FollowsSteps(Protocol):
    """**Optional ability** of an extension: be told every step of the inversion and the denoising."""

    def step(self, *, phase: Phase, step_index: int, timestep: int, branches: Sequence[Branch]) -> None:
        """Called before each model call: ``phase`` ``"invert"`` or ``"denoise"``, the 0-based step index
        within that loop, its timestep and the CFG branches in batch order."""


@runtime_checkable
class AttentionLevels(Protocol):
    """**Optional ability** of a backbone: name its UNet levels with attention layers before loading, so
    a layout's ``level`` (K-Means) is checked with the job."""

    def attention_levels(self, base_dir: Path | None = None) -> tuple[int, ...] | None:
        """The levels with attention layers, read from the model's config (``None``: cannot tell yet)."""


@runtime_checkable
class AttentionBlocks(Protocol):
    """**Optional ability** of a transformer backbone whose attention layers are blocks at one grid (Wan):
    say how many, so a layout's ``block`` (K-Means features, :attr:`FeatureRequest.block`) is checked with
    the job; a backbone without it takes no ``block``."""

    def attention_blocks(self, base_dir: Path | None = None) -> int | None:
        """How many transformer blocks the model has, from its config (``None``: cannot tell yet)."""


@runtime_checkable
class ConditionsText(Protocol):
    """**Optional ability** of a modulator: it decides the text each CFG branch is conditioned on.

    Without it the editor uses standard CFG text: the negative prompt for ``uncond`` and the global
    prompt for ``cond``, for the UNet and the ControlNets alike.
    """

    def text_conditioning(self, request: ModulationInput,
                          encode_text: Callable[[Sequence[str]], torch.Tensor]) -> TextConditioning:
        """Per branch, the ``(1, 77, D)`` embeddings (``encode_text`` is the backbone's)."""


@runtime_checkable
class FeatureRecording(Protocol):
    """**Optional ability** of a modulator: feed an inversion feature recorder (K-Means layouts)."""

    def record_features(self, recorder: InversionFeatureRecorder) -> AbstractContextManager[InversionFeatureRecorder]:
        """Feed ``recorder`` from the UNet's attention during inversion calls inside the ``with`` block."""


@runtime_checkable
class RecordsAttention(Protocol):
    """**Optional ability** of a modulator: record the local prompts' cross-attention maps."""

    def start_recording(self) -> AttentionRecorder:
        """Record from now on (after ``prepare`` with masks); the recorder fills during denoising."""


@runtime_checkable
class JobFormat(Protocol):
    """**Protocol:** a job-file format other than stmod's own (``registry.job_formats`` holds them).

    ``detect(mapping)`` says whether a parsed YAML mapping is in the format; ``convert(mapping, *,
    source, allow_unsupported)`` returns the equivalent stmod job mapping; ``paths`` is ``"job"`` or
    ``"cwd"``: what the file's relative paths are relative to. A format whose files list several edits
    (the official configs' ``editing_prompts``) also takes ``prompt_index`` (``--prompt-index``), which
    is passed only when the user gives it.
    """

    @property
    def paths(self) -> str:
        """``"job"`` or ``"cwd"`` (a plain attribute satisfies this)."""

    def detect(self, data: Mapping[str, object]) -> bool:
        """Whether ``data`` is in this format."""

    def convert(self, data: Mapping[str, object], *, source: Path, allow_unsupported: bool) -> Mapping[str, object]:
        """The stmod job mapping equivalent to ``data``."""


@runtime_checkable
class Blender(Protocol):
    """**Protocol:** combines the edited latents with the source after each denoising step.

    ``blend`` receives the latents right after scheduler step ``step_index`` moved them from noise
    level ``timestep`` to ``next_timestep`` (``0`` after the last step), and the edit's
    :class:`~stmod.core.types.BlendContext` (mask, source latents, inversion trajectory, noise
    schedule, generator; shapes and dtypes documented there).
    It returns latents of the same shape, dtype and device and must not modify its inputs.
    """

    def blend(
        self,
        latents: torch.Tensor,
        *,
        step_index: int,
        timestep: int,
        next_timestep: int,
        context: BlendContext,
    ) -> torch.Tensor:
        """Blended latents."""


@runtime_checkable
class CompositesFrames(Protocol):
    """**Optional ability of a blender:** put the source's pixels back outside the edited regions after decoding.

    A VAE decoder is not local (its GroupNorm statistics and mid-block attention carry what an edit put
    inside the regions across the whole frame), so latents equal to the source's outside the regions do
    not decode to the source's pixels there. ``composite`` receives the source and the decoded edit,
    uint8 ``(F, H, W, 3)``, and ``regions`` bool ``(F, H, W)`` (the union of the layout's region masks at
    pixel resolution); it returns uint8 frames of the same shape and must not modify its inputs. The
    editor calls it only for edits that have regions (a global edit changes the whole frame).
    """

    def composite(self, source: np.ndarray, edited: np.ndarray, regions: np.ndarray) -> np.ndarray:
        """The frames the user receives."""


@runtime_checkable
class Backbone(Protocol):
    """**Protocol:** a frozen text-to-image diffusion model (plus ControlNets) driven for video edits.

    The editor owns the loops (:mod:`stmod.core.sampling`); the backbone answers model calls.
    ``check`` validates the job cheaply (checkpoint locations, device) and must not load weights;
    ``load_tokenizer`` returns the tokenizer alone (no weights) so prompts are checked before loading,
    or ``None`` when that is not possible. After ``load``:

    * ``encode``: ``float32 (F, 3, H, W)`` in ``[-1, 1]`` → latents ``(F, C, H/8, W/8)`` (scaled);
      ``decode`` the inverse, returning ``float32`` on the CPU;
    * ``encode_text(prompts)`` → ``(n, 77, D)`` text embeddings; ``tokenizer`` is a CLIP tokenizer;
    * ``predict_noise(latents (B, C, h, w), timestep, text (B, 77, D), *, controls, control_text,
      cross_attention_kwargs)`` → the model's prediction ``(B, C, h, w)`` in the schedule's
      ``prediction_type`` (ε for SD 1.5, a velocity for a flow model); ``controls`` pairs a ControlNet
      location (from ``controlnet_location``) with a :class:`~stmod.core.types.Control`;
    * ``noise_schedule()`` (:class:`~stmod.core.sampling.Schedule`: a DDIM
      :class:`~stmod.core.sampling.NoiseSchedule` or a :class:`~stmod.core.sampling.FlowSchedule`)
      defines the levels and the step between two of them, in either direction; ``attention_models()`` maps roles (``"unet"``, ``"controlnet.<i>"``) to the
      modules whose attention processors a modulator may replace;
    * ``control_tensor(images uint8 (F, H, W, 3), repeat)`` → ``(repeat·F, 3, H, W)`` in ``[0, 1]``.

    ``model_id``, ``device`` and ``dtype`` identify the weights and numerics (inversion cache key).
    """

    model_id: str
    device: torch.device
    dtype: torch.dtype
    tokenizer: Tokenizer | None

    def check(self, spec: EditSpec) -> None:
        """Validate model locations for ``spec`` without loading weights."""

    def load_tokenizer(self, base_dir: Path | None = None) -> Tokenizer | None:
        """The tokenizer without model weights, or ``None`` if it cannot be had before ``load``."""

    def controlnet_location(self, annotator: str, model: str | None) -> str:
        """The ControlNet weights for a control entry (its ``model`` or a default for the annotator)."""

    def load(self, controlnets: Sequence[str] = (), base_dir: Path | None = None) -> None:
        """Load weights and the given ControlNets (idempotent)."""

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames → latents."""

    def decode(self, latents: torch.Tensor, *, progress: Callable[[int], object] | None = None) -> torch.Tensor:
        """Latents → frames; ``progress(n)``, if given, is called after each ``n`` decoded frames."""

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings of ``prompts``."""

    def predict_noise(
        self,
        latents: torch.Tensor,
        timestep: int,
        text: torch.Tensor,
        *,
        controls: Sequence[tuple[str, Control]] = (),
        control_text: torch.Tensor | None = None,
        cross_attention_kwargs: Mapping[str, object] | None = None,
    ) -> torch.Tensor:
        """The prediction (ε or velocity) for one batch (see the class docs for the keyword arguments)."""

    def noise_schedule(self) -> Schedule:
        """The levels, the prediction type and one step between two levels (ᾱ per timestep for DDIM)."""

    def attention_models(self) -> Mapping[str, torch.nn.Module]:
        """Role → module whose attention processors a modulator may swap."""

    def control_tensor(self, images: np.ndarray, repeat: int = 1) -> torch.Tensor:
        """Control images → model input."""


@runtime_checkable
class ChecksWeights(Protocol):
    """**Optional ability** of a backbone that loads weights from a location (a folder, a file, a hub id):
    say, without loading anything, whether they can be had, so that ``Editor.from_pretrained`` refuses a
    model that is not there when the editor is made, not when its first job runs."""

    def check_weights(self, base_dir: Path | None = None) -> None:
        """Raise :class:`~stmod.core.errors.CheckpointError` naming the location and how to get the weights
        when they are neither here (a folder, a file, the Hugging Face cache) nor downloadable; never
        loads or downloads them. ``base_dir``: where a relative location is read from."""


#: The pixel multiple an edit's sides must keep for a backbone without :class:`SizeRule`: SD 1.5's 8× VAE
#: and a UNet that halves its latents three times (a 512-pixel side: 64 → 32 → 16 → 8 cells).
DEFAULT_SIZE_MULTIPLE = 64


@runtime_checkable
class SizeRule(Protocol):
    """**Optional ability** of a backbone whose edit size may be finer than :data:`DEFAULT_SIZE_MULTIPLE`
    (e.g. Wan 2.1: an 8× VAE and 2×2 patches take any multiple of 16, so 832×480 — its 480p). ``check``
    refuses a ``video.size`` whose sides are not multiples of it, and ``--size keep`` rounds down to it."""

    #: Pixels; each side of ``video.size`` must be a multiple of it (itself a multiple of 16, the core's rule).
    size_multiple: int


def size_multiple(backbone: object) -> int:
    """The pixel multiple ``backbone`` needs: its :class:`SizeRule`, else :data:`DEFAULT_SIZE_MULTIPLE`."""
    return backbone.size_multiple if isinstance(backbone, SizeRule) else DEFAULT_SIZE_MULTIPLE


@runtime_checkable
class DescribesFootprint(Protocol):
    """**Optional ability** of a backbone: tell what its models weigh and how they would run, without
    loading weights, for the memory and time estimate of ``stmod-run check`` (``docs/memory.md``).

    A backbone without it gets an estimate whose every part is "unknown".
    """

    def footprint(self, spec: EditSpec, *, device: str | None = None) -> ModelFootprint | None:
        """The models ``spec`` would load (configs, parameter counts from file headers), the device kind
        and dtype they would run in, and the options that change memory (VAE batch and tiling, offload).

        :param device: plan for this device (``"cuda"``, ``"cpu"``) instead of the configured one,
            with the dtype the backbone would pick there.
        :returns: ``None`` when nothing can be read (a component that cannot be read is ``None``
            inside the footprint); never loads weights, never downloads.
        """


@runtime_checkable
class VideoBackbone(Protocol):
    """**Optional ability** of a backbone whose latents are not one per frame (a video VAE that
    compresses time, e.g. Wan 2.1: ``1 + 4k`` frames → ``1 + k`` latent frames) or whose text is not
    77 CLIP positions.

    Its latents are still ``(f, C, h, w)`` with ``f`` latent frames; the editor hands the modulator and
    the blender ``latent_masks(layout)`` (``f`` frames) instead of the pixel layout, and calls
    ``check_clip`` with the probed clip before any model loads.
    """

    #: Text positions the denoiser attends to per prompt (:attr:`~stmod.core.types.ModulationInput.text_length`).
    text_length: int

    def check_clip(self, clip: ClipPlan) -> None:
        """Refuse a clip the model cannot take (e.g. a frame count that is not ``1 + 4k``), naming the fix."""

    def latent_masks(self, masks: LayoutMasks) -> LayoutMasks:
        """Pixel masks ``(F, K, H, W)`` → masks per latent frame ``(f, K, H, W)`` (same names)."""
