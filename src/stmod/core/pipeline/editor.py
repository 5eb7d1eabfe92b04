"""The editor: one edit from a validated job to an output folder, phase by phase.

:class:`Editor` fixes the order of the phases (check, read, layout, control, load, encode, invert,
denoise, decode, write) and owns the loop bookkeeping: it hands step index, timestep and CFG
branches to the modulator explicitly. What each phase does lives beside it: building and checking
components (:mod:`.components`), layout composition (:mod:`.compose`), the cached inversion
(:mod:`.inversion`), run records (:mod:`.records`) and the output folder (:mod:`stmod.core.io.outputs`).

The layout is computed before any model loads, except when a layout provider has a
``feature_request`` (e.g. K-Means): then the inversion runs first, with the features recorded
(:mod:`stmod.core.features`), and the layout follows it. :meth:`Editor.layout`
computes the layout alone (``stmod-run layout``).

From Python, through ``stmod.Editor`` (its constructors need the plugin manager, above the core)::

    from stmod import Editor

    result = Editor.from_plugins().run("job.yaml")
    print(result)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from stmod.core.config import job_from_mapping, load_job
from stmod.core.devices import check_device
from stmod.core.errors import InputError, LayoutError, environment_errors
from stmod.core.features import FeatureRequest, feature_requests
from stmod.core.io.outputs import write_outputs
from stmod.core.io.video import SourceClip, load_video
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.components import Components, check_job, claim_output, output_note
from stmod.core.pipeline.compose import compose, empty_layout
from stmod.core.pipeline.inversion import Inversion, cached_inversion
from stmod.core.pipeline.progress import (CALLBACK_TENSOR_INPUTS, ProgressCallback, RunReporter,
                                          StepCallback)
from stmod.core.pipeline.records import PhaseTimer, versions
from stmod.core.pipeline.session import EditSession, latent_size, to_model_frames, to_uint8
from stmod.core.protocols import (AttentionLevels, Backbone, CompositesFrames, ConditionsText, RecordsAttention,
                                  VideoBackbone)
from stmod.core.registry import Registry
from stmod.core.sampling import Predict, Schedule, denoise, drift_corrections
from stmod.core.st_layout.labels import downsample_masks
from stmod.core.st_layout.recorders import AttentionRecorder
from stmod.core.tokens import find_token_spans
from stmod.core.types import (BlendContext, Branch, ComponentRef, EditSpec, LayoutMasks, LayoutRequest,
                              ModulationInput, TextConditioning)

__all__ = ["Editor", "EditResult", "JobLike", "LayoutResult", "Prepared", "ProgressCallback", "StepCallback"]

log = logging.getLogger(__name__)


@attrs.define(kw_only=True, repr=False)
class EditResult:
    """What an edit produced: the output folder, the frames, the layout and the run record.

    Printed, it is a one-line summary (folder, frames, regions, seconds), not its arrays."""

    output: Path
    source: np.ndarray
    frames: np.ndarray
    layout: LayoutMasks
    run: dict[str, Any]
    recorder: AttentionRecorder | None = None

    def __repr__(self) -> str:
        frames, height, width = self.frames.shape[:3]
        seconds = sum(float(value) for value in self.run.get("phases", {}).values())
        regions = ", ".join(self.layout.names) or "none"
        return (f"EditResult(output={str(self.output)!r}, frames={frames}, size={width}x{height}, "
                f"regions=[{regions}], seconds={seconds:.1f})")


@attrs.define(kw_only=True, repr=False)
class LayoutResult:
    """What :meth:`Editor.layout` produced: the clip, the layout, the components that made it, timings."""

    clip: SourceClip
    layout: LayoutMasks
    components: Components
    run: dict[str, Any]

    def __repr__(self) -> str:
        frames, regions, height, width = self.layout.masks.shape
        return f"LayoutResult(frames={frames}, size={width}x{height}, regions=[{', '.join(self.layout.names)}])"


@attrs.define(kw_only=True)
class Prepared:
    """What :meth:`Editor.prepare` validated and read: components, clip, layout request and layout parts.

    :ivar requests: the inversion features the layout needs (``()``: none; ``layout`` is then set).
    :ivar parts: ``{layout entry: (place, masks)}`` of the entries that need no model.
    """

    components: Components
    clip: SourceClip
    request: LayoutRequest
    requests: tuple[FeatureRequest, ...]
    parts: dict[int, tuple[str, LayoutMasks]]
    layout: LayoutMasks | None


def _check_feature_levels(spec: EditSpec, backbone: Backbone, requests: tuple[FeatureRequest, ...]) -> None:
    """A layout's UNet ``level`` must have attention layers; backbones that can tell say so before loading."""
    levels = backbone.attention_levels(spec.base_dir) if isinstance(backbone, AttentionLevels) and requests else None
    if levels is None:
        return
    for request in requests:
        if request.level not in levels:
            raise LayoutError(f"layout option level: {request.level} has no attention layer in backbone "
                              f"{spec.backbone.name!r} (levels with attention: {', '.join(map(str, levels))}); "
                              "choose one of those")


@attrs.define(kw_only=True)
class _Inverted:
    """The state after inversion: session, clean latents, schedule and timesteps, and the inversion."""

    session: EditSession
    x0: torch.Tensor
    schedule: Schedule
    timesteps: list[int]
    inversion: Inversion


#: A job as the editor takes it: an :class:`EditSpec`, a job file (any installed format) or a mapping (as the
#: YAML would read; relative paths from the working directory).
JobLike = EditSpec | str | Path | Mapping[str, Any]


class Editor:
    """Runs edits with components from ``registry``; ``stmod.Editor`` adds the constructors
    (``from_pretrained``, ``from_pipe``, ``from_plugins``) and is the one the Python API documents.

    :param registry: components to build jobs from.
    :param backbone: the model every job runs on (it replaces a job's ``backbone``); ``None``: each job's own.
    :param progress: show progress bars (on stderr).
    :param cache: where inversions are cached; ``None`` for the default cache, ``False`` to disable.
    :param on_progress: see :data:`~stmod.core.pipeline.progress.ProgressCallback`.
    """

    #: What a step callback may read and replace (diffusers' ``_callback_tensor_inputs``).
    _callback_tensor_inputs = list(CALLBACK_TENSOR_INPUTS)

    def __init__(self, registry: Registry, *, backbone: ComponentRef | None = None, progress: bool = True,
                 cache: InversionCache | None | bool = None, on_progress: ProgressCallback | None = None) -> None:
        self.registry = registry
        self.backbone = backbone
        self.progress = progress
        self.on_progress = on_progress
        self.cache = None if cache is False else (cache if isinstance(cache, InversionCache) else InversionCache())
        self._backbones: dict[str, Backbone] = {}  # loaded backbones, reused by later jobs with the same one
        #: Set to ``True`` (by a step callback, or another thread) to stop the running edit, as diffusers'
        #: ``pipe._interrupt``; each run starts with it cleared.
        self._interrupt = False

    @property
    def interrupt(self) -> bool:
        """Whether the running edit was asked to stop (diffusers' ``pipe.interrupt``)."""
        return self._interrupt

    def job(self, job: JobLike, overrides: Mapping[str, Any] | None = None, *, prompt_index: int | None = None,
            allow_unsupported: bool = False) -> EditSpec:
        """``job`` as an :class:`EditSpec` on this editor's model; a file is read in any installed format
        (``overrides``, ``prompt_index`` and ``allow_unsupported`` as for ``stmod-run``'s job flags)."""
        if isinstance(job, EditSpec):
            spec = job
        elif isinstance(job, Mapping):
            spec = job_from_mapping({**job, **(overrides or {})}, base_dir=Path.cwd(), source="Editor job")
        else:
            spec = load_job(Path(job), overrides, allow_unsupported=allow_unsupported, prompt_index=prompt_index,
                            formats=self.registry.job_formats.values())
        return spec if self.backbone is None else attrs.evolve(spec, backbone=self.backbone)

    def to(self, device: str | torch.device) -> Editor:
        """Run later jobs on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; refused at once when this machine
        has no such device); models loaded for another device load again. Returns the editor."""
        name = check_device(device, argument="device")
        if self.backbone is None:
            raise InputError("device", name, "this editor runs each job on the job's own backbone; set "
                                             "backbone.device in the job instead")
        self.backbone = attrs.evolve(self.backbone, options={**self.backbone.options, "device": name})
        self.registry.parse_options("backbone", self.backbone.name, dict(self.backbone.options), place="Editor.to")
        self._backbones.clear()
        return self

    def check(self, job: JobLike, *, overwrite: bool | None = None) -> Components:
        """What ``stmod-run check`` checks, without loading any model: the job, its files, prompts, the clip
        and every layout that needs no model (:meth:`prepare`). An output folder that a run would refuse
        (it exists, and ``overwrite`` is not set) is a warning here, as in ``stmod-run check``."""
        spec = self._with_overwrite(self.job(job), overwrite)
        prepared = self.prepare(spec, check_output=False)
        note = output_note(spec)
        if note is not None:
            log.warning("%s", note)
        return prepared.components

    def build(self, spec: EditSpec, *, check_output: bool = True) -> Components:
        """Validate ``spec`` and its files and build its components, without loading any model or reading
        the clip (the first part of :meth:`check`; ``check_output=False``: whatever is in the output folder)."""
        components = check_job(spec, self.registry, check_output=check_output)
        # A batch edits many clips with one model: keep a backbone (and its loaded weights) per setting.
        key = json.dumps([spec.backbone.name, dict(spec.backbone.options), str(spec.base_dir)], sort_keys=True,
                         default=str)
        backbone = self._backbones.setdefault(key, components.backbone)
        tokenizer = backbone.load_tokenizer(spec.base_dir)
        spans = None
        if tokenizer is not None:  # prompt problems are user errors: report them before any weights load
            spans = tuple(find_token_spans(tokenizer, spec.prompt, [r.prompt for r in spec.regions],
                                           missing=spec.modulation.missing_local_prompt))
            find_token_spans(tokenizer, spec.source_prompt, [])
            find_token_spans(tokenizer, spec.negative_prompt, [])
        return attrs.evolve(components, backbone=backbone, spans=spans)

    def prepare(self, spec: EditSpec, timer: PhaseTimer | None = None, *, check_output: bool = True) -> Prepared:
        """Everything an edit validates before any model weights load; ``stmod-run check`` runs exactly this.

        The job and its files (:func:`check_job`), prompts against the tokenizer, the clip read,
        every layout that needs no model computed (masks, boxes: so empty or overlapping masks
        under ``layout_overlap: error`` show here), and the UNet level of a layout that needs
        inversion features (K-Means) against the backbone's levels when it can tell them.
        """
        timer = timer or PhaseTimer()
        with timer.phase("check"):
            components = self.build(spec, check_output=check_output)
        with timer.phase("read"):
            clip = load_video(spec.video, components.clip)
        request = LayoutRequest(spec=spec, frame_indices=clip.indices, source_size=clip.source_size,
                                transform=clip.transform, frames=clip.frames)
        requests = feature_requests(provider for provider, _ in components.layouts)
        _check_feature_levels(spec, components.backbone, requests)
        # masks and boxes beside a K-Means entry are read now too (their errors are the job's), timed as checking
        with timer.phase("check" if requests else "layout"):
            parts = {i: (a.place, provider.layout(request, a.regions))
                     for i, (provider, a) in enumerate(components.layouts) if provider.feature_request is None}
            layout = None if requests else self._layout(spec, components, request, parts)
        return Prepared(components=components, clip=clip, request=request, requests=requests, parts=parts,
                        layout=layout)

    def __call__(self, job: JobLike, **kwargs: Any) -> EditResult:
        """``editor(job)`` is ``editor.run(job)`` (as a diffusers pipeline is called)."""
        return self.run(job, **kwargs)

    def run(self, job: JobLike, *, overwrite: bool | None = None, callback_on_step_end: StepCallback | None = None,
            callback_on_step_end_tensor_inputs: Sequence[str] | None = None) -> EditResult:
        """Edit the clip of ``job`` (see :meth:`job`) and write its output folder; returns what was produced.

        :param overwrite: replace an output folder stmod wrote before (``None``: the job's ``overwrite``).
        :param callback_on_step_end: diffusers' ``callback(editor, step, timestep, callback_kwargs) -> dict``,
            after every inversion and denoising step; ``callback_kwargs["phase"]`` says which. A returned
            ``"latents"`` replaces the step's latents; ``editor._interrupt = True`` stops the edit
            (:class:`~stmod.core.errors.EditCancelled`, nothing written).
        :param callback_on_step_end_tensor_inputs: the tensors the callback gets (default ``["latents"]``).

        The output folder is locked from the check to the end (a second run into it is refused).
        """
        spec = self._with_overwrite(self.job(job), overwrite)
        self._interrupt = False
        reporter = RunReporter(self, show_bars=self.progress, on_progress=self.on_progress,
                               callback=callback_on_step_end, tensor_inputs=callback_on_step_end_tensor_inputs)
        timer = PhaseTimer()
        prepared = self.prepare(spec, timer)
        with claim_output(spec):
            return self._run_claimed(spec, timer, prepared, reporter)

    @staticmethod
    def _with_overwrite(spec: EditSpec, overwrite: bool | None) -> EditSpec:
        return spec if overwrite is None else attrs.evolve(spec, overwrite=overwrite)

    def _run_claimed(self, spec: EditSpec, timer: PhaseTimer, prepared: Prepared, reporter: RunReporter) -> EditResult:
        components, clip, request, requests = prepared.components, prepared.clip, prepared.request, prepared.requests
        layout = prepared.layout  # None when a layout needs the inversion's features
        inverted = self._invert_clip(spec, components, clip, request, timer, requests, reporter)
        if layout is None:  # K-Means: clusters the inversion's attention features
            with timer.phase("layout"):
                layout = self._layout(spec, components, attrs.evolve(request, features=inverted.inversion.features),
                                      prepared.parts)
        backbone = inverted.session.backbone
        with timer.phase("denoise"):
            latents, recorder = self._denoise(inverted, layout)
        with timer.phase("decode"), reporter.phase(len(latents), "decoding", unit="frame") as bar:
            frames = to_uint8(backbone.decode(latents, progress=bar.update))
        frames = _composite(components.blender, clip.frames, frames, layout)
        run = {
            "versions": versions(),
            "seed": spec.seed,
            "device": str(backbone.device),
            "dtype": str(backbone.dtype).replace("torch.", ""),
            "frames": len(clip.indices),
            "source_frames": list(clip.indices),
            "size": [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
            "steps": spec.steps,
            "skipped_steps": spec.skipped_steps,
            "modulated_steps": list(range(*spec.modulation_window)),  # denoising step indices
            "inversion": inverted.inversion.cache_info,
            "attention": recorder.summary() if recorder is not None and recorder.grids else None,
        }
        with timer.phase("write"), environment_errors(spec.output):
            run = write_outputs(spec, clip=clip, frames=frames, layout=layout,
                                control_images=inverted.session.control_images, recorder=recorder, run=run,
                                timer=timer)
        log.info("wrote %s in %.1f s", spec.output, timer.total)
        return EditResult(output=spec.output, source=clip.frames, frames=frames, layout=layout, run=run,
                          recorder=recorder)

    def layout(self, spec: EditSpec) -> LayoutResult:
        """The layout of ``spec`` alone; writes nothing (``stmod-run layout`` writes it).

        No diffusion model runs unless a layout provider needs inversion features (K-Means): then the
        backbone loads and inverts the clip (through the inversion cache), but nothing is denoised.
        The job is checked as for :meth:`run`, including its output folder (where the command writes).
        """
        timer = PhaseTimer()
        prepared = self.prepare(spec, timer)
        components, clip, request, requests = prepared.components, prepared.clip, prepared.request, prepared.requests
        inversion, layout = None, prepared.layout
        if requests:
            reporter = RunReporter(self, show_bars=self.progress, on_progress=self.on_progress)
            inverted = self._invert_clip(spec, components, clip, request, timer, requests, reporter)
            request, inversion = (attrs.evolve(request, features=inverted.inversion.features),
                                  inverted.inversion.cache_info)
            with timer.phase("layout"):
                layout = self._layout(spec, components, request, prepared.parts)
        run = {"versions": versions(), "inversion": inversion,
               "phases": timer.snapshot()}
        assert layout is not None  # computed by prepare, or above from the inversion's features
        return LayoutResult(clip=clip, layout=layout, components=components, run=run)

    # -- phases ------------------------------------------------------------------------------------

    def _invert_clip(self, spec: EditSpec, components: Components, clip: SourceClip, request: LayoutRequest,
                     timer: PhaseTimer, requests: tuple[FeatureRequest, ...], reporter: RunReporter) -> _Inverted:
        """Control images, model load, encoding and the (cached) inversion, recording ``requests``."""
        with timer.phase("control"):
            control_images = [annotator.annotate(request) for annotator, _ in components.annotators]
        backbone = components.backbone
        locations = [backbone.controlnet_location(c.annotator.name, c.model) for _, c in components.annotators]
        with timer.phase("load"):
            backbone.load(controlnets=locations, base_dir=spec.base_dir)
        session = EditSession(spec, components, backbone, locations, control_images, clip, reporter)
        with timer.phase("encode"):
            x0 = backbone.encode(to_model_frames(clip.frames))
        schedule = backbone.noise_schedule()
        timesteps = schedule.timesteps(spec.steps)
        inversion = cached_inversion(session, x0, schedule, timesteps, cache=self.cache, timer=timer,
                                     requests=requests)
        return _Inverted(session=session, x0=x0, schedule=schedule, timesteps=timesteps, inversion=inversion)

    def _layout(self, spec: EditSpec, components: Components, request: LayoutRequest,
                done: dict[int, tuple[str, LayoutMasks]]) -> LayoutMasks:
        """The job's layout; ``done`` holds the parts :meth:`prepare` computed already (by entry)."""
        frames, height, width = request.frames.shape[:3]
        if not components.layouts:
            return empty_layout(frames, height, width)
        parts = [done[i] if i in done else (assignment.place, provider.layout(request, assignment.regions))
                 for i, (provider, assignment) in enumerate(components.layouts)]
        return compose(parts, spec.region_names, overlap=spec.layout_overlap, frame_indices=request.frame_indices)

    def _denoise(self, inverted: _Inverted, layout: LayoutMasks) -> tuple[torch.Tensor, AttentionRecorder | None]:
        session, x0, schedule, timesteps = inverted.session, inverted.x0, inverted.schedule, inverted.timesteps
        spec, backbone, modulator = session.spec, session.backbone, session.components.modulator
        trajectory = inverted.inversion.trajectory
        # skip_fraction (the official blending_percentage): the first steps are skipped, yet the rest starts
        # from the fully inverted latent, as the official loop does; step indices count the steps run
        run = timesteps[spec.skipped_steps:]
        corrections = _direct_corrections(session, trajectory, schedule, run) if spec.inversion == "direct" else None
        request = _modulation_input(session, layout, len(x0), latent_size(x0))
        modulator.prepare(request)
        recorder = modulator.start_recording() if spec.save_attention and isinstance(modulator, RecordsAttention) else None
        text = _texts(modulator, request, backbone)
        if spec.inversion == "negative-prompt" and spec.guided_steps(len(run)):
            text = _source_as_negative(text, backbone.encode_text([spec.source_prompt]))
        predict = _guided(session, text, len(x0), spec.guided_steps(len(run)))
        context = _blend_context(session, layout, x0, trajectory, schedule)

        def blend(x: torch.Tensor, i: int, t: int, nxt: int) -> torch.Tensor:
            return session.components.blender.blend(x, step_index=i, timestep=t, next_timestep=nxt, context=context)

        with session.reporter.phase(len(run), "denoising") as bar, session.installed():
            latents = denoise(trajectory[timesteps[0]], predict, schedule, run, blend=blend, corrections=corrections,
                              on_step_end=bar.step_end)
        return latents, recorder


def _guided(session: EditSession, text: TextConditioning, frames: int, guided: range) -> Predict:
    """The denoising prediction: classifier-free guidance at the step indices in ``guided`` (both branches in
    one batch), the conditional branch alone at the others; the modulator's call arguments and the extensions'
    step for each call are told which branches run."""
    backbone, modulator, guidance = session.backbone, session.components.modulator, session.spec.guidance
    rescale = session.spec.guidance_rescale
    if rescale:
        # diffusers' own, as its pipelines apply ``guidance_rescale``; imported here: the core imports no diffusers
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
    both: tuple[Branch, ...] = ("uncond", "cond")
    cond_only: tuple[Branch, ...] = ("cond",)
    texts = {cond_only: _batch_text(text, frames, cond_only)}
    if guided:  # a job at guidance 1 (or an interval of no step) has no unconditional text to batch
        texts[both] = _batch_text(text, frames, both)

    def predict(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
        branches = both if i in guided else cond_only
        unet_text, control_text = texts[branches]
        kwargs = modulator.call_kwargs(phase="denoise", step_index=i, timestep=t, branches=branches)
        session.step(phase="denoise", step_index=i, timestep=t, branches=branches)
        eps = backbone.predict_noise(torch.cat([x] * len(branches)), t, unet_text,
                                     controls=session.controls(len(branches)), control_text=control_text,
                                     cross_attention_kwargs=kwargs)
        if len(branches) == 1:
            return eps
        uncond, cond = eps.chunk(2)
        out = uncond + guidance * (cond - uncond)
        return rescale_noise_cfg(out, cond, guidance_rescale=rescale) if rescale else out

    return predict


def _direct_corrections(session: EditSession, trajectory: Mapping[int, torch.Tensor], schedule: Schedule,
                        run: list[int]) -> list[torch.Tensor]:
    """Direct inversion's per-step corrections (:func:`~stmod.core.sampling.drift_corrections`): the source
    prompt denoised from the inversion's own latents with the edit's guidance, ControlNets and extensions,
    the modulator installed without regions, as in the inversion."""
    spec, backbone, modulator = session.spec, session.backbone, session.components.modulator
    x0 = trajectory[0]
    video: dict[str, Any] = {"text_length": backbone.text_length} if isinstance(backbone, VideoBackbone) else {}
    source = ModulationInput(masks=None, num_frames=len(x0), latent_size=latent_size(x0),
                             config=spec.modulation.resolved(spec.steps), prompt=spec.source_prompt,
                             negative_prompt=spec.negative_prompt, **video)
    modulator.prepare(source)
    predict = _guided(session, _texts(modulator, source, backbone), len(x0), spec.guided_steps(len(run)))
    with session.reporter.phase(len(run), "direct inversion") as bar, session.installed():
        return drift_corrections(trajectory, predict, schedule, run, on_step=lambda i: bar.update())


def _latent_layout(backbone: Backbone, layout: LayoutMasks) -> LayoutMasks:
    """The layout per latent frame: the layout itself, or a video backbone's time-compressed masks."""
    return backbone.latent_masks(layout) if isinstance(backbone, VideoBackbone) else layout


def _modulation_input(session: EditSession, layout: LayoutMasks, frames: int,
                      latent_size: tuple[int, int]) -> ModulationInput:
    """What the modulator is told for denoising; token spans come from :meth:`Editor.check` when it had a
    tokenizer, else from the loaded one; a backbone without text tokens gives regions none."""
    spec, backbone, spans = session.spec, session.backbone, session.components.spans
    layout = _latent_layout(backbone, layout)
    if spans is None:
        spans = ((None,) * len(spec.regions) if backbone.tokenizer is None else
                 tuple(find_token_spans(backbone.tokenizer, spec.prompt, [r.prompt for r in spec.regions],
                                        missing=spec.modulation.missing_local_prompt)))
    return ModulationInput(masks=layout, num_frames=frames, latent_size=latent_size, regions=spec.regions,
                           spans=spans, config=spec.modulation.resolved(spec.steps), prompt=spec.prompt,
                           negative_prompt=spec.negative_prompt,
                           **({"text_length": backbone.text_length} if isinstance(backbone, VideoBackbone) else {}))


def _texts(modulator: object, request: ModulationInput, backbone: Backbone) -> TextConditioning:
    """The modulator's text conditioning, or standard CFG text (negative / global prompt) without one."""
    if isinstance(modulator, ConditionsText):
        return modulator.text_conditioning(request, backbone.encode_text)
    negative, prompt = backbone.encode_text([request.negative_prompt, request.prompt]).chunk(2)
    by_branch: dict[Branch, torch.Tensor] = {"uncond": negative, "cond": prompt}
    return TextConditioning(unet=by_branch, control=by_branch)


def _source_as_negative(text: TextConditioning, source: torch.Tensor) -> TextConditioning:
    """Negative-prompt inversion: both models' unconditional branch gets the source prompt's embedding.

    The inversion ran with the source prompt at guidance 1, so where the target prompt's embedding does
    not change a prediction, ``uncond + g·(cond − uncond)`` stays the one the inversion followed; the
    ControlNet's branch changes too, or its residuals would differ between the halves for no reason."""
    return TextConditioning(unet={**text.unet, "uncond": source}, control={**text.control, "uncond": source})


def _batch_text(text: TextConditioning, frames: int, branches: tuple[Branch, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet and ControlNet text for the batch ``[branch × frames]``."""
    unet = torch.cat([text.unet[b].repeat(frames, 1, 1) for b in branches])
    control = torch.cat([text.control[b].repeat(frames, 1, 1) for b in branches])
    return unet, control


def _composite(blender: object, source: np.ndarray, frames: np.ndarray, layout: LayoutMasks) -> np.ndarray:
    """The decoded ``frames`` with the source's pixels outside the regions, when the blender can do it and
    the edit has regions (a global edit, with none, changes the whole frame)."""
    if not isinstance(blender, CompositesFrames) or layout.masks.shape[1] == 0:
        return frames
    out = blender.composite(source, frames, layout.union().cpu().numpy())
    if out.shape != frames.shape or out.dtype != np.uint8:
        raise TypeError(f"{type(blender).__name__}.composite returned {out.dtype} {tuple(out.shape)}; "
                        f"uint8 {tuple(frames.shape)} was expected")
    return out


def _blend_context(session: EditSession, layout: LayoutMasks, x0: torch.Tensor,
                   trajectory: dict[int, torch.Tensor], schedule: Schedule) -> BlendContext:
    spec, backbone = session.spec, session.backbone
    layout = _latent_layout(backbone, layout)
    if layout.names:
        mask = downsample_masks(layout.union()[:, None], latent_size(x0), spec.modulation.mask_downsample)
    else:  # a global edit edits the whole frame: a blend has no source latent to keep
        mask = torch.ones((len(x0), 1, *x0.shape[-2:]), dtype=torch.bool)
    return BlendContext(mask=mask.to(backbone.device, backbone.dtype), source_latents=x0, trajectory=trajectory,
                        schedule=schedule, generator=torch.Generator(device=backbone.device).manual_seed(spec.seed))
