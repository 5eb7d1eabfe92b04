"""Evaluate output folders: read what an edit wrote, compute the metrics, record them in ``run.json``.

:class:`Evaluator` holds the options and the lazily loaded models (CLIP, RAFT), so a batch evaluates
many folders with one CLIP. :func:`load_inputs` reads a folder: the exact frames and masks of
``eval/`` when present (see :mod:`stmod.core.io.evaldata`), else ``result.mp4``, the job's source clip
(from ``config.yaml``) and masks rebuilt by the job's layout providers. Metrics already in ``run.json``
with the same settings are reused unless ``recompute`` is set.

Metric names (``--metrics``): ``clip-t``, ``clip-f``, ``warp``, ``q-edit``, ``regions`` (per-region
CLIP-T) and ``background`` (PSNR and SSIM outside all masks). Formulas: :mod:`stmod.plugins.eval.metrics`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from stmod.plugins.eval.clipscore import ClipScorer, region_crops
from stmod.plugins.eval.names import DEFAULT_CLIP, METRICS, parse_metrics
from stmod.core.config import load_job
from stmod.core.errors import InputError, StmodError, UsageError
from stmod.core.io.evaldata import read_eval_frames, read_eval_masks
from stmod.plugins.eval.flow import FlowEstimator, FlowMethod, make_flow
from stmod.plugins.eval.metrics import (
    FrameConsistency, WarpNorm, background_psnr, background_ssim, clip_frame_consistency, clip_text_score, q_edit,
    warp_error,
)
from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest
from stmod.core.io.video import atomic_path, load_video, read_video

__all__ = ["METRICS", "EvalOptions", "EvalInputs", "Evaluator", "load_inputs", "load_run", "write_run",
           "parse_metrics", "efficiency"]

log = logging.getLogger(__name__)

_CLIP_METRICS = {"clip-t", "clip-f", "regions"}
_FAMILIES = {"clip": ("clip_t", "clip_f", "regions"), "warp": ("warp_err", "occluded")}  # run.json keys by settings
_GIB = float(1 << 30)


@attrs.frozen(kw_only=True)
class EvalOptions:
    """What to compute and how (see ``docs/evaluation.md``)."""

    metrics: tuple[str, ...] = METRICS
    clip: str = DEFAULT_CLIP
    clip_f_mode: FrameConsistency = "consecutive"
    flow: FlowMethod = "dis"
    raft_weights: Path | None = None
    warp_norm: WarpNorm = "mse"
    occlusion: bool = True
    device: str = "auto"
    recompute: bool = False

    @property
    def wanted(self) -> set[str]:
        """Requested metrics plus what they depend on (Q-edit needs CLIP-T and Warp-Err)."""
        wanted = set(self.metrics)
        if "q-edit" in wanted:
            wanted |= {"clip-t", "warp"}
        return wanted

    def settings(self, flow_name: str | None = None) -> dict[str, dict[str, Any]]:
        """The settings recorded next to the numbers; a metric is reused only under equal settings."""
        flow = flow_name or {"dis": "dis-medium", "raft": "raft-large"}[self.flow]
        return {"clip": {"model": self.clip, "clip_f": self.clip_f_mode},
                "warp": {"flow": flow, "norm": self.warp_norm, "occlusion": self.occlusion}}


@attrs.frozen(kw_only=True)
class EvalInputs:
    """One output folder's job, frames ``uint8 (F, H, W, 3)`` and masks, and where they came from."""

    folder: Path
    spec: EditSpec
    result: np.ndarray
    source: np.ndarray | None
    masks: LayoutMasks | None
    frames_from: Literal["eval", "mp4"]


def load_run(folder: Path) -> dict[str, Any]:
    """``run.json`` of an output folder.

    :raises InputError: naming the folder when it is not a finished stmod output folder.
    """
    path = Path(folder) / "run.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("RESULT_DIR", str(folder), "holds no run.json; pass the output folder of an edit") from None
    except (OSError, ValueError) as exc:
        raise InputError("RESULT_DIR", str(folder), f"run.json cannot be read ({exc})") from exc


def write_run(folder: Path, run: dict[str, Any]) -> None:
    """Rewrite ``run.json`` atomically (a crash leaves the old file intact)."""
    with atomic_path(Path(folder) / "run.json") as tmp:
        tmp.write_text(json.dumps(run, indent=2, allow_nan=False), encoding="utf-8")


def _rebuilt_masks(spec: EditSpec, frames: np.ndarray, registry: Any) -> LayoutMasks | None:
    """Masks from the job's layout providers (for folders without ``eval/masks.npz``), or ``None``."""
    from stmod.core.pipeline.components import check_job
    from stmod.core.pipeline.compose import compose, empty_layout

    try:
        components = check_job(spec, registry, check_output=False)
        if not components.layouts:
            return empty_layout(*frames.shape[:3])
        if any(p.feature_request is not None for p, _ in components.layouts):
            log.warning("%s: masks need inversion features; region and background metrics skipped", spec.output)
            return None
        clip = load_video(spec.video)
        request = LayoutRequest(spec=spec, frame_indices=clip.indices, source_size=clip.source_size,
                                transform=clip.transform, frames=clip.frames)
        parts = [(a.place, p.layout(request, a.regions)) for p, a in components.layouts]
        return compose(parts, spec.region_names, overlap=spec.layout_overlap, frame_indices=request.frame_indices)
    except StmodError as exc:
        log.warning("%s: cannot rebuild the masks (%s); region and background metrics skipped", spec.output, exc)
        return None


def load_inputs(folder: Path, *, need_source: bool = True, need_masks: bool = True,
                registry: Any = None) -> EvalInputs:
    """Read an output folder for evaluation (exact ``eval/`` data when present).

    :raises InputError: when the folder is not an output folder, or (without ``eval/``) its source
        clip is gone although ``need_source`` is set.
    """
    folder = Path(folder)
    load_run(folder)
    config = folder / "config.yaml"
    if not config.is_file():
        raise InputError("RESULT_DIR", str(folder), "holds no config.yaml; pass the output folder of an edit")
    spec = load_job(config)
    source: np.ndarray | None
    exact = read_eval_frames(folder)
    if exact is not None:
        source, result = exact
        masks = read_eval_masks(folder) if need_masks else None
        return EvalInputs(folder=folder, spec=spec, result=result, source=source, masks=masks, frames_from="eval")
    log.warning("%s has no eval/ folder (written before stmod recorded exact frames): reading result.mp4 "
                "(lossy) and the job's source clip", folder)
    result, _ = read_video(folder / "result.mp4", argument="result.mp4")
    source = None
    if need_source:
        source = load_video(spec.video).frames
        result = result[:, :source.shape[1], :source.shape[2]]  # odd sizes were padded for H.264
    masks = _rebuilt_masks(spec, result, registry) if need_masks and registry is not None else None
    return EvalInputs(folder=folder, spec=spec, result=result, source=source, masks=masks, frames_from="mp4")


class Evaluator:
    """Computes metrics for output folders with one set of options and lazily loaded models.

    :param options: what to compute; :param clip: a loaded scorer to use instead of ``options.clip``;
    :param flow: a flow estimator to use instead of ``options.flow``.
    """

    def __init__(self, options: EvalOptions = EvalOptions(), *, clip: ClipScorer | None = None,
                 flow: FlowEstimator | None = None) -> None:
        self.options = options
        self._clip, self._flow = clip, flow

    @property
    def clip(self) -> ClipScorer:
        if self._clip is None:
            self._clip = ClipScorer.load(self.options.clip, device=self.options.device)
        return self._clip

    @property
    def flow(self) -> FlowEstimator:
        if self._flow is None:
            self._flow = make_flow(self.options.flow, raft_weights=self.options.raft_weights,
                                   device=self.options.device)
        return self._flow

    def prepare(self, metrics: Iterable[str] | None = None) -> None:
        """Load the models ``metrics`` (default: all requested) need now, so a missing checkpoint fails
        before any work."""
        todo = self.options.wanted if metrics is None else set(metrics)
        if todo & _CLIP_METRICS:
            _ = self.clip
        if "warp" in todo:
            _ = self.flow

    def todo(self, folder: Path) -> set[str]:
        """The metrics :meth:`evaluate_folder` would compute for ``folder`` now."""
        return self._todo(dict(load_run(folder).get("metrics") or {}))

    def _todo(self, old: dict[str, Any]) -> set[str]:
        """Requested metrics that ``run.json`` lacks or holds under other settings."""
        wanted = self.options.wanted - {"q-edit"}
        if self.options.recompute or not old:
            return wanted
        settings = old.get("settings", {})
        current = self.options.settings(self._flow.name if self._flow is not None else None)
        have = set()
        if settings.get("clip") == current["clip"]:
            have |= {m for m, key in (("clip-t", "clip_t"), ("clip-f", "clip_f"), ("regions", "regions")) if key in old}
        if settings.get("warp") == current["warp"] and "warp_err" in old:
            have.add("warp")
        if "background" in old:
            have.add("background")
        return wanted - have

    def evaluate_folder(self, folder: Path, *, registry: Any = None) -> dict[str, Any]:
        """Compute what is missing for ``folder``, write it into ``run.json``; returns the metrics record."""
        run = load_run(folder)
        old = dict(run.get("metrics") or {})
        todo = self._todo(old)
        if not todo:
            log.info("%s: metrics up to date", folder)
            return old
        inputs = load_inputs(folder, need_source=bool(todo & {"warp", "background"}),
                             need_masks=bool(todo & {"regions", "background"}), registry=registry)
        new = self.evaluate(inputs, todo)
        for family, keys in _FAMILIES.items():  # numbers computed under other settings would be mislabelled
            if family in new["settings"] and old.get("settings", {}).get(family) != new["settings"][family]:
                old = {k: v for k, v in old.items() if k not in keys}
        merged = {**old, **new, "settings": {**old.get("settings", {}), **new["settings"]}}
        merged["q_edit"] = q_edit(merged.get("clip_t"), merged.get("warp_err"))
        run = load_run(folder)  # re-read: keep anything written meanwhile
        run["metrics"] = merged
        write_run(folder, run)
        return merged

    def evaluate(self, inputs: EvalInputs, metrics: Iterable[str] | None = None) -> dict[str, Any]:
        """The metrics ``metrics`` (default: the options') of one folder's frames, as run.json records them."""
        todo = set(self.options.wanted if metrics is None else metrics)
        opts, spec, result = self.options, inputs.spec, inputs.result
        out: dict[str, Any] = {"evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                               "frames_from": inputs.frames_from, "settings": {}}
        if todo & _CLIP_METRICS:
            out["settings"]["clip"] = opts.settings()["clip"]
            frames = self.clip.embed_images(list(result)) if todo & {"clip-t", "clip-f"} else None
            if "clip-t" in todo:
                assert frames is not None  # embedded just above whenever clip-t or clip-f is wanted
                out["clip_t"] = clip_text_score(frames, self.clip.embed_texts([spec.prompt])[0])
            if "clip-f" in todo:
                assert frames is not None
                out["clip_f"] = clip_frame_consistency(frames, opts.clip_f_mode)
            if "regions" in todo:
                out["regions"] = self._regions(inputs)
        if "warp" in todo:
            if inputs.source is None:
                raise InputError("RESULT_DIR", str(inputs.folder), "Warp-Err needs the source frames")
            forward, backward = self.flow.pairs(inputs.source)
            warp = warp_error(result, forward, backward, norm=opts.warp_norm, occlusion=opts.occlusion)
            out["settings"]["warp"] = opts.settings(self.flow.name)["warp"]
            out["warp_err"], out["occluded"] = warp.value, warp.occluded
        if "background" in todo:
            out["background"] = self._background(inputs)
        if "clip_t" in out or "warp_err" in out:
            out["q_edit"] = q_edit(out.get("clip_t"), out.get("warp_err"))
        return out

    def _regions(self, inputs: EvalInputs) -> dict[str, Any] | None:
        if inputs.masks is None:
            return None
        scores: dict[str, Any] = {}
        for region in inputs.spec.regions:
            if not region.prompt or region.name not in inputs.masks.names:
                continue
            masks = inputs.masks.select([region.name]).masks[:, 0].numpy()
            crops = region_crops(inputs.result, masks)
            score = (clip_text_score(self.clip.embed_images(crops), self.clip.embed_texts([region.prompt])[0])
                     if crops else None)
            scores[region.name] = {"clip_t": score, "frames": len(crops), "prompt": region.prompt}
        return scores

    def _background(self, inputs: EvalInputs) -> dict[str, Any] | None:
        if inputs.masks is None or inputs.source is None:
            return None
        background = ~inputs.masks.union().numpy() if inputs.masks.masks.shape[1] else \
            np.ones(inputs.result.shape[:3], bool)
        return {"psnr": background_psnr(inputs.source, inputs.result, background),
                "ssim": background_ssim(inputs.source, inputs.result, background),
                "fraction": float(background.mean())}


def efficiency(run: dict[str, Any]) -> dict[str, float | bool | None]:
    """The paper's Table 2 columns from a run record: minutes (all phases), peak GPU and RAM in GiB."""
    gpu, rss = run.get("peak_gpu_bytes"), run.get("peak_rss_bytes")
    phases = run.get("phases") or {}
    return {"minutes": sum(phases.values()) / 60.0 if phases else None,
            "gpu_gb": gpu / _GIB if gpu is not None else None,
            "ram_gb": rss / _GIB if rss is not None else None,
            "inversion_cached": (run.get("inversion") or {}).get("cached")}
