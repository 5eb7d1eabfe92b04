"""The ``grabcut`` layout provider: a box (and clicks) on a few keyframes → masks on every frame, no weights.

Per region, a box ``[x0, y0, x1, y1]`` around the object on one or more keyframes, with optional
clicks ``points`` labelled 1 (object) or 0 (not the object) — the same ``prompts`` table as the
``sam2`` provider, so one annotation feeds either::

    layout:
      - name: grabcut
        prompts:
          left_disc:  {0: {box: [10, 30, 60, 80]}}
          right_disc: {0: {box: [70, 40, 120, 96], points: [[95, 60]]}, 23: {box: [20, 40, 70, 96]}}

Keys are **source frame indices** the job selects; coordinates are source pixels (or fractions with
``units: normalized``), mapped through the job's scale-and-crop, and everything runs on the edit
frames. On each keyframe OpenCV's GrabCut segments the box (clicks become hard object / background
seeds). Every other frame takes the mask of its nearest keyframe, carried frame by frame with dense
optical flow (OpenCV DIS) and re-fitted by a few GrabCut iterations whose uncertain band is a thin
ring around the carried mask, so the mask follows a moving object and snaps back to its edges. A
refinement that disagrees wildly with the carried mask (IoU < ``min_agreement``) is dropped for it.
Overlapping regions are resolved afterwards by the job's ``layout_overlap`` rule, like any provider.

SAM 2 (``sam2``) stays the better tracker when a checkpoint is at hand; GrabCut relies on colour
and so works best on objects that stand out from their surroundings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.core.errors import LayoutError
from stmod.core.io.video import ClipPlan, FrameTransform
from stmod.core.pipeline.compose import empty_layout
from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest, number
from stmod.layouts.sam2 import Sam2Prompt

__all__ = ["GrabcutOptions", "GrabcutLayoutProvider", "KeyPrompt", "grabcut_box", "refine_mask", "warp_mask",
           "warp_image", "dense_flow", "track_region"]

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@frozen(kw_only=True)
class KeyPrompt:
    """A region's box and clicks on one frame, in edit-frame pixels."""

    box: Box
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()


def _prompt_table(value: Any) -> dict[str, dict[int, Sam2Prompt]]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("grabcut: prompts must map region names to {source frame: {box: [x0, y0, x1, y1], "
                         f"points: [[x, y]], labels: [1]}}, got {value!r}")
    table: dict[str, dict[int, Sam2Prompt]] = {}
    for region, frames in value.items():
        if not isinstance(frames, Mapping) or not frames:
            raise ValueError(f"grabcut: prompts: region {region!r} must map source frame indices to "
                             f"{{box: [x0, y0, x1, y1]}}, got {frames!r}")
        table[str(region)] = {}
        for key, prompt in frames.items():
            frame = int(key) if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()) else -1
            if isinstance(key, bool) or frame < 0:
                raise ValueError(f"grabcut: prompts: region {region!r}: frame {key!r} must be a source frame index "
                                 "(0, 1, ...)")
            parsed = Sam2Prompt.parse(str(region), frame, prompt)
            if parsed.box is None:  # GrabCut learns its colour models from a box: clicks alone say too little
                raise ValueError(f"grabcut: prompts: region {region!r} frame {frame} has clicks but no box; add "
                                 "box: [x0, y0, x1, y1] around the object (clicks only correct it)")
            table[str(region)][frame] = parsed
    return table


@frozen(kw_only=True)
class GrabcutOptions:
    """Options of the ``grabcut`` layout provider (see the module docs)."""

    #: ``{region: {source frame: {box, points, labels}}}``; every keyframe needs a box.
    prompts: Mapping[str, Mapping[int, Sam2Prompt]] = field(converter=_prompt_table)
    #: ``pixels`` (source frame pixels) or ``normalized`` (fractions of width and height).
    units: Literal["pixels", "normalized"] = field(default="pixels", validator=validators.in_(("pixels", "normalized")))
    #: GrabCut iterations on a keyframe.
    iterations: int = number(5, low=1, high=100)
    #: GrabCut iterations re-fitting a carried mask on every other frame (0: flow only).
    refine_iterations: int = number(2, low=0, high=100)
    #: Width of the uncertain ring around a carried mask, as a fraction of the object's size.
    band: float = number(0.1, low=0.0, high=0.5, validator=validators.gt(0))
    #: Below this IoU with the carried mask a frame's refinement is dropped (the carried mask is kept).
    min_agreement: float = number(0.6, low=0.0, high=1.0)


# -- pure steps ------------------------------------------------------------------------------------

def _raster_box(box: Box, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cols, rows = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]


def _roi(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """Rows and columns of ``mask``'s bounding box grown by ``margin`` (clipped to the frame)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
            slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)))


def _run_grabcut(image: np.ndarray, labels: np.ndarray, iterations: int) -> np.ndarray | None:
    """GrabCut from a label map (``cv2.GC_*``); ``None`` when it cannot run (no object or no background seed)."""
    fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if not fg.any() or fg.all():
        return None
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    work = labels.astype(np.uint8).copy()
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models by k-means from OpenCV's RNG: same input, same mask
    try:
        # OpenCV's stubs want a rect; with GC_INIT_WITH_MASK it takes None (the mask seeds the models)
        bgr = np.ascontiguousarray(image[..., ::-1])
        cv2.grabCut(bgr, work, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
    except cv2.error:  # too few samples for a colour model (tiny or uniform ROI)
        return None
    return np.isin(work, (cv2.GC_FGD, cv2.GC_PR_FGD))


def _seed(image: np.ndarray, labels: np.ndarray, points: Sequence[tuple[float, float]], values: Sequence[int],
          radius: int) -> None:
    """Clicks as hard seeds; a background click also starts its similar-coloured patch as probable background,
    so that the colour models learn it (a seed of a few pixels alone barely moves them)."""
    height, width = labels.shape
    for (x, y), value in zip(points, values):
        centre = (min(width - 1, max(0, int(round(x)))), min(height - 1, max(0, int(round(y)))))
        if not value:
            patch = np.zeros((height + 2, width + 2), np.uint8)
            cv2.floodFill(np.ascontiguousarray(image), patch, centre, (0, 0, 0), (20,) * 3, (20,) * 3,
                          4 | cv2.FLOODFILL_MASK_ONLY | cv2.FLOODFILL_FIXED_RANGE | (1 << 8))
            labels[patch[1:-1, 1:-1].astype(bool) & (labels == cv2.GC_PR_FGD)] = cv2.GC_PR_BGD
        cv2.circle(labels, centre, radius, int(cv2.GC_FGD if value else cv2.GC_BGD), -1)


def _like_surroundings(image: np.ndarray, box: np.ndarray, width: int, distance: float = 24.0) -> np.ndarray:
    """Bool: enclosed patches of ``box`` whose colours are within ``distance`` of colours seen in a ring of
    ``width`` just outside it.

    GrabCut starts with everything in the box as probable object; background showing through a hole
    (a ring's middle) then enters the object's colour model and stays. Starting such pixels as
    probable background lets the colour models separate them.
    """
    ring = cv2.dilate(box.astype(np.uint8), _disc(width)).astype(bool) & ~box
    if not ring.any():
        return np.zeros_like(box)
    samples = image[ring].astype(np.float32)
    if len(samples) > 2000:  # plenty to cover the surroundings' colours; keeps the distance table small
        samples = samples[np.linspace(0, len(samples) - 1, 2000).astype(int)]
    inside = image[box].astype(np.float32)
    near = np.zeros(len(inside), bool)
    for start in range(0, len(inside), 4096):
        chunk = inside[start:start + 4096]
        near[start:start + 4096] = (((chunk[:, None] - samples[None]) ** 2).sum(-1).min(1) < distance ** 2)
    like = np.zeros_like(box)
    like[box] = near
    # Only enclosed patches (holes): patches reaching the box's edge are left to GrabCut as usual, since an
    # object whose colours resemble its surroundings (a dark coat by a dark seat) would lose them here.
    count, parts = cv2.connectedComponents(like.astype(np.uint8), connectivity=4)
    edge = box & ~cv2.erode(box.astype(np.uint8), np.ones((3, 3), np.uint8), borderValue=0).astype(bool)
    touching = np.unique(parts[edge & like])
    return like & ~np.isin(parts, touching)


def grabcut_box(image: np.ndarray, prompt: KeyPrompt, *, iterations: int = 5) -> np.ndarray:
    """Bool ``(H, W)``: GrabCut of ``image`` (``uint8 (H, W, 3)`` RGB) inside ``prompt.box``, clicks as seeds.

    Falls back to the box itself when GrabCut finds nothing or cannot run.
    """
    height, width = image.shape[:2]
    box = _raster_box(prompt.box, height, width)
    if not box.any():
        return box
    side = max(box.any(axis=1).sum(), box.any(axis=0).sum())
    rows, cols = _roi(box, max(8, int(side) // 2))
    labels = np.where(box, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    labels[box & _like_surroundings(image, box, max(2, int(side) // 10))] = cv2.GC_PR_BGD
    _seed(image, labels, prompt.points, prompt.labels, max(1, int(side) // 25))
    found = _run_grabcut(image[rows, cols], labels[rows, cols], iterations)
    if found is None or not found.any():
        return box
    out = np.zeros((height, width), bool)
    out[rows, cols] = found
    return out


def dense_flow(dis: Any, target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """float32 ``(H, W, 2)``: for each pixel of ``target`` (grey ``uint8``), where it was in ``source``."""
    return dis.calc(target, source, None)


def _remap(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(values, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_mask(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: ``mask`` carried along ``flow`` (from :func:`dense_flow`: target → source pixels)."""
    return _remap(mask.astype(np.float32), flow) >= 0.5


def warp_image(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """int16 ``(H, W, 3)``: ``image`` carried along ``flow`` like :func:`warp_mask`."""
    return _remap(image.astype(np.float32), flow).round().astype(np.int16)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def refine_mask(image: np.ndarray, prior: np.ndarray, *, iterations: int = 2, band: float = 0.1,
                min_agreement: float = 0.6, motion: float = 0.0, changed: np.ndarray | None = None) -> np.ndarray:
    """Bool ``(H, W)``: ``prior`` re-fitted to ``image``'s edges by GrabCut in a ring around its border.

    Pixels deeper than the ring inside ``prior`` are object, beyond it background; the ring is
    ``band`` × the object's size wide, and at least twice ``motion`` (pixels the object moved since the
    prior was right: dense flow underestimates the motion of uniform objects, so the prior lags). Returns ``prior`` when it is empty, when GrabCut cannot run, or
    when the refit agrees with it by less than ``min_agreement`` IoU (a lost colour model, not an edge).
    """
    if iterations == 0 or not prior.any():
        return prior
    side = max(prior.any(axis=1).sum(), prior.any(axis=0).sum())
    radius = max(1, int(round(max(band * side, 2 * motion + 1))))
    kernel = _disc(radius)
    grown = cv2.dilate(prior.astype(np.uint8), kernel).astype(bool)
    core = cv2.erode(prior.astype(np.uint8), kernel).astype(bool)
    labels = np.full(prior.shape, cv2.GC_BGD, np.uint8)
    labels[grown] = cv2.GC_PR_BGD
    labels[prior] = cv2.GC_PR_FGD
    labels[core] = cv2.GC_FGD
    if changed is not None:
        # Where the colour changed, the carried label is stale: let GrabCut decide, also a bit farther out
        # (an occluder moving off the object reveals it away from the carried mask).
        far = cv2.dilate(prior.astype(np.uint8), _disc(max(radius, int(side) // 4))).astype(bool)
        labels[(prior | far) & changed] = cv2.GC_PR_BGD
        labels[core & ~changed] = cv2.GC_FGD
        grown |= far & changed
    rows, cols = _roi(grown, 2 * radius + 2)
    found = _run_grabcut(image[rows, cols], labels[rows, cols], iterations)
    if found is None:
        return prior
    out = np.zeros_like(prior)
    out[rows, cols] = found
    return out if _iou(out, prior) >= min_agreement else prior


def _nearest_key(position: int, keys: Sequence[int]) -> int:
    return min(keys, key=lambda k: (abs(k - position), k))


def track_region(frames: np.ndarray, prompts: Mapping[int, KeyPrompt], *, iterations: int = 5,
                 refine_iterations: int = 2, band: float = 0.1, min_agreement: float = 0.6) -> np.ndarray:
    """The whole mask maker for one region, pure (no files, no model).

    :param frames: ``uint8 (F, H, W, 3)`` RGB.
    :param prompts: keyframe position (0 … F−1) → its box and clicks, in these frames' pixels.
    :returns: bool ``(F, H, W)``: GrabCut on the keyframes; every other frame carried from its
        nearest keyframe (ties: the earlier) by DIS flow, frame by frame, and re-fitted by
        :func:`refine_mask`.
    """
    count = len(frames)
    if not prompts:
        raise ValueError("track_region needs at least one keyframe prompt")
    keys = sorted(prompts)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    # OpenCV's stubs list DISOpticalFlow.create but not the module-level alias that exists at run time
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)  # type: ignore[attr-defined]
    dis.setFinestScale(0)  # full resolution: coarser scales blur small objects' edges into the background
    masks = np.zeros(frames.shape[:3], bool)
    for k in keys:
        masks[k] = grabcut_box(frames[k], prompts[k], iterations=iterations)
    owner = [_nearest_key(i, keys) for i in range(count)]
    for k in keys:
        for step in (1, -1):  # outward from the keyframe, as far as it is the nearest one
            previous, i = k, k + step
            while 0 <= i < count and owner[i] == k:
                flow = dense_flow(dis, grey[i], grey[previous])
                carried = warp_mask(masks[previous], flow)
                changed = np.abs(frames[i].astype(np.int16) - warp_image(frames[previous], flow)).max(axis=2) > 40
                motion = float(np.median(np.hypot(*flow[carried].T))) if carried.any() else 0.0
                masks[i] = refine_mask(frames[i], carried, iterations=refine_iterations, band=band,
                                       min_agreement=min_agreement, motion=motion, changed=changed)
                previous, i = i, i + step
    return masks


# -- the provider ----------------------------------------------------------------------------------

class GrabcutLayoutProvider:
    """The ``grabcut`` layout provider (see the module docs)."""

    feature_request = None  # needs no diffusion model

    def __init__(self, options: GrabcutOptions) -> None:
        self.options = options

    def _check_prompts(self, regions: Sequence[str], indices: Sequence[int], size: tuple[int, int]) -> None:
        for name in self.options.prompts:
            if name not in regions:
                raise LayoutError(f"layout 'grabcut' has prompts for {name!r}, which this layout entry does not "
                                  f"supply (it supplies: {', '.join(regions) or 'none'})", region=name)
        height, width = size
        for region in regions:
            if region not in self.options.prompts:
                given = ", ".join(self.options.prompts) or "none"
                raise LayoutError(f"region {region!r} has no prompts in layout 'grabcut' (prompts are given for: "
                                  f"{given}); draw a box around it on a keyframe", region=region)
            for frame, prompt in self.options.prompts[region].items():
                if frame not in indices:
                    shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
                    raise LayoutError(f"region {region!r}: prompt frame {frame} is not a frame the job selects "
                                      f"(source frames {shown}); draw on a selected frame", region=region)
                limit = (1.0, 1.0) if self.options.units == "normalized" else (width, height)
                assert prompt.box is not None  # _prompt_table refuses a grabcut prompt without a box
                x0, y0, x1, y1 = prompt.box
                if min(x0, y0) < 0 or x1 > limit[0] or y1 > limit[1]:
                    raise LayoutError(f"region {region!r} frame {frame}: box {list(prompt.box)} reaches past the "
                                      f"{width}x{height} source frame; keep 0 <= x <= {limit[0]} and "
                                      f"0 <= y <= {limit[1]}", region=region)

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Prompt regions, keyframes the job selects, boxes inside the source frame and the crop."""
        info, transform = clip.info, clip.transform
        self._check_prompts(regions, clip.indices, info.size)
        for region in regions:
            for frame, prompt in self.options.prompts[region].items():
                self._key_prompt(region, frame, prompt, transform)

    def _to_edit(self, xy: Sequence[float], transform: FrameTransform) -> tuple[float, float]:
        """Source (or normalised) ``(x, y)`` → pixel coordinates in the edit frames."""
        return transform.point_to_edit(*xy, normalized=self.options.units == "normalized")

    def _key_prompt(self, region: str, frame: int, prompt: Sam2Prompt, transform: FrameTransform) -> KeyPrompt:
        assert prompt.box is not None  # _prompt_table refuses a grabcut prompt without a box
        x0, y0 = self._to_edit(prompt.box[:2], transform)
        x1, y1 = self._to_edit(prompt.box[2:], transform)
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(transform.width)), min(y1, float(transform.height)))
        if not _raster_box(box, transform.height, transform.width).any():
            raise LayoutError(f"region {region!r} frame {frame}: box {list(prompt.box)} lies outside the centre crop "
                              f"to {transform.width}x{transform.height}; draw it inside the edited picture",
                              region=region)
        points = tuple(self._to_edit(p, transform) for p in prompt.points)
        return KeyPrompt(box=box, points=points, labels=prompt.labels)

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Bool ``(F, K, H, W)`` masks for ``regions`` in that order, at the edit size."""
        frames = np.asarray(request.frames)
        if not regions:
            return empty_layout(*frames.shape[:3])
        indices = list(request.frame_indices)
        height, width = request.source_size
        size = (height, width)
        self._check_prompts(regions, indices, size)
        o = self.options
        stacks = []
        for region in regions:
            keys = {indices.index(frame): self._key_prompt(region, frame, prompt, request.transform)
                    for frame, prompt in self.options.prompts[region].items()}
            masks = track_region(frames, keys, iterations=o.iterations, refine_iterations=o.refine_iterations,
                                 band=o.band, min_agreement=o.min_agreement)
            log.info("grabcut: region %s covers %.1f%% of the frames", region, 100 * masks.mean())
            stacks.append(masks)
        return LayoutMasks(masks=torch.from_numpy(np.stack(stacks, axis=1)), names=tuple(regions))
