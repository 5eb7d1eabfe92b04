"""The ``sam2`` layout provider: clicks or boxes on a few frames → masks on every frame (SAM 2).

Needs the optional extra ``pip install 'stmod[sam2]'`` (SAM 2 builds from source; without a CUDA
toolkit use ``SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2``) and a SAM 2 checkpoint of
your own (``sam2.1_hiera_tiny.pt`` … from the SAM 2 repository's ``checkpoints/download_ckpts.sh``)
with its matching config name inside the package. Example::

    layout:
      - name: sam2
        checkpoint: ~/models/sam2.1_hiera_small.pt
        config: configs/sam2.1/sam2.1_hiera_s.yaml
        prompts:
          left_man:  {0: {points: [[120, 200]]}, 30: {points: [[160, 210], [150, 90]], labels: [1, 0]}}
          right_man: {0: {box: [300, 80, 420, 400]}}

``prompts`` keys are region names and **source frame indices** (they must be frames the job selects);
coordinates are source-frame pixels (or fractions with ``units: normalized``) and are mapped through
the job's scale-and-crop. ``points`` have ``labels`` 1 (object) or 0 (not the object; default 1).
SAM 2 runs on the job's selected, cropped frames; each region is one tracked object. Tracking runs
forward from the first prompted frame and then backward to the first frame. A pixel is in a region
where SAM 2's mask logit exceeds ``threshold`` (default 0).

``check`` (``stmod-run check``) verifies the package, the config name and the checkpoint file without
loading weights. A predictor other than SAM 2's (a stand-in in tests, a wrapper around another
tracker) can be injected with ``Sam2LayoutProvider(options, predictor_factory=...)``; it must offer
SAM 2's ``init_state`` / ``add_new_points_or_box`` / ``propagate_in_video`` methods.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from attrs import field, frozen, validators
from PIL import Image

from stmod.core.devices import resolve_device
from stmod.core.errors import CheckpointError, LayoutError, MissingDependencyError
from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest, number
from stmod.core.io.video import ClipPlan, FrameTransform
from stmod.core.pipeline.compose import empty_layout

__all__ = ["Sam2Prompt", "Sam2Options", "Sam2LayoutProvider", "PredictorFactory", "build_sam2_predictor"]

log = logging.getLogger(__name__)

#: ``factory(config name, checkpoint path, device, hydra overrides) -> video predictor``.
PredictorFactory = Callable[[str, Path, torch.device, Sequence[str]], Any]


def _numbers(value: Any, count: int | None, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} must be a list of {count or 'some'} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _point(value: Any, what: str) -> tuple[float, float]:
    x, y = _numbers(value, 2, what)
    return x, y


def _box(value: Any, what: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(value, 4, what)
    return x0, y0, x1, y1


@frozen(kw_only=True)
class Sam2Prompt:
    """Clicks and/or a box for one region on one frame (source-frame coordinates)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def parse(cls, region: str, frame: int, value: Any) -> Sam2Prompt:
        where = f"prompts: region {region!r} frame {frame}"
        if not isinstance(value, Mapping) or not value or set(value) - {"points", "labels", "box"}:
            raise ValueError(f"{where} must be a mapping with points (and labels) and/or box, got {value!r}")
        raw = value.get("points") or []
        if not isinstance(raw, (list, tuple)):
            raise ValueError(f"{where}: points must be a list of [x, y], got {raw!r}")
        points = tuple(_point(p, f"{where}: each point") for p in raw)
        labels = value.get("labels")
        labels = tuple(1 for _ in points) if labels is None else labels
        if not isinstance(labels, (list, tuple)) or len(labels) != len(points) or any(v not in (0, 1) for v in labels):
            raise ValueError(f"{where}: labels must be one 1 (object) or 0 (background) per point, got {labels!r}")
        box = value.get("box")
        if box is not None:
            box = _box(box, f"{where}: box")
            if not (box[0] < box[2] and box[1] < box[3]):
                raise ValueError(f"{where}: box {list(box)} must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        if not points and box is None:
            raise ValueError(f"{where} has neither points nor a box")
        if points and not any(labels) and box is None:
            raise ValueError(f"{where}: all points are background (label 0); add an object point or a box")
        return cls(points=points, labels=tuple(int(v) for v in labels), box=box)


def _prompt_table(value: Any) -> dict[str, dict[int, Sam2Prompt]]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("prompts must map region names to {source frame: {points: [[x, y]], box: [x0, y0, x1, y1]}}")
    table: dict[str, dict[int, Sam2Prompt]] = {}
    for region, frames in value.items():
        if not isinstance(frames, Mapping) or not frames:
            raise ValueError(f"prompts: region {region!r} must map source frame indices to prompts, got {frames!r}")
        table[str(region)] = {}
        for key, prompt in frames.items():
            frame = int(key) if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()) else -1
            if isinstance(key, bool) or frame < 0:
                raise ValueError(f"prompts: region {region!r}: frame {key!r} must be a source frame index (0, 1, ...)")
            table[str(region)][frame] = Sam2Prompt.parse(str(region), frame, prompt)
    return table


@frozen(kw_only=True)
class Sam2Options:
    """Options of the ``sam2`` layout provider (see the module docs)."""

    #: SAM 2 checkpoint file (``.pt``); relative paths are taken from the job file's folder.
    checkpoint: Path = field(converter=Path)
    #: ``{region: {source frame: {points, labels, box}}}``.
    prompts: Mapping[str, Mapping[int, Sam2Prompt]] = field(converter=_prompt_table)
    #: Config name inside the ``sam2`` package that matches the checkpoint.
    config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    #: ``pixels`` (source frame pixels) or ``normalized`` (fractions of width and height).
    units: Literal["pixels", "normalized"] = field(default="pixels", validator=validators.in_(("pixels", "normalized")))
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``, ...
    device: str = "auto"
    #: Mask logit threshold.
    threshold: float = number(0.0, low=-1e6, high=1e6)
    #: Extra Hydra overrides for ``build_sam2_video_predictor`` (e.g. ``++model.image_size=512``).
    overrides: tuple[str, ...] = ()


def build_sam2_predictor(config: str, checkpoint: Path, device: torch.device, overrides: Sequence[str] = ()) -> Any:
    """SAM 2's video predictor with ``checkpoint`` loaded (the default ``predictor_factory``)."""
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as exc:
        raise MissingDependencyError("layout 'sam2'", ["sam2", "torchvision"], extra="sam2") from exc
    try:
        return build_sam2_video_predictor(config, ckpt_path=str(checkpoint), device=str(device),
                                          hydra_overrides_extra=list(overrides))
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:  # other config's weights, or none
        reason = str(exc) or type(exc).__name__
        raise CheckpointError(str(checkpoint), f"cannot be loaded into SAM 2 config {config} ({reason}); set config "
                              "to the one matching the checkpoint (e.g. sam2.1_hiera_s.pt -> "
                              "configs/sam2.1/sam2.1_hiera_s.yaml)") from exc


class Sam2LayoutProvider:
    """The ``sam2`` layout provider (see the module docs).

    :param predictor_factory: builds the video predictor; default :func:`build_sam2_predictor`.
    """

    feature_request = None  # needs no diffusion model

    def __init__(self, options: Sam2Options, *, predictor_factory: PredictorFactory | None = None) -> None:
        self.options = options
        self._factory = predictor_factory

    # ---------------------------------------------------------------------------------- validation
    def _checkpoint(self, spec: EditSpec) -> Path:
        path = self.options.checkpoint.expanduser()
        path = path if path.is_absolute() else spec.base_dir / path
        if not path.is_file():
            raise CheckpointError(str(path), "SAM 2 checkpoint not found (layout 'sam2', option checkpoint); download "
                                  "one with the SAM 2 repository's checkpoints/download_ckpts.sh and give its path")
        return path

    def _check_package(self) -> None:
        missing = [name for name in ("sam2", "torchvision") if importlib.util.find_spec(name) is None]
        if missing:
            raise MissingDependencyError("layout 'sam2'", missing, extra="sam2")
        spec = importlib.util.find_spec("sam2")
        assert spec is not None  # found just above
        root = Path(next(iter(spec.submodule_search_locations or []), ""))
        if root.is_dir() and not (root / self.options.config).is_file():
            available = sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))
            raise LayoutError(f"layout 'sam2' option config {self.options.config!r} is not a config of the sam2 "
                              f"package; available: {', '.join(available) or 'none'}")

    def _check_prompts(self, spec: EditSpec, regions: Sequence[str], indices: Sequence[int]) -> None:
        for name in self.options.prompts:
            if name not in regions:
                raise LayoutError(f"layout 'sam2' has prompts for {name!r}, which this layout entry does not supply "
                                  f"(it supplies: {', '.join(regions) or 'none'})", region=name)
        for region in regions:
            if region not in self.options.prompts:
                given = ", ".join(self.options.prompts) or "none"
                raise LayoutError(f"region {region!r} has no prompts in layout 'sam2' (prompts are given for: {given})",
                                  region=region)
            for frame in self.options.prompts[region]:
                if frame not in indices:
                    shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
                    raise LayoutError(f"region {region!r}: prompt frame {frame} is not a frame the job selects "
                                      f"(source frames {shown}); prompt on a selected frame", region=region)

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Package, config name, checkpoint file and prompt frames, without loading any weights."""
        if self._factory is None:
            self._check_package()
        self._checkpoint(spec)
        self._check_prompts(spec, regions, clip.indices)

    # ------------------------------------------------------------------------------------- running
    def _to_edit(self, xy: Sequence[float], transform: FrameTransform) -> tuple[float, float]:
        """Source (or normalised) ``(x, y)`` → pixel coordinates in the edit frames."""
        return transform.point_to_edit(*xy, normalized=self.options.units == "normalized")

    def _prompt_arrays(self, region: str, frame: int, prompt: Sam2Prompt, transform: FrameTransform,
                       ) -> dict[str, np.ndarray | None]:
        height, width = transform.height, transform.width
        points = np.array([self._to_edit(p, transform) for p in prompt.points], dtype=np.float32).reshape(-1, 2)
        labels = np.array(prompt.labels, dtype=np.int32)
        outside = [list(p) for p, (x, y), lab in zip(prompt.points, points, labels)
                   if lab == 1 and not (0 <= x < width and 0 <= y < height)]
        if outside:
            raise LayoutError(f"region {region!r} frame {frame}: point {outside[0]} lies outside the centre crop to "
                              f"{width}x{height}", region=region)
        box = None
        if prompt.box is not None:
            x0, y0 = self._to_edit(prompt.box[:2], transform)
            x1, y1 = self._to_edit(prompt.box[2:], transform)
            box = np.array([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)], dtype=np.float32)
            if box[0] >= box[2] or box[1] >= box[3]:
                raise LayoutError(f"region {region!r} frame {frame}: box {list(prompt.box)} lies outside the centre "
                                  f"crop to {width}x{height}", region=region)
        return {"points": points if len(points) else None, "labels": labels if len(points) else None, "box": box}

    @staticmethod
    @contextlib.contextmanager
    def _frames_folder(frames: np.ndarray) -> Iterator[str]:
        """SAM 2 reads a folder of ``<index>.jpg`` files: write the edit frames there for the ``with`` block."""
        with tempfile.TemporaryDirectory(prefix="stmod-sam2-") as folder:
            for i, frame in enumerate(frames):
                Image.fromarray(frame).save(Path(folder) / f"{i:05d}.jpg", quality=95)
            yield folder

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Bool ``(F, K, H, W)`` masks for ``regions``: SAM 2 tracks one object per region."""
        frames = np.asarray(request.frames)
        count, height, width = frames.shape[:3]
        if not regions:
            return empty_layout(count, height, width)
        indices = list(request.frame_indices)
        self._check_prompts(request.spec, regions, indices)
        transform = request.transform
        inputs = [(k + 1, indices.index(frame), self._prompt_arrays(region, frame, prompt, transform))
                  for k, region in enumerate(regions) for frame, prompt in sorted(self.options.prompts[region].items())]
        if self._factory is None:
            self._check_package()
        device = resolve_device(self.options.device)
        factory = self._factory or build_sam2_predictor
        predictor = factory(self.options.config, self._checkpoint(request.spec), device, self.options.overrides)
        logits: dict[int, np.ndarray] = {}  # frame position -> float32 (K, H, W)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)  # SAM 2 stores its memory in bfloat16
        with self._frames_folder(frames) as folder, torch.inference_mode(), autocast:
            state = predictor.init_state(video_path=folder)
            for obj_id, position, arrays in inputs:
                predictor.add_new_points_or_box(state, frame_idx=position, obj_id=obj_id, **arrays)
            first = min(position for _, position, _ in inputs)
            passes = [predictor.propagate_in_video(state)]
            if first > 0:
                passes.append(predictor.propagate_in_video(state, reverse=True))
            for run in passes:
                for position, obj_ids, out in run:
                    if position not in logits:
                        logits[position] = self._by_region(list(obj_ids), out, len(regions), (height, width))
        masks = np.zeros((count, len(regions), height, width), dtype=bool)
        for position, values in logits.items():
            masks[position] = values > self.options.threshold
        for k, region in enumerate(regions):
            if not masks[:, k].any():
                raise LayoutError(f"region {region!r}: SAM 2 found no pixels for it in any frame; move its points or "
                                  "box onto the object", region=region)
        return LayoutMasks(masks=torch.from_numpy(masks), names=tuple(regions))

    @staticmethod
    def _by_region(obj_ids: list[int], out: Any, regions: int, size: tuple[int, int]) -> np.ndarray:
        """SAM 2's ``(objects, 1, H, W)`` logits → float32 ``(K, H, W)`` in region order (missing: -inf)."""
        values = torch.as_tensor(out).float().cpu().numpy().reshape(len(obj_ids), -1, *size)[:, 0]
        table = np.full((regions, *size), -np.inf, dtype=np.float32)
        for i, obj_id in enumerate(obj_ids):
            table[int(obj_id) - 1] = values[i]
        return table
