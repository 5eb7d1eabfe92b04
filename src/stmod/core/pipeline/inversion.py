"""The cached DDIM inversion of one edit, recording layout features when a provider asks for them.

Cache: with feature requests the key also covers them, and the entry stores the features beside
the trajectory, so re-clustering (another ``clusters`` count) reuses both; an entry without
features is never taken for such a job, so feature recording is never skipped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from stmod.core.features import FeatureRequest, InversionFeatureRecorder, InversionFeatures, word_positions
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.records import PhaseTimer
from stmod.core.pipeline.session import EditSession, latent_size
from stmod.core.protocols import Backbone, FeatureRecording, PreparesFromClip, VideoBackbone
from stmod.core.sampling import Schedule, invert
from stmod.core.types import ExtensionInput, LayoutMasks, ModulationInput

__all__ = ["Inversion", "cached_inversion"]

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class Inversion:
    """The DDIM trajectory ``{timestep: latents}`` on the model's device, whether it came from the
    cache (``cache_info``: ``{"cached": bool, "key": str, "stored": bool}``; ``stored``: a computed trajectory
    was written to the cache, false with the cache off), and the recorded features (or ``None``)."""

    trajectory: dict[int, torch.Tensor] = attrs.field(eq=False)
    cache_info: dict[str, Any]
    features: InversionFeatures | None = attrs.field(default=None, eq=False)


def _key(session: EditSession, timesteps: list[int], requests: tuple[FeatureRequest, ...]) -> str:
    spec, backbone = session.spec, session.backbone
    settings: dict[str, Any] = {
        "backbone": spec.backbone.name, "model": backbone.model_id, "dtype": str(backbone.dtype),
        "steps": spec.steps, "timesteps": timesteps, "source_prompt": spec.source_prompt,
        "control": [[c.annotator.name, dict(c.annotator.options), loc, c.scale]
                    for (_, c), loc in zip(session.components.annotators, session.locations)],
        "temporal": spec.modulation.temporal,
    }
    if requests:
        settings["features"] = [r.as_list() for r in requests]
    if session.components.extensions:  # absent without extensions: the keys of earlier entries stay valid
        settings["extensions"] = [[ref.name, dict(extension.inversion_settings())]
                                  for extension, ref in session.components.extensions]
    return InversionCache.key(frames_digest=InversionCache.digest(session.clip.frames), settings=settings)


def clip_frame_rows(backbone: Backbone, frames: int) -> tuple[int, ...]:
    """Per clip frame, the latent frame that encodes it (``()``: one latent per frame, the same frames).

    Read off the backbone's own mask compression (:meth:`VideoBackbone.latent_masks` of one mask per clip
    frame), so features are spread back over the clip exactly as region masks are gathered into latent
    frames: on Wan, clip frame ``i`` is latent frame ``⌈i/4⌉``.
    """
    if not isinstance(backbone, VideoBackbone):
        return ()
    one_per_frame = torch.eye(frames, dtype=torch.bool).view(frames, frames, 1, 1)
    latent = backbone.latent_masks(LayoutMasks(masks=one_per_frame, names=[f"frame{i}" for i in range(frames)]))
    covers = latent.masks[:, :, 0, 0]  # (f, F): latent frame j covers clip frame i
    return tuple(int(covers[:, i].nonzero()[0, 0]) for i in range(frames))


def _features(session: EditSession, state: Mapping[str, Any] | None,
              requests: tuple[FeatureRequest, ...]) -> InversionFeatures | None:
    if not requests or state is None:
        return None
    prompt = session.spec.source_prompt
    return InversionFeatures.from_state(state, words=word_positions(session.backbone.tokenizer, prompt), prompt=prompt,
                                        frame_rows=clip_frame_rows(session.backbone, len(session.clip.frames)))


def _run(session: EditSession, x0: torch.Tensor, schedule: Schedule, timesteps: list[int],
         recorder: InversionFeatureRecorder | None) -> dict[int, torch.Tensor]:
    """DDIM inversion under the source prompt, the modulator installed without regions."""
    spec, backbone, modulator = session.spec, session.backbone, session.components.modulator
    text = backbone.encode_text([spec.source_prompt]).repeat(len(x0), 1, 1)
    modulator.prepare(ModulationInput(masks=None, num_frames=len(x0), latent_size=latent_size(x0),
                                      config=spec.modulation.resolved(spec.steps), prompt=spec.source_prompt))

    def predict(x: torch.Tensor, t: int, k: int) -> torch.Tensor:
        kwargs = modulator.call_kwargs(phase="invert", step_index=k, timestep=t, branches=("cond",))
        session.step(phase="invert", step_index=k, timestep=t, branches=("cond",))
        return backbone.predict_noise(x, t, text, controls=session.controls(1), cross_attention_kwargs=kwargs)

    recording: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if recorder is not None:
        assert isinstance(modulator, FeatureRecording)  # check_job made sure
        recording = modulator.record_features(recorder)
    with session.reporter.phase(len(timesteps), "inversion") as progress, session.installed(), recording:
        return invert(x0, predict, schedule, timesteps, on_step_end=progress.step_end)


def _fits(trajectory: Mapping[int, torch.Tensor], x0: torch.Tensor, timesteps: list[int]) -> bool:
    """Whether a cached trajectory has every level of this inversion, each shaped like ``x0``."""
    return (set(trajectory) == {0, *timesteps}
            and all(tuple(z.shape) == tuple(x0.shape) and torch.isfinite(z).all() for z in trajectory.values()))


def _prepare_extensions(session: EditSession, x0: torch.Tensor, cache: InversionCache | None, key: str) -> bool:
    """``prepare`` every extension (each with its store beside the entry ``key``); whether one of them
    needs the inversion to run even when its trajectory is cached."""
    backbone = session.backbone
    preparing = [(e, ref) for e, ref in session.components.extensions if isinstance(e, PreparesFromClip)]
    for extension, ref in preparing:
        store = cache.store(key, ref.name) if cache is not None else None
        extension.prepare(ExtensionInput(spec=session.spec, frames=session.clip.frames,
                                         latent_size=latent_size(x0), num_frames=len(x0), store=store,
                                         device=backbone.device, dtype=backbone.dtype))
    return any(extension.needs_inversion() for extension, _ in preparing)


def cached_inversion(session: EditSession, x0: torch.Tensor, schedule: Schedule, timesteps: list[int], *,
                     cache: InversionCache | None, timer: PhaseTimer,
                     requests: tuple[FeatureRequest, ...]) -> Inversion:
    """The trajectory (from ``cache`` when possible) and, for ``requests``, the attention features."""
    backbone = session.backbone
    key = _key(session, timesteps, requests)
    rerun = _prepare_extensions(session, x0, cache, key)
    entry = cache.load(key) if cache is not None else None
    if entry is not None and not _fits(entry.trajectory, x0, timesteps):
        log.warning("inversion cache: entry %s does not fit this clip (timesteps or shapes differ); recomputing", key)
        entry = None
    if entry is not None and rerun:
        log.info("inversion cache: entry %s lacks what an extension records; inverting again", key)
        entry = None
    if entry is not None and (not requests or entry.features is not None):
        log.info("inversion loaded from cache (%s)", key)
        trajectory = {t: z.to(backbone.device, backbone.dtype) for t, z in entry.trajectory.items()}
        return Inversion(trajectory=trajectory, cache_info={"cached": True, "key": key, "stored": True},
                         features=_features(session, entry.features, requests))
    recorder = (InversionFeatureRecorder(requests, num_frames=len(x0), latent_size=latent_size(x0))
                if requests else None)
    with timer.phase("invert"):
        trajectory = _run(session, x0, schedule, timesteps, recorder)
    state = recorder.result().to_state() if recorder is not None else None
    if cache is not None:
        cache.save(key, trajectory, features=state)
    return Inversion(trajectory=trajectory, cache_info={"cached": False, "key": key, "stored": cache is not None},
                     features=_features(session, state, requests))
