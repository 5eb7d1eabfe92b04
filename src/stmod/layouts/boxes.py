"""The ``boxes`` layout provider: region masks from boxes typed at a few keyframes.

Each region gets boxes ``[x0, y0, x1, y1]`` (left, top, right, bottom; ``x0 < x1``, ``y0 < y1``) at one
or more keyframes, keyed by **absolute source frame index**. Units are source pixels (``units:
pixels``, the default; the box covers columns ``x0 <= x < x1``) or fractions of the source width and
height (``units: normalized``, each in ``[0, 1]``). Between keyframes every coordinate is linearly
interpolated; before the first and after the last keyframe the nearest box is held.

A box is rasterised at source size — pixel ``(row, col)`` is inside when its centre
``(col + 0.5, row + 0.5)`` lies in the box — and then scaled and cropped exactly like the frames
(``LayoutRequest.transform``). A region whose box falls outside the crop in every selected frame is an
error.

``refine: N`` (N ≥ 2 K-Means clusters) shrinks each box to the object inside it: the clip's
inversion self-attention features are clustered like the ``kmeans`` provider does (all frames
jointly, UNet level ``refine_level``), and the box keeps the clusters that lie mostly inside it
(:func:`stmod.layouts.clustering.refine_to_object`). This needs the inversion, so the Editor inverts
before computing the layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.core.errors import LayoutError
from stmod.core.features import FeatureRequest, InversionFeatures
from stmod.core.types import MAX_LEVEL, EditSpec, LayoutMasks, LayoutRequest, number
from stmod.core.io.video import ClipPlan, FrameTransform
from stmod.layouts.clustering import cluster_self_rows, refine_to_object, upsample_labels
from stmod.core.pipeline.compose import empty_layout

__all__ = ["Box", "BoxesOptions", "BoxLayoutProvider", "interpolate_box", "rasterise_box"]

log = logging.getLogger(__name__)

#: ``(x0, y0, x1, y1)``: left, top, right, bottom.
Box = tuple[float, float, float, float]
Units = Literal["pixels", "normalized"]


def _keyframes(region: str, value: Any) -> dict[int, Box | None]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"boxes: region {region!r} needs a mapping {{source frame index: [x0, y0, x1, y1]}}, "
                         f"got {value!r}")
    table: dict[int, Box | None] = {}
    for key, box in value.items():
        try:
            frame = int(key)
        except (TypeError, ValueError):
            frame = -1
        if frame < 0 or isinstance(key, (bool, float)):
            raise ValueError(f"boxes: region {region!r}: keyframe {key!r} must be a source frame index "
                             "(an integer >= 0)")
        if box is None or box == "absent":  # the object is not in the picture from this keyframe on
            table[frame] = None
            continue
        if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 4 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise ValueError(f"boxes: region {region!r} frame {frame}: {box!r} must be 4 numbers [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"boxes: region {region!r} frame {frame}: {list(box)} is inverted or empty; "
                             "write [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        if min(x0, y0) < 0:
            raise ValueError(f"boxes: region {region!r} frame {frame}: {list(box)} has a negative coordinate")
        table[frame] = (x0, y0, x1, y1)
    if all(box is None for box in table.values()):
        raise ValueError(f"boxes: region {region!r} is absent on every keyframe; give it a box on at least one")
    return dict(sorted(table.items()))


def _box_table(value: Any) -> dict[str, dict[int, Box | None]]:
    if not isinstance(value, Mapping):
        raise ValueError(f"boxes must map region names to {{frame: [x0, y0, x1, y1]}}, got {value!r}")
    return {str(region): _keyframes(str(region), frames) for region, frames in value.items()}


@frozen(kw_only=True)
class BoxesOptions:
    """Options of the ``boxes`` layout provider."""

    #: ``{region: {source frame index: [x0, y0, x1, y1] or null}}``; ``null`` (or ``absent``): the object
    #: is out of the picture from that keyframe until the next one (e.g. it enters mid-clip).
    boxes: Mapping[str, Mapping[int, Box | None]] = field(converter=_box_table)
    #: ``pixels`` (source frame pixels) or ``normalized`` (fractions of width and height).
    units: Units = field(default="pixels", validator=validators.in_(("pixels", "normalized")))
    #: K-Means clusters used to shrink boxes to their object (0: keep whole boxes).
    refine: int = number(0, low=0, high=64)
    #: UNet level of the features used by ``refine`` (1: half the latent grid, as ``kmeans``).
    refine_level: int = number(1, low=0, high=MAX_LEVEL)

    def __attrs_post_init__(self) -> None:
        if self.refine == 1:
            raise ValueError("refine: 1 cannot separate an object from its background; use 0 (off) or 2 or more")
        if self.units == "normalized":
            for region, frames in self.boxes.items():
                for frame, box in frames.items():
                    if box is not None and max(box) > 1.0:
                        raise ValueError(f"boxes: region {region!r} frame {frame}: {list(box)} is outside [0, 1] "
                                         "(units: normalized); for pixel boxes set units: pixels")


def interpolate_box(keyframes: Mapping[int, Box | None], frame: int) -> Box | None:
    """The box at source frame ``frame`` (``None``: absent): linear between two keyframes with boxes,
    held before the first keyframe and after the last; an absent keyframe hides the region until the
    next keyframe, and a box before an absent keyframe is held up to it."""
    frames = sorted(keyframes)
    before = [f for f in frames if f <= frame]
    after = [f for f in frames if f >= frame]
    a = before[-1] if before else after[0]
    b = after[0] if after else before[-1]
    first, second = keyframes[a], keyframes[b]
    if a == b or first is None or second is None:  # on or outside the keyframes, or next to an absence
        return first
    x0, y0, x1, y1 = (float(np.interp(frame, [a, b], [first[c], second[c]])) for c in range(4))
    return x0, y0, x1, y1


def rasterise_box(box: Box | None, height: int, width: int) -> np.ndarray:
    """Bool ``(height, width)``: pixels whose centre lies in ``box`` (pixel units, end exclusive; ``None``: none)."""
    if box is None:
        return np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    return ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]


class BoxLayoutProvider:
    """The ``boxes`` layout provider (see the module docs)."""

    def __init__(self, options: BoxesOptions) -> None:
        self.options = options
        self.feature_request = FeatureRequest(level=options.refine_level) if options.refine else None

    def _pixels(self, box: Box | None, height: int, width: int) -> Box | None:
        if box is not None and self.options.units == "normalized":
            return box[0] * width, box[1] * height, box[2] * width, box[3] * height
        return box

    def _validate(self, spec: EditSpec, regions: Sequence[str], size: tuple[int, int]) -> None:
        for name in self.options.boxes:
            if name not in spec.region_names:
                raise LayoutError(f"layout 'boxes' has boxes for {name!r}, which is not a region of the job "
                                  f"(regions: {', '.join(spec.region_names) or 'none'})", region=name)
        height, width = size
        for region in regions:
            if region not in self.options.boxes:
                given = ", ".join(self.options.boxes) or "none"
                raise LayoutError(f"region {region!r} has no boxes in layout 'boxes' (boxes are given for: {given})",
                                  region=region)
            if self.options.units == "pixels":
                for frame, box in self.options.boxes[region].items():
                    if box is not None and (box[2] > width or box[3] > height):
                        raise LayoutError(
                            f"region {region!r} frame {frame}: box {list(box)} reaches past the {width}x{height} "
                            f"source frame; pixel boxes need x1 <= {width} and y1 <= {height}", region=region)

    def _masks(self, region: str, indices: Sequence[int], size: tuple[int, int]) -> np.ndarray:
        keyframes = self.options.boxes[region]
        return np.stack([rasterise_box(self._pixels(interpolate_box(keyframes, i), *size), *size) for i in indices])

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Validate boxes against the job's regions, the source size and length, and the crop."""
        info, indices, transform = clip.info, clip.indices, clip.transform
        self._validate(spec, regions, info.size)
        for region in regions:
            late = [f for f in self.options.boxes[region] if f >= info.frames]
            if late:
                raise LayoutError(f"region {region!r}: keyframe {late[0]} is past the last source frame "
                                  f"(the clip has {info.frames} frames)", region=region)
            if not transform(self._masks(region, indices, info.size)).any():
                raise LayoutError(f"region {region!r}: its box lies outside the centre crop to "
                                  f"{transform.width}x{transform.height} in every selected frame", region=region)

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Bool ``(F, K, H, W)`` masks for ``regions`` in that order, at the edit size."""
        if not regions:
            return empty_layout(len(request.frame_indices), *np.shape(request.frames)[1:3])
        self._validate(request.spec, regions, request.source_size)
        stacks = []
        for region in regions:
            masks = np.asarray(request.transform(self._masks(region, request.frame_indices, request.source_size)),
                               dtype=bool)
            if not masks.any():
                raise LayoutError(f"region {region!r}: its box lies outside the centre crop in every selected frame",
                                  region=region)
            stacks.append(masks)
        if self.options.refine:
            stacks = self._refine(request, regions, stacks)
        return LayoutMasks(masks=torch.from_numpy(np.stack(stacks, axis=1)), names=tuple(regions))

    def _refine(self, request: LayoutRequest, regions: Sequence[str], boxes: list[np.ndarray]) -> list[np.ndarray]:
        if not isinstance(request.features, InversionFeatures):
            raise LayoutError("layout 'boxes' with refine needs attention features recorded during inversion; run it "
                              "through the Editor (stmod-run edit or stmod-run layout)")
        assert self.feature_request is not None  # set whenever options.refine is, the only caller's condition
        labels = cluster_self_rows(request.features.get(self.feature_request).self_rows.numpy(), self.options.refine)
        labels = request.features.per_clip_frame(labels)  # per latent frame → per clip frame (wan)
        pixels = upsample_labels(labels, *boxes[0].shape[1:])
        refined = []
        for region, box in zip(regions, boxes):
            mask = refine_to_object(box, pixels)
            if not mask.any():
                raise LayoutError(f"region {region!r}: refine left nothing of its box; try more clusters or refine: 0",
                                  region=region)
            refined.append(mask)
        return refined
