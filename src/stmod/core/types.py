"""Frozen value objects that describe an edit.

All are ``attrs`` frozen, keyword-only classes with validators; derive variants with ``attrs.evolve``.
They hold no behaviour beyond small derived properties. YAML is turned into them by
:mod:`stmod.core.config`, never by ``Cls(**mapping)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs
from attrs import field, frozen, validators

if TYPE_CHECKING:  # annotations only: these modules build on the values defined here
    import numpy as np
    import torch

    from stmod.core.features import InversionFeatures
    from stmod.core.io.video import FrameTransform
    from stmod.core.sampling import Schedule
    from stmod.core.tokens import TokenSpan

__all__ = [
    "as_tuple",
    "NAME_PATTERN",
    "NAME_RULE",
    "name_problem",
    "RANGE_KEY",
    "MAX_SEED",
    "MAX_STEPS",
    "SIZE_MULTIPLE",
    "MAX_LEVEL",
    "Range",
    "number",
    "Region",
    "VideoSource",
    "ComponentRef",
    "ControlSpec",
    "ModulationConfig",
    "MODULATED_FRACTION",
    "OFFICIAL_END_STEP",
    "default_end_step",
    "EditSpec",
    "LayoutMasks",
    "LayoutRequest",
    "LayoutReport",
    "ModulationInput",
    "ExtensionInput",
    "TextConditioning",
    "BlendContext",
    "Control",
    "Branch",
]


def as_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    """``tuple(value)`` as an attrs converter: typed, so a type checker reads the field's ``__init__``
    argument as any iterable (with the generic ``tuple`` itself mypy's attrs plugin cannot solve it)."""
    return tuple(value)

#: A classifier-free-guidance branch of a model batch.
Branch = Literal["uncond", "cond"]

#: Region, job, output and component names: letters, digits, ``_``, ``-`` and ``.``; they become folder
#: names. ``\Z``, not ``$``: ``$`` also matches before a final newline, and ``"cat\n"`` is no name.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
#: Longest name: a folder name with room for stmod's temporary suffix on every common file system.
NAME_MAX_CHARS = 200
#: The rule in words, for messages.
NAME_RULE = "use letters, digits, '_', '-' or '.', starting with a letter or digit"


def name_problem(value: object, *, reserved: Collection[str] = ()) -> str | None:
    """Why ``value`` is not a valid region, job, output or component name, or ``None``: the one name rule
    of stmod (job files, flags, batch manifests and the app all use it). ``reserved``: names the caller
    keeps for itself (a batch's ``batch.json``)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not NAME_PATTERN.match(value):
        return f"{value!r} is not a valid name: {NAME_RULE}"
    if len(value) > NAME_MAX_CHARS:
        return f"is {len(value)} characters long, more than the {NAME_MAX_CHARS} a name may have"
    if value in reserved:
        return f"{value!r} is reserved by stmod (it uses {', '.join(sorted(reserved))} itself); choose another name"
    return None

Preset = Literal["videograin", "paper"]
TemporalFocus = Literal["full", "per-frame", "sparse-causal", "window"]
MaskDownsample = Literal["nearest", "area"]


def _valid_name(_: Any, attribute: attrs.Attribute, value: str) -> None:
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"{attribute.name} {problem}")


#: Field metadata key of a :class:`Range` (the structurer and the docs read it).
RANGE_KEY = "stmod.range"
#: Largest seed: what NumPy and scikit-learn accept as ``random_state`` (torch takes more).
MAX_SEED = 2**32 - 1
#: Deepest UNet level an option may name (each level halves the latent grid; SD 1.5 has levels 0-3).
MAX_LEVEL = 8
#: Most DDIM steps: the diffusion models' training timesteps (a schedule cannot have more levels).
MAX_STEPS = 1000
#: Pixels: every side of an edit is a multiple of it — an 8× VAE's latents in 2×2 patches (Wan 2.1). A
#: backbone may need more (:class:`~stmod.core.protocols.SizeRule`; SD 1.5 needs 64).
SIZE_MULTIPLE = 16


@frozen
class Range:
    """The numbers a field accepts: finite, from ``low`` to ``high`` inclusive (``None``: unbounded).

    It is the field's validator (Python callers get the same rule) and sits in its metadata under
    :data:`RANGE_KEY`, so job files are checked with the YAML path of the value and docs can list it.
    A tuple field's items, and an optional field's value when set, are each checked.
    """

    low: int | float | None = None
    high: int | float | None = None

    def describe(self, kind: str = "a number") -> str:
        """E.g. ``"an integer from 0 to 4294967295"``."""
        if self.low is not None and self.high is not None:
            return f"{kind} from {self.low} to {self.high}"
        if self.low is not None:
            return f"{kind} of at least {self.low}"
        return f"{kind} of at most {self.high}" if self.high is not None else f"a finite {kind.split()[-1]}"

    def problem(self, value: object) -> str | None:
        """Why ``value`` is out of range (``None`` when it is fine)."""
        if isinstance(value, float) and not math.isfinite(value):
            return "not finite"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                return "out of range"
        return None

    def __call__(self, instance: object, attribute: attrs.Attribute, value: object) -> None:
        for item in value if isinstance(value, tuple) else (value,):
            if self.problem(item):
                kind = "an integer" if isinstance(item, int) else "a number"
                raise ValueError(f"{attribute.name} must be {self.describe(kind)}, got {item!r}")


def number(default: Any = attrs.NOTHING, *, low: int | float | None = None, high: int | float | None = None,
           validator: Any = None, **kwargs: Any) -> Any:
    """An attrs field holding numbers in ``[low, high]`` (see :class:`Range`); other ``field`` arguments pass on."""
    rng = Range(low, high)
    extra = [] if validator is None else list(validator) if isinstance(validator, (list, tuple)) else [validator]
    metadata = {**kwargs.pop("metadata", {}), RANGE_KEY: rng}
    return field(default=default, validator=[rng, *extra], metadata=metadata, **kwargs)


def _frozen_mapping(value: Mapping[str, object] | None) -> Mapping[str, object]:
    return dict(value or {})


@frozen(kw_only=True)
class Region:
    """One edited region: a name (matching its mask) and the local prompt that should land in it.

    An empty ``prompt`` keeps the region in self-attention modulation and the latent blend but gives it
    no text tokens (the official code's behaviour for masks without a local prompt).
    """

    name: str = field(validator=_valid_name)
    prompt: str = field(default="", validator=validators.instance_of(str))


@frozen(kw_only=True)
class VideoSource:
    """A clip on disk (mp4/mov/webm/gif file or a folder of frames) and which frames to edit.

    Frame ``i`` of the edit is source frame ``start + i * every`` for ``i < frames`` (all remaining
    frames when ``frames`` is ``None``). ``size`` is ``(width, height)`` in pixels, each a multiple of
    :data:`SIZE_MULTIPLE` (a backbone may need more, which ``check`` enforces: SD 1.5 needs 64, see
    :class:`~stmod.core.protocols.SizeRule`); frames are scaled to cover it and centre-cropped, and masks get
    the same transform.
    """

    path: Path = field(converter=Path)
    start: int = number(0, low=0, high=10**7)
    every: int = number(1, low=1, high=10**4)
    frames: int | None = number(None, low=1, high=10**4)
    size: tuple[int, int] = number((512, 512), low=64, high=8192, converter=as_tuple)

    @size.validator
    def _check_size(self, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
        if len(value) != 2 or any((not isinstance(v, int)) or v < 64 or v % SIZE_MULTIPLE for v in value):
            raise ValueError(f"size {value!r} must be (width, height), each a multiple of {SIZE_MULTIPLE} "
                             "and at least 64 (SD 1.5 backbones need multiples of 64)")

    def indices(self, available: int) -> list[int]:
        """Source frame indices selected from a clip of ``available`` frames."""
        picked = list(range(self.start, available, self.every))
        return picked if self.frames is None else picked[: self.frames]


@frozen(kw_only=True)
class ComponentRef:
    """A component chosen by name, with the options passed to its factory (validated by its plugin)."""

    name: str = field(validator=_valid_name)
    options: Mapping[str, object] = field(factory=dict, converter=_frozen_mapping)


@frozen(kw_only=True)
class ControlSpec:
    """One ControlNet: the annotator that makes its control images, its weights and its scale."""

    annotator: ComponentRef
    model: str | None = None
    scale: float = number(1.0, low=0.0, high=10.0)


@frozen(kw_only=True)
class ModulationConfig:
    """How ST-Layout attention modulates cross- and self-attention (``docs/method.md``).

    ``preset`` picks the semantics (``videograin``: the official code; ``paper``: the equations); the
    other fields tune it. Modulation is active for denoising steps ``start_step <= i < end_step``.
    ``end_step`` unset (``None``, the default) follows the job's step count: the first
    :data:`MODULATED_FRACTION` of the steps (the official code modulates 15 of its 50), see :meth:`resolved`.
    """

    preset: Preset = field(default="videograin", validator=validators.in_(("videograin", "paper")))
    start_step: int = number(0, low=0, high=MAX_STEPS)
    end_step: int | None = number(None, low=0, high=MAX_STEPS)
    #: λ scale of self-attention (0.3 in the paper); above 1 the scores' own order is inverted.
    self_strength: float = number(0.3, low=0.0, high=10.0)
    cross_strength: float = number(1.0, low=0.0, high=10.0)
    time_exponent: float = number(5.0, low=0.0, high=100.0)
    modulate_cross: bool = field(default=True, validator=validators.instance_of(bool))
    modulate_self: bool = field(default=True, validator=validators.instance_of(bool))
    temporal: TemporalFocus = field(
        default="full", validator=validators.in_(("full", "per-frame", "sparse-causal", "window"))
    )
    #: ``temporal: window``: frames per window, frames two neighbouring windows share, and how many
    #: first frames of the clip every window also attends to (anchors that tie the windows together).
    window_frames: int = number(16, low=1, high=10**4)
    window_overlap: int = number(4, low=0, high=10**4 - 1)
    anchor_frames: int = number(1, low=0, high=10**4)
    mask_downsample: MaskDownsample = field(default="nearest", validator=validators.in_(("nearest", "area")))
    #: Round the size term and λ to float16 where the official code does (``docs/method.md`` §2), so
    #: the ``videograin`` preset matches the official attention to float32 precision. ``None``: the
    #: preset decides (on for ``videograin``, off for ``paper``, whose size terms are not the official ones).
    exact_lambda: bool | None = field(default=None, validator=validators.optional(validators.instance_of(bool)))
    #: Modulate the finest layers too: those with more than ``(h/2)·(w/2)`` tokens per frame (64×64 at 512²).
    #: ``None``: the preset decides — ``videograin`` leaves them stock, as the official code, which sends them to
    #: xformers without a modulation hook; ``paper`` modulates them. On a model with few latent cells (the
    #: shapes model's 16×16) the finest layers are where an object's colour is painted (docs/shapes.md).
    modulate_finest: bool | None = field(default=None, validator=validators.optional(validators.instance_of(bool)))
    #: The CFG branch whose self-attention is modulated. ``None``: the preset decides — ``videograin`` the
    #: unconditional one, as the official code (whose sliced self-attention calls its controller for the first
    #: half of the batch only; under guidance g the unconditional prediction enters with weight 1 − g, so the
    #: modulation acts on the edit reversed); ``paper`` (and DenseDiffusion) the conditional one.
    self_branch: Literal["uncond", "cond"] | None = field(
        default=None, validator=validators.optional(validators.in_(("uncond", "cond"))))
    #: A local prompt whose tokens are not in the global prompt: ``error`` (say so and stop) or ``drop``
    #: (its region gets no text tokens, said in one line: what the official code does, silently).
    missing_local_prompt: Literal["error", "drop"] = field(default="error", validator=validators.in_(("error", "drop")))

    @exact_lambda.validator
    def _check_exact(self, attribute: attrs.Attribute, value: bool | None) -> None:
        if value and self.preset != "videograin":
            raise ValueError(f"exact_lambda reproduces the official code's rounding; it needs preset 'videograin', "
                             f"not {self.preset!r}")

    @end_step.validator
    def _check_window(self, attribute: attrs.Attribute, value: int | None) -> None:
        if value is not None and value < self.start_step:
            raise ValueError(f"end_step {value} must not be smaller than start_step {self.start_step}")

    @window_overlap.validator
    def _check_overlap(self, attribute: attrs.Attribute, value: int) -> None:
        if value >= self.window_frames:
            raise ValueError(f"window_overlap {value} must be smaller than window_frames {self.window_frames}")

    def window(self, steps: int) -> tuple[int, int]:
        """``(start, end)``: the denoising steps ``start <= i < end`` of ``steps`` that are modulated."""
        end = default_end_step(steps) if self.end_step is None else self.end_step
        return self.start_step, min(end, steps)

    def resolved(self, steps: int) -> ModulationConfig:
        """This config with ``end_step`` set for a run of ``steps`` denoising steps (an explicit one is kept)."""
        return self if self.end_step is not None else attrs.evolve(self, end_step=default_end_step(steps))

    def active(self, step_index: int) -> bool:
        """Whether denoising step ``step_index`` (0-based) lies in the modulation window.

        Editors pass a :meth:`resolved` config; an unresolved one (the engine driven without a job, which
        has no step count) keeps the official code's fixed window, :data:`OFFICIAL_END_STEP` steps.
        """
        end = OFFICIAL_END_STEP if self.end_step is None else self.end_step
        return self.start_step <= step_index < end


#: The share of denoising steps modulated when ``modulation.end_step`` is unset: the official code's 15 of 50.
MODULATED_FRACTION = 0.3

#: The official code's window: its first 15 denoising steps, whatever the step count (its configs'
#: ``modulated_percentage: 0.3`` is unused there).
OFFICIAL_END_STEP = 15


def default_end_step(steps: int) -> int:
    """``round(0.3 · steps)``, at least 1: 15 of 50 steps (the official window), 6 of 20, 1 of 3."""
    return max(1, round(MODULATED_FRACTION * steps))


def _unique_regions(_: Any, attribute: attrs.Attribute, value: tuple[Region, ...]) -> None:
    seen: set[str] = set()
    for region in value:
        if region.name in seen:
            raise ValueError(f"region {region.name!r} is listed twice")
        seen.add(region.name)


def _unique_extensions(_: Any, attribute: attrs.Attribute, value: tuple[ComponentRef, ...]) -> None:
    names = [ref.name for ref in value]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"extension {name!r} is listed twice in extensions; list each once")


@frozen(kw_only=True)
class EditSpec:
    """Everything one edit needs, validated, before any model is loaded.

    ``regions`` are keyed by name: each name must match a mask of the layout. ``layout`` may combine
    several providers (e.g. SAM 2 for people, K-Means for the background); where regions overlap,
    ``layout_overlap`` decides (see :mod:`stmod.core.pipeline.compose`). ``base_dir`` is the folder
    that relative paths in component options are resolved against (the job file's folder).
    """

    video: VideoSource
    prompt: str = field(validator=validators.instance_of(str))
    source_prompt: str = ""
    negative_prompt: str = ""
    regions: tuple[Region, ...] = field(factory=tuple, converter=as_tuple, validator=_unique_regions)
    layout: tuple[ComponentRef, ...] = field(factory=tuple, converter=as_tuple)
    layout_overlap: Literal["later-wins", "error", "keep"] = field(
        default="later-wins", validator=validators.in_(("later-wins", "error", "keep")))
    backbone: ComponentRef = field(factory=lambda: ComponentRef(name="sd15"))
    blend: ComponentRef = field(factory=lambda: ComponentRef(name="none"))
    modulator: ComponentRef = field(factory=lambda: ComponentRef(name="st-layout"))
    control: tuple[ControlSpec, ...] = field(factory=tuple, converter=as_tuple)
    #: changes to the networks for the whole edit (FreeU, FLATTEN, PnP), installed in this order
    extensions: tuple[ComponentRef, ...] = field(factory=tuple, converter=as_tuple, validator=_unique_extensions)
    modulation: ModulationConfig = field(factory=ModulationConfig)
    seed: int = number(0, low=0, high=MAX_SEED)
    steps: int = number(50, low=1, high=MAX_STEPS)
    #: Skip the first ``int(steps · skip_fraction)`` denoising steps, starting the rest from the fully
    #: inverted latent anyway (the official ``blending_percentage``, which blends nothing despite its name).
    skip_fraction: float = number(0.0, low=0.0, high=1.0)
    guidance: float = number(7.5, low=0.0, high=100.0)
    #: diffusers' ``guidance_rescale`` (Lin et al., 2023, §3.4): the guided prediction rescaled towards the
    #: conditional one's spread per frame, by this share (0: off; 0.7 in the paper), against over-exposure.
    guidance_rescale: float = number(0.0, low=0.0, high=1.0)
    #: Classifier-free guidance only in this part of the denoising steps run, as shares ``(start, end)`` of
    #: them (Kynkäänniemi et al., 2024, "Applying guidance in a limited interval"); the steps outside it take
    #: the conditional prediction alone (guidance 1), one branch, as the inversion did. ``(0, 1)``: every
    #: step, as the official code.
    guidance_interval: tuple[float, float] = number((0.0, 1.0), low=0.0, high=1.0, converter=as_tuple)
    #: How denoising keeps to the inversion: ``plain`` (the official code: DDIM inversion at guidance 1, then
    #: guided denoising, which drifts from it); ``direct`` (Ju et al., "PnP Inversion", ICLR 2024, in its
    #: variant that corrects the edit itself: each step is corrected by the drift that the same guided step
    #: makes from the inversion's own latent with the source prompt, so the source prompt as the target
    #: returns the clip exactly; one more pass over the steps); ``negative-prompt`` (Miyake et al., 2023:
    #: guidance away from the source prompt instead of the empty one; keeps the clip exactly, yet edits only
    #: as far as the two prompts' difference moves the model). On the shapes model both edit worse than
    #: ``plain`` (docs/shapes.md). ``direct`` and ``negative-prompt`` need ``source_prompt``.
    inversion: Literal["plain", "direct", "negative-prompt"] = field(
        default="plain", validator=validators.in_(("plain", "direct", "negative-prompt")))
    output: Path = field(default=Path("stmod-out"), converter=Path)
    overwrite: bool = False
    save_attention: bool = False
    base_dir: Path = field(default=Path("."), converter=Path)

    @prompt.validator
    def _check_prompt(self, attribute: attrs.Attribute, value: str) -> None:
        if not value.strip():
            raise ValueError("prompt (the global target prompt) must not be empty")

    @inversion.validator
    def _check_inversion_text(self, attribute: attrs.Attribute, value: str) -> None:
        if value != "plain" and not self.source_prompt.strip():
            raise ValueError(f"inversion {value!r} needs the source prompt, and source_prompt is empty; set "
                             "source_prompt to what the clip shows, or use inversion: plain")

    @skip_fraction.validator
    def _check_skip(self, attribute: attrs.Attribute, value: float) -> None:
        if self.skipped_steps >= self.steps:
            raise ValueError(f"skip_fraction {value} skips all {self.steps} denoising steps; use a value below 1")

    @property
    def skipped_steps(self) -> int:
        """Denoising steps ``skip_fraction`` skips: ``int(steps · skip_fraction)``, as the official code."""
        return int(self.steps * self.skip_fraction)

    @steps.validator
    def _check_window(self, attribute: attrs.Attribute, value: int) -> None:
        start = self.modulation.start_step
        if self.modulation.end_step is None and start > default_end_step(value):
            raise ValueError(f"modulation.start_step {start} lies after the default end_step "
                             f"{default_end_step(value)} ({MODULATED_FRACTION:.0%} of {value} steps); "
                             "set modulation.end_step")

    @guidance_interval.validator
    def _check_guidance_interval(self, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
        if len(value) != 2 or not value[0] < value[1]:
            raise ValueError(f"guidance_interval {list(value)!r} must be [start, end] with start < end, shares of "
                             "the denoising steps (for example [0, 0.5]: guidance in the first half)")

    def guided_steps(self, steps: int) -> range:
        """Of ``steps`` denoising steps run, those ``i`` that take classifier-free guidance
        (:attr:`guidance_interval`; none when :attr:`guidance` is 1)."""
        if self.guidance == 1.0:
            return range(0)
        start, end = self.guidance_interval
        return range(round(start * steps), round(end * steps))

    @property
    def modulation_window(self) -> tuple[int, int]:
        """``(start, end)``: the denoising steps ``start <= i < end`` that are modulated."""
        return self.modulation.window(self.steps)

    def region(self, name: str) -> Region:
        """The region called ``name``."""
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)


def _check_masks(instance: LayoutMasks, attribute: attrs.Attribute, value: torch.Tensor) -> None:
    import torch  # imported here so that reading a job (the CLI's --help, list, check) needs no torch

    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool or value.ndim != 4:
        raise ValueError("masks must be a bool tensor of shape (frames, regions, height, width)")


@frozen(kw_only=True)
class LayoutMasks:
    """Region masks for every frame: ``masks`` is bool ``(F, K, H, W)``; ``names[k]`` names region k.

    Masks may overlap and may leave pixels uncovered; what that means is up to the modulation preset.
    ``H, W`` is the pixel size of the edit (the same transform as the frames).
    """

    masks: torch.Tensor = field(eq=False, validator=_check_masks)
    names: tuple[str, ...] = field(converter=as_tuple)

    @names.validator
    def _check_names(self, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
        if len(value) != self.masks.shape[1]:
            raise ValueError(f"{len(value)} region names for {self.masks.shape[1]} masks")
        if len(set(value)) != len(value):
            raise ValueError(f"region names must be unique, got {list(value)}")
        for name in value:
            if not NAME_PATTERN.match(name):
                raise ValueError(f"region name {name!r} is not a valid name")

    @property
    def num_frames(self) -> int:
        return int(self.masks.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the masks."""
        return int(self.masks.shape[2]), int(self.masks.shape[3])

    def union(self) -> torch.Tensor:
        """Bool ``(F, H, W)``: pixels covered by at least one region."""
        return self.masks.any(dim=1)

    def select(self, names: tuple[str, ...] | list[str]) -> LayoutMasks:
        """The masks of ``names``, in that order (a missing name raises ``KeyError``)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise KeyError(f"no mask for region(s) {missing}; masks exist for {list(self.names)}")
        index = [self.names.index(n) for n in names]
        return LayoutMasks(masks=self.masks[:, index], names=tuple(names))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayoutMasks):
            return NotImplemented
        import torch

        return self.names == other.names and torch.equal(self.masks, other.masks)

    __hash__ = None  # type: ignore[assignment]


@frozen(kw_only=True)
class LayoutRequest:
    """What a layout provider (and a control annotator) gets for one edit.

    :ivar spec: the job.
    :ivar frame_indices: the source frame indices the job selected.
    :ivar source_size: ``(height, width)`` of the source frames before the transform.
    :ivar transform: maps a stack of source-sized masks ``uint8/bool (F, H_src, W_src)`` to the edit
        size exactly as the frames were mapped (nearest sampling).
    :ivar frames: the edit's frames, ``uint8 (F, H, W, 3)`` RGB.
    :ivar features: the inversion features a provider asked for with its ``feature_request``
        (:class:`~stmod.core.features.InversionFeatures`), else ``None``.
    """

    spec: EditSpec
    frame_indices: tuple[int, ...] = field(converter=as_tuple)
    source_size: tuple[int, int] = field(converter=as_tuple)
    transform: FrameTransform = field(eq=False)
    frames: np.ndarray = field(eq=False)
    features: InversionFeatures | None = field(default=None, eq=False)


@frozen(kw_only=True)
class LayoutReport:
    """What a layout provider found beyond its masks, for ``stmod-run layout`` (e.g. K-Means clusters).

    :ivar masks: bool ``(F, C, H, W)`` at the edit's pixel size, one mask per reported part.
    :ivar legend: one label per part (drawn on ``clusters.mp4``).
    :ivar table: JSON-ready rows, one per part (written to ``layout.json``).
    """

    masks: np.ndarray = field(eq=False)
    legend: tuple[str, ...] = field(converter=as_tuple)
    table: tuple[Mapping[str, object], ...] = field(converter=as_tuple)


@frozen(kw_only=True)
class ModulationInput:
    """What a modulator is told about one pass (its ``prepare`` input); it derives its own plan from it.

    :ivar masks: pixel masks, bool ``(F, K, H, W)``; ``None`` for a pass without regions (inversion).
    :ivar num_frames: F. ``latent_size``: ``(h, w)`` of the latents.
    :ivar regions: regions with their local prompts; each name has a mask.
    :ivar spans: per region, its token span in ``prompt`` (``None``: no text tokens), found once per job.
    :ivar config: the job's modulation settings (preset, window, strengths, temporal focus, ...), resolved
        for the job's step count (``end_step`` is set, :meth:`ModulationConfig.resolved`).
    :ivar prompt, negative_prompt: the job's global and negative prompts (for text conditioning).
    :ivar text_length: text positions per prompt the backbone's denoiser attends to (77 for CLIP; 512
        for Wan's umT5).
    """

    masks: LayoutMasks | None
    num_frames: int = field(validator=validators.ge(1))
    latent_size: tuple[int, int] = field(converter=as_tuple)
    regions: tuple[Region, ...] = field(default=(), converter=as_tuple)
    spans: tuple[TokenSpan | None, ...] = field(default=(), converter=as_tuple)
    config: ModulationConfig = field(factory=ModulationConfig)
    prompt: str = ""
    negative_prompt: str = ""
    text_length: int = field(default=77, validator=validators.ge(1))


@frozen(kw_only=True)
class ExtensionInput:
    """What an extension is told once per edit, after the backbone loads (its ``prepare`` input).

    :ivar spec: the job.
    :ivar frames: the clip as edited, ``uint8 (F, H, W, 3)``.
    :ivar latent_size: ``(h, w)`` of the latents; ``num_frames``: F.
    :ivar store: a folder of this extension's own under the inversion's cache entry (created and marked
        by the editor), for what it computes from the source clip or records during the inversion and
        reuses when the inversion comes from the cache; ``None`` when caching is off (keep it in memory).
    :ivar device, dtype: the backbone's.
    """

    spec: EditSpec
    frames: np.ndarray = field(eq=False)
    latent_size: tuple[int, int] = field(converter=as_tuple)
    num_frames: int = field(validator=validators.ge(1))
    store: Path | None = None
    device: torch.device = field(eq=False)
    dtype: torch.dtype = field(eq=False)


@frozen(kw_only=True)
class TextConditioning:
    """Per CFG branch, the text embeddings ``(1, 77, D)`` of the UNet and of the ControlNets."""

    unet: Mapping[Branch, torch.Tensor] = field(eq=False)
    control: Mapping[Branch, torch.Tensor] = field(eq=False)


@frozen(kw_only=True)
class BlendContext:
    """What a blender gets besides the latents, for one edit (the same object for every step).

    Declared like diffusers' ``_callback_tensor_inputs``: these fields and nothing else.

    :ivar mask: float ``(F, 1, h, w)`` in ``[0, 1]`` in the backbone's dtype and device; 1 where the
        edit may change the video (the union of the regions, at latent size).
    :ivar source_latents: the clean source latents ``x0``, ``(F, C, h, w)``.
    :ivar trajectory: ``{timestep: latents (F, C, h, w)}`` from DDIM inversion, including ``0: x0``.
    :ivar schedule: the backbone's schedule (``schedule.add_noise(x0, noise, timestep)``; a DDIM
        :class:`~stmod.core.sampling.NoiseSchedule` or a :class:`~stmod.core.sampling.FlowSchedule`).
    :ivar generator: a ``torch.Generator`` on the backbone's device, seeded with the job's seed.
    """

    mask: torch.Tensor = field(eq=False)
    source_latents: torch.Tensor = field(eq=False)
    trajectory: Mapping[int, torch.Tensor] = field(eq=False)
    schedule: Schedule = field(eq=False)
    generator: torch.Generator = field(eq=False)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """The scheduler's forward noising of ``x0`` to ``timestep``."""
        return self.schedule.add_noise(x0, noise, timestep)


@frozen
class Control:
    """One ControlNet condition of a model call: images ``(B, 3, H, W)`` in ``[0, 1]`` and a scale."""

    images: torch.Tensor = field(eq=False)
    scale: float
