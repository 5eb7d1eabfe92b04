"""The orchestrator: one edit from a validated job to an output folder.

:class:`Editor` composes the job's components (backbone, layout providers, annotators, modulator,
blender) and owns the loop bookkeeping: it hands step index, timestep and CFG branches to the
attention processors explicitly, caches DDIM inversions, times every phase and writes the outputs.

The layout is computed before any model loads, except when a layout provider needs inversion
features (``needs_inversion_features``, e.g. K-Means): then the inversion runs first, with the
features recorded (:mod:`stmod.core.features`), and the layout follows it. :meth:`Editor.layout`
computes the layout alone (``stmod-run layout``).

From Python::

    from stmod.core.orchestrator import Editor
    from stmod.core.config import load_job

    result = Editor.from_plugins().run(load_job("job.yaml"))
    print(result.output, result.run["phases"])
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from tqdm.auto import tqdm

from stmod.core.engine import ModulationPlan
from stmod.core.features import (FeatureRequest, InversionFeatureRecorder, InversionFeatures, feature_requests,
                                 word_positions)
from stmod.core.modulation import downsample_masks
from stmod.core.outputs import write_outputs
from stmod.core.runinfo import InversionCache, PhaseTimer, versions
from stmod.core.sampling import NoiseSchedule, denoise, invert
from stmod.core.tokens import composite_text_embedding, find_token_spans
from stmod.core.types import Control, EditSpec, LayoutMasks, LayoutRequest
from stmod.core.validate import Components, check_job
from stmod.core.video import SourceClip, load_video
from stmod.layouts.compose import compose, empty_layout
from stmod.plugins.registry import Registry

__all__ = ["Editor", "EditResult", "LayoutResult"]

log = logging.getLogger(__name__)


@attrs.define(kw_only=True)
class EditResult:
    """What an edit produced: the output folder, the frames, the layout and the run record."""

    output: Path
    source: np.ndarray
    frames: np.ndarray
    layout: LayoutMasks
    run: dict[str, Any]
    recorder: Any = None


@attrs.define(kw_only=True)
class LayoutResult:
    """What :meth:`Editor.layout` produced: the clip, the layout, the components that made it, timings."""

    clip: SourceClip
    layout: LayoutMasks
    components: Components
    run: dict[str, Any]


@attrs.define(kw_only=True)
class _Inverted:
    """The state after inversion: session, clean latents, schedule, trajectory and recorded features."""

    session: _Session
    x0: torch.Tensor
    schedule: NoiseSchedule
    timesteps: list[int]
    trajectory: dict[int, torch.Tensor]
    cache_info: dict[str, Any]
    features: InversionFeatures | None


class Editor:
    """Runs edits with components from ``registry``.

    :param registry: components to build jobs from (``Editor.from_plugins()`` loads the installed ones).
    :param progress: show progress bars (on stderr).
    :param cache: where inversions are cached; ``None`` for the default cache, ``False`` to disable.
    """

    def __init__(self, registry: Registry, *, progress: bool = True, cache: InversionCache | None | bool = None):
        self.registry = registry
        self.progress = progress
        self.cache = None if cache is False else (cache if isinstance(cache, InversionCache) else InversionCache())
        self._backbones: dict[str, Any] = {}  # loaded backbones, reused by later jobs with the same one

    @classmethod
    def from_plugins(cls, plugin_args: Sequence[str] = (), **kwargs: Any) -> Editor:
        """An editor over the installed plugins (selection like ``stmod-run -p``)."""
        from stmod.plugins.manager import make_plugin_manager

        return cls(make_plugin_manager(plugin_args=plugin_args).registry, **kwargs)

    def check(self, spec: EditSpec) -> Components:
        """Validate ``spec`` and its files and build its components, without loading any model."""
        components = check_job(spec, self.registry)
        # A batch edits many clips with one model: keep a backbone (and its loaded weights) per setting.
        key = json.dumps([spec.backbone.name, dict(spec.backbone.options), str(spec.base_dir)], sort_keys=True,
                         default=str)
        components.backbone = self._backbones.setdefault(key, components.backbone)
        tokenizer = components.backbone.load_tokenizer(spec.base_dir)
        if tokenizer is not None:  # prompt problems are user errors: report them before any weights load
            find_token_spans(tokenizer, spec.prompt, [r.prompt for r in spec.regions])
            find_token_spans(tokenizer, spec.source_prompt, [])
            find_token_spans(tokenizer, spec.negative_prompt, [])
        return components

    def _bar(self, total: int, desc: str, unit: str = "step") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, leave=False)

    def _prepare(self, spec: EditSpec, timer: PhaseTimer) -> tuple[Components, SourceClip, LayoutRequest, Any]:
        """Check the job, read its frames, and say which inversion features its layout needs."""
        with timer.phase("check"):
            components = self.check(spec)
        with timer.phase("read"):
            clip = load_video(spec.video)
        request = LayoutRequest(spec=spec, frame_indices=clip.indices, source_size=clip.source_size,
                                transform=clip.transform, frames=clip.frames)
        return components, clip, request, feature_requests(provider for provider, _ in components.layouts)

    def run(self, spec: EditSpec) -> EditResult:
        """Edit the clip of ``spec`` and write its output folder; returns what was produced."""
        timer = PhaseTimer()
        components, clip, request, requests = self._prepare(spec, timer)
        layout = None
        if not requests:  # masks or boxes: known before any model loads
            with timer.phase("layout"):
                layout = self._layout(spec, components, request)
        inverted = self._invert_clip(spec, components, clip, request, timer, requests)
        if layout is None:  # K-Means: clusters the inversion's attention features
            with timer.phase("layout"):
                layout = self._layout(spec, components, attrs.evolve(request, features=inverted.features))
        session, x0, trajectory = inverted.session, inverted.x0, inverted.trajectory
        schedule, timesteps, cache_info = inverted.schedule, inverted.timesteps, inverted.cache_info
        backbone, control_images = session.backbone, session.control_images
        with timer.phase("denoise"):
            latents, recorder = self._denoise(session, layout, x0, trajectory, schedule, timesteps)
        with timer.phase("decode"), self._bar(len(latents), "decoding", unit="frame") as bar:
            frames = _to_uint8(backbone.decode(latents, progress=bar.update))
        run = {
            "versions": versions(),
            "seed": spec.seed,
            "device": str(backbone.device),
            "dtype": str(backbone.dtype).replace("torch.", ""),
            "frames": len(clip.indices),
            "source_frames": list(clip.indices),
            "size": [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
            "steps": spec.steps,
            "inversion": cache_info,
            "attention": recorder.summary() if recorder is not None and recorder.grids else None,
        }
        with timer.phase("write"):
            run = write_outputs(spec, clip=clip, frames=frames, layout=layout, control_images=control_images,
                                recorder=recorder, run=run, timer=timer)
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
        components, clip, request, requests = self._prepare(spec, timer)
        inversion = None
        if requests:
            inverted = self._invert_clip(spec, components, clip, request, timer, requests)
            request, inversion = attrs.evolve(request, features=inverted.features), inverted.cache_info
        with timer.phase("layout"):
            layout = self._layout(spec, components, request)
        run = {"versions": versions(), "inversion": inversion,
               "phases": timer.snapshot()}
        return LayoutResult(clip=clip, layout=layout, components=components, run=run)

    # -- phases ------------------------------------------------------------------------------------

    def _invert_clip(self, spec: EditSpec, components: Components, clip: SourceClip, request: LayoutRequest,
                     timer: PhaseTimer, requests: tuple[FeatureRequest, ...]) -> _Inverted:
        """Control images, model load, encoding and the (cached) inversion, recording ``requests``."""
        with timer.phase("control"):
            control_images = [annotator.annotate(request) for annotator, _ in components.annotators]
        backbone = components.backbone
        locations = [backbone.controlnet_location(c.annotator.name, c.model) for _, c in components.annotators]
        with timer.phase("load"):
            backbone.load(controlnets=locations, base_dir=spec.base_dir)
        session = _Session(spec, components, backbone, locations, control_images, clip)
        with timer.phase("encode"):
            x0 = backbone.encode(_to_model_frames(clip.frames))
        schedule = backbone.noise_schedule()
        timesteps = schedule.timesteps(spec.steps)
        trajectory, cache_info, features = self._inversion(session, x0, schedule, timesteps, timer, requests)
        return _Inverted(session=session, x0=x0, schedule=schedule, timesteps=timesteps, trajectory=trajectory,
                         cache_info=cache_info, features=features)

    def _layout(self, spec: EditSpec, components: Components, request: LayoutRequest) -> LayoutMasks:
        frames, height, width = request.frames.shape[:3]
        if not components.layouts:
            return empty_layout(frames, height, width)
        parts = [(assignment.place, provider.layout(request, assignment.regions))
                 for provider, assignment in components.layouts]
        return compose(parts, spec.region_names, overlap=spec.layout_overlap, frame_indices=request.frame_indices)

    def _inversion(self, session: _Session, x0: torch.Tensor, schedule: NoiseSchedule, timesteps: list[int],
                   timer: PhaseTimer, requests: tuple[FeatureRequest, ...] = ()
                   ) -> tuple[dict[int, torch.Tensor], dict[str, Any], InversionFeatures | None]:
        """The DDIM trajectory (from the cache when possible) and, for ``requests``, the attention features.

        Cache: with feature ``requests`` the key also covers them, and the entry stores the features
        beside the trajectory, so re-clustering (another ``clusters`` count) reuses both; an entry
        without features is never taken for such a job, so feature recording is never skipped.
        """
        spec, backbone = session.spec, session.backbone
        settings = {
            "backbone": spec.backbone.name, "model": backbone.model_id, "dtype": str(backbone.dtype),
            "steps": spec.steps, "timesteps": timesteps, "source_prompt": spec.source_prompt,
            "control": [[c.annotator.name, dict(c.annotator.options), loc, c.scale]
                        for (_, c), loc in zip(session.components.annotators, session.locations)],
            "temporal": spec.modulation.temporal,
        }
        if requests:
            settings["features"] = [r.as_list() for r in requests]
        key = InversionCache.key(frames_digest=InversionCache.digest(session.clip.frames), settings=settings)
        entry = self.cache.load_entry(key) if self.cache is not None else None
        if entry is not None and (not requests or entry[1] is not None):
            log.info("inversion loaded from cache (%s)", key)
            trajectory = {t: z.to(backbone.device, backbone.dtype) for t, z in entry[0].items()}
            return trajectory, {"cached": True, "key": key}, self._features(spec, backbone, entry[1], requests)
        recorder = (InversionFeatureRecorder(requests, num_frames=len(x0), latent_size=tuple(x0.shape[-2:]))
                    if requests else None)
        with timer.phase("invert"):
            text = backbone.encode_text([spec.source_prompt]).repeat(len(x0), 1, 1)
            modulator = session.components.modulator
            modulator.prepare(ModulationPlan(masks=None, num_frames=len(x0), latent_size=tuple(x0.shape[-2:]),
                                             config=spec.modulation))

            def predict(x: torch.Tensor, t: int, k: int) -> torch.Tensor:
                kwargs = modulator.call_kwargs(phase="invert", step_index=k, timestep=t, branches=("cond",))
                return backbone.predict_noise(x, t, text, controls=session.controls(1), cross_attention_kwargs=kwargs)

            recording = modulator.record_features(recorder) if recorder is not None else contextlib.nullcontext()
            with self._bar(len(timesteps), "inversion") as bar, session.installed(), recording:
                trajectory = invert(x0, predict, schedule, timesteps, on_step=lambda _: bar.update())
        state = recorder.result().to_state() if recorder is not None else None
        if self.cache is not None:
            self.cache.save(key, trajectory, features=state)
        return trajectory, {"cached": False, "key": key}, self._features(spec, backbone, state, requests)

    @staticmethod
    def _features(spec: EditSpec, backbone: Any, state: dict[str, Any] | None,
                  requests: tuple[FeatureRequest, ...]) -> InversionFeatures | None:
        if not requests or state is None:
            return None
        words = word_positions(getattr(backbone, "tokenizer", None), spec.source_prompt)
        return InversionFeatures.from_state(state, words=words, prompt=spec.source_prompt)

    def _denoise(self, session: _Session, layout: LayoutMasks, x0: torch.Tensor, trajectory: dict[int, torch.Tensor],
                 schedule: NoiseSchedule, timesteps: list[int]) -> tuple[torch.Tensor, Any]:
        spec, backbone, modulator = session.spec, session.backbone, session.components.modulator
        frames, latent_size = len(x0), tuple(x0.shape[-2:])
        branches = ("uncond", "cond") if spec.guidance != 1.0 else ("cond",)
        if backbone.tokenizer is None:  # a backbone without text tokens: regions modulate self-attention only
            plan = ModulationPlan(masks=layout, num_frames=frames, latent_size=latent_size, regions=spec.regions,
                                  spans=(None,) * len(spec.regions), config=spec.modulation, timesteps=timesteps)
        else:
            plan = ModulationPlan.from_prompts(masks=layout, regions=spec.regions, prompt=spec.prompt,
                                               tokenizer=backbone.tokenizer, latent_size=latent_size,
                                               config=spec.modulation, timesteps=timesteps)
        modulator.prepare(plan)
        recorder = modulator.start_recording() if spec.save_attention and hasattr(modulator, "start_recording") else None
        unet_text, control_text = self._texts(spec, backbone, plan, frames, branches)
        guidance = spec.guidance

        def predict(x: torch.Tensor, t: int, i: int) -> torch.Tensor:
            kwargs = modulator.call_kwargs(phase="denoise", step_index=i, timestep=t, branches=branches)
            eps = backbone.predict_noise(torch.cat([x] * len(branches)), t, unet_text,
                                         controls=session.controls(len(branches)), control_text=control_text,
                                         cross_attention_kwargs=kwargs)
            if len(branches) == 1:
                return eps
            uncond, cond = eps.chunk(2)
            return uncond + guidance * (cond - uncond)

        mask = downsample_masks(layout.union()[:, None], latent_size, spec.modulation.mask_downsample).to(backbone.device, backbone.dtype)
        generator = torch.Generator(device=backbone.device).manual_seed(spec.seed)
        context = {"mask": mask, "source_latents": x0, "trajectory": trajectory, "add_noise": schedule.add_noise,
                   "generator": generator}

        def blend(x: torch.Tensor, i: int, t: int, nxt: int) -> torch.Tensor:
            return session.components.blender.blend(x, step_index=i, timestep=t, next_timestep=nxt, context=context)

        with self._bar(len(timesteps), "denoising") as bar, session.installed():
            latents = denoise(trajectory[timesteps[0]], predict, schedule, timesteps, blend=blend,
                              on_step=lambda _: bar.update())
        return latents, recorder

    @staticmethod
    def _texts(spec: EditSpec, backbone: Any, plan: ModulationPlan, frames: int,
               branches: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """UNet and ControlNet text for the batch ``[branch × frames]``, as the preset's rules say.

        ``videograin`` reproduces the official code: the UNet's unconditional branch is the empty
        prompt and its conditional branch the composite embedding; the negative prompt reaches only
        the ControlNet. ``paper``: the negative prompt and the plain global prompt for both models.
        """
        rules = plan.rules
        negative, prompt = backbone.encode_text([spec.negative_prompt, spec.prompt]).chunk(2)
        uncond = backbone.encode_text([""]) if rules.uncond_text == "empty" else negative
        cond = prompt
        if rules.composite_text:
            locals_ = [backbone.encode_text([r.prompt]) if span is not None else None
                       for r, span in zip(plan.regions, plan.spans)]
            cond = composite_text_embedding(prompt, locals_, plan.spans)
        by_branch = {"uncond": (uncond, negative), "cond": (cond, prompt)}
        unet = torch.cat([by_branch[b][0].repeat(frames, 1, 1) for b in branches])
        control = torch.cat([by_branch[b][1].repeat(frames, 1, 1) for b in branches])
        return unet, control


@attrs.define
class _Session:
    """Per-edit state shared by the phases: components, loaded ControlNets and their images."""

    spec: EditSpec
    components: Components
    backbone: Any
    locations: list[str]
    control_images: list[np.ndarray]
    clip: SourceClip
    _tensors: dict[int, list[Any]] = attrs.field(factory=dict)

    def controls(self, repeat: int) -> list[tuple[str, Any]]:
        """``(ControlNet location, Control)`` pairs with images repeated for ``repeat`` CFG branches."""
        if repeat not in self._tensors:
            self._tensors[repeat] = [
                (loc, Control(images=self.backbone.control_tensor(images, repeat=repeat), scale=c.scale))
                for loc, images, (_, c) in zip(self.locations, self.control_images, self.components.annotators)
            ]
        return self._tensors[repeat]

    def installed(self):
        """Install the modulator on every attention model of the backbone for a ``with`` block."""
        stack = contextlib.ExitStack()
        for role, model in self.backbone.attention_models().items():
            stack.enter_context(self.components.modulator.install(model, role=role.split(".")[0]))
        return stack


def _to_model_frames(frames: np.ndarray) -> torch.Tensor:
    """``uint8 (F, H, W, 3)`` → ``float32 (F, 3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``float (F, 3, H, W)`` in [-1, 1] → ``uint8 (F, H, W, 3)``."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
