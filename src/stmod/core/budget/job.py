"""What the estimator needs to know about a job and its models, as plain values.

:class:`ModelFootprint` is what a backbone tells about its models without loading them (see
:class:`stmod.core.protocols.DescribesFootprint`); :class:`JobShape` is the job's work (frames, grid,
steps, attention focus, modulation, ControlNets), read from an :class:`~stmod.core.types.EditSpec`
by :func:`job_shape`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Required, TypedDict, Unpack, cast

import attrs
from attrs import frozen

from stmod.core.budget.formulas import Focus
from stmod.core.budget.sizes import Component, read_component
from stmod.core.st_layout.windows import temporal_windows

if TYPE_CHECKING:
    from stmod.core.types import EditSpec, ModulationConfig

__all__ = ["ModelFootprint", "JobShape", "focus_of", "job_shape", "read_footprint"]

#: The ``st-layout`` modulator's default working-memory budget of one modulated attention call.
DEFAULT_BUDGET_MB = 256.0


@frozen(kw_only=True)
class ModelFootprint:
    """The models a job loads and how they run, read without loading weights.

    A component that cannot be read is ``None`` (its parts are "unknown" in the estimate).
    ``vae_tile`` is the VAE's tile size in pixels (diffusers tiles frames larger than its
    ``sample_size``); ``kernel`` is the modulated self-attention kernel on this device.
    """

    device: Literal["cpu", "cuda"]
    dtype_bytes: int
    unet: Component | None
    vae: Component | None
    text_encoder: Component | None
    controlnets: tuple[Component | None, ...] = ()
    vae_batch: int = 8
    vae_tiling: bool = False
    vae_tile: int = 512
    cpu_offload: bool = False
    kernel: Literal["two-pass", "triton"] = "two-pass"
    #: What the denoiser is called in the estimate's parts (``"unet"``; a DiT backbone: ``"transformer"``).
    denoiser: str = "unet"
    #: Clip frames per latent frame after the first (a causal video VAE: Wan's 4; 1: one latent per frame).
    time_ratio: int = 1
    #: Bytes per VAE weight when the VAE runs in its own dtype (Wan's runs in float32); ``None``: ``dtype_bytes``.
    vae_dtype_bytes: int | None = None


class FootprintSettings(TypedDict, total=False):
    """The :class:`ModelFootprint` fields that :func:`read_footprint` does not read from the folders."""

    device: Required[Literal["cpu", "cuda"]]
    dtype_bytes: Required[int]
    vae_batch: int
    vae_tiling: bool
    vae_tile: int
    cpu_offload: bool
    kernel: Literal["two-pass", "triton"]


def read_footprint(folder: Path, controlnets: tuple[Path, ...] = (), **how: Unpack[FootprintSettings]
                   ) -> ModelFootprint:
    """The footprint of a diffusers model folder (``unet/``, ``vae/``, ``text_encoder/``) and ControlNet
    folders; ``how`` sets the other :class:`ModelFootprint` fields (device, dtype_bytes, ...)."""
    vae = read_component(folder / "vae")
    tile = int(vae.config.get("sample_size", 512)) if vae is not None else 512
    how.setdefault("vae_tile", tile if isinstance(tile, int) else 512)
    return ModelFootprint(unet=read_component(folder / "unet"), vae=vae,
                          text_encoder=read_component(folder / "text_encoder"),
                          controlnets=tuple(read_component(Path(c)) for c in controlnets), **how)


@frozen(kw_only=True)
class JobShape:
    """The work of one edit: frames, pixel size, steps, CFG branches, attention focus, modulation."""

    frames: int
    height: int
    width: int
    steps: int
    branches: int = 2
    #: Denoising steps that run every branch (``guidance_interval``); the others run the conditional one alone.
    #: ``None``: every step.
    guided_steps: int | None = None
    focus: Focus = Focus(key_frames=1.0)
    #: Denoising steps with modulated self-attention (the cond branch uses the modulated kernel).
    modulated_steps: int = 0
    #: Region codes of the modulated kernel's widened inputs (regions + background).
    codes: int = 2
    budget_bytes: int = int(DEFAULT_BUDGET_MB * 2**20)
    #: Text prompts encoded (negative, global, one per local prompt).
    prompts: int = 2
    #: Direct inversion: one more guided pass over the steps (the source prompt, no modulation).
    direct_inversion: bool = False
    #: Clip frames per latent frame after the first (:attr:`ModelFootprint.time_ratio`); ``focus`` is over
    #: latent frames, the frames the model attends across.
    time_ratio: int = 1

    @property
    def mean_branches(self) -> float:
        """The branches a denoising step runs, on average over the steps (the time; memory takes the peak,
        :attr:`branches`)."""
        if self.guided_steps is None or self.branches == 1 or not self.steps:
            return float(self.branches)
        return (self.guided_steps * self.branches + (self.steps - self.guided_steps)) / self.steps

    @property
    def latent_frames(self) -> int:
        """``1 + (F − 1)/r`` latent frames (``F`` when one latent per frame)."""
        return self.frames if self.time_ratio == 1 else 1 + -(-max(0, self.frames - 1) // self.time_ratio)

    def with_frames(self, frames: int, modulation: ModulationConfig) -> JobShape:
        changed = attrs.evolve(self, frames=frames)
        return attrs.evolve(changed, focus=focus_of(modulation, changed.latent_frames))


def focus_of(modulation: ModulationConfig, frames: int) -> Focus:
    """The :class:`~stmod.core.budget.formulas.Focus` of ``modulation.temporal`` over ``frames`` frames."""
    temporal = modulation.temporal
    if temporal == "per-frame":
        return Focus(key_frames=1.0)
    if temporal == "sparse-causal":
        return Focus(key_frames=2.0 if frames > 1 else 1.0)
    if temporal == "full":
        return Focus(key_frames=float(frames), joined=True)
    windows = temporal_windows(frames, modulation.window_frames, modulation.window_overlap, modulation.anchor_frames)
    if len(windows) == 1:
        return Focus(key_frames=float(frames), joined=True)
    pairs = sum(len(q) * len(k) for q, k in windows)
    largest = max(windows, key=lambda w: len(w[0]) + 2 * len(w[1]))
    return Focus(key_frames=pairs / frames, joined=True, query_share=len(largest[0]) / frames,
                 key_share=len(largest[1]) / frames)


def job_shape(spec: EditSpec, frames: int | None = None, *, time_ratio: int = 1) -> JobShape:
    """The :class:`JobShape` of ``spec``; ``frames``: the count the clip gives (default ``video.frames``, else 1);
    ``time_ratio``: the backbone's (:attr:`ModelFootprint.time_ratio`)."""
    width, height = spec.video.size
    frames = int(frames or spec.video.frames or 1)
    config = spec.modulation
    start, end = config.window(spec.steps)  # an unset end_step follows the step count
    active = max(0, end - start) if config.modulate_self else 0
    budget = spec.modulator.options.get("budget_mb", DEFAULT_BUDGET_MB) if spec.modulator else DEFAULT_BUDGET_MB
    shape = JobShape(frames=frames, height=height, width=width, steps=spec.steps, time_ratio=time_ratio)
    guided = len(spec.guided_steps(spec.steps - spec.skipped_steps))
    return attrs.evolve(shape, branches=2 if guided else 1, guided_steps=guided, focus=focus_of(config, shape.latent_frames),
                        modulated_steps=active, codes=len(spec.regions) + 1,
                        # budget: a raw job option (object); float() rejects what is not a number
                        budget_bytes=int(float(cast(float, budget)) * 2**20), prompts=2 + len(spec.regions),
                        direct_inversion=spec.inversion == "direct")
