"""The output folder of ``stmod-run layout``, written atomically (a failed run leaves nothing behind).

``masks.mp4``
    The regions tinted over the edit's frames, with a legend.
``masks/<region>/<NNNNN>.png``
    One folder per region, one 8-bit PNG (0 or 255) per selected frame, **named by the absolute
    source frame index** (``%05d.png``) and drawn **at the source frames' size** — exactly what the
    ``masks`` layout provider (and the official VideoGrain code) reads. So
    ``layout: {name: masks, dir: <this folder>/masks}`` gives back the same layout for the same job
    (pixels outside the centre crop are 0), e.g. to fix a K-Means layout by hand and reuse it without
    clustering again. The mapping back is exact whenever the source frames are at least as large as
    the crop (every crop pixel then has its own source pixel).
``clusters.mp4`` (``clusters-<i>.mp4`` for the i-th of several)
    For each layout entry that reports what it found (:class:`~stmod.core.protocols.LayoutReporting`;
    ``kmeans``: every cluster, labelled ``<id> <words naming it> > <region>``, to choose cluster ids
    for ``assign``).
``layout.json``
    Regions (pixel share, which layout entry made each), source frame indices, sizes, the K-Means
    cluster tables, inversion cache use and timings.
``config.yaml``
    The resolved job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from stmod.core.config import dump_job
from stmod.core.protocols import LayoutReporting
from stmod.core.types import EditSpec
from stmod.core.io.ownership import atomic_folder
from stmod.core.io.video import FrameTransform, write_mp4
from stmod.core.io.outputs import region_labels
from stmod.core.io.visuals import mask_overlay

if TYPE_CHECKING:
    from stmod.core.pipeline.editor import LayoutResult

__all__ = ["masks_to_source", "write_layout_outputs"]


def masks_to_source(masks: np.ndarray, transform: FrameTransform) -> np.ndarray:
    """Edit-size masks bool ``(F, H, W)`` → source-size masks bool ``(F, Hs, Ws)``.

    Each source pixel takes the edit pixel its centre falls in (0 outside the crop); then every source
    pixel that ``transform`` samples is set to the edit pixel it feeds, so ``transform(result)``
    equals ``masks`` exactly when the source is at least as large as the crop.
    """
    masks = np.asarray(masks, dtype=bool)
    frames, height, width = masks.shape
    hs, ws = transform.source_height, transform.source_width
    (rh, rw), (top, left) = transform.resized, transform.offset
    rows = np.floor((np.arange(hs) + 0.5) * rh / hs).astype(np.int64) - top
    cols = np.floor((np.arange(ws) + 0.5) * rw / ws).astype(np.int64) - left
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    out = masks[:, rows.clip(0, height - 1)][:, :, cols.clip(0, width - 1)] & inside
    sampled = np.asarray(transform(np.arange(hs * ws, dtype=np.int64).reshape(hs, ws))).ravel()
    flat = out.reshape(frames, -1)
    flat[:, sampled] = masks.reshape(frames, -1)
    return flat.reshape(frames, hs, ws)


def _reports(result: LayoutResult, frames: np.ndarray) -> list[tuple[str, np.ndarray, list[Mapping[str, object]]]]:
    """``(entry place, overlay clip, table)`` for every layout entry that reports what it found (K-Means)."""
    found = []
    for provider, assignment in result.components.layouts:
        report = provider.report(*frames.shape[1:3]) if isinstance(provider, LayoutReporting) else None
        if report is not None:
            found.append((assignment.place, mask_overlay(frames, report.masks, report.legend), list(report.table)))
    return found


def write_layout_outputs(spec: EditSpec, result: LayoutResult) -> dict[str, Any]:
    """Write the folder described in the module docs for ``result`` (an ``Editor.layout`` result).

    :returns: the record written to ``layout.json``.
    """
    clip, layout = result.clip, result.layout
    masks = layout.masks.numpy()
    owner = {r: a.place for _, a in result.components.layouts for r in a.regions}
    clusters = _reports(result, clip.frames)
    record = {
        "regions": {name: {"layout": owner.get(name), "pixels": round(float(masks[:, k].mean()), 4)}
                    for k, name in enumerate(layout.names)},
        "source_frames": list(clip.indices),
        "source_size": [clip.transform.source_width, clip.transform.source_height],
        "size": [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
        "masks": "masks/<region>/<source frame index, %05d>.png at the source size; 255 = in the region",
        "clusters": {place: table for place, _, table in clusters},
        **result.run,
    }
    with atomic_folder(spec.output, kind="layout output") as folder:
        if layout.names:
            write_mp4(folder / "masks.mp4", mask_overlay(clip.frames, masks, layout.names,
                                                         labels=region_labels(spec, layout.names)), clip.fps)
        for k, name in enumerate(layout.names):
            (folder / "masks" / name).mkdir(parents=True)
            for index, mask in zip(clip.indices, masks_to_source(masks[:, k], clip.transform), strict=True):
                png = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
                png.save(folder / "masks" / name / f"{index:05d}.png")
        for i, (_, overlay, _) in enumerate(clusters):
            write_mp4(folder / ("clusters.mp4" if len(clusters) == 1 else f"clusters-{i}.mp4"), overlay, clip.fps)
        (folder / "config.yaml").write_text(dump_job(spec, rerunnable=True), encoding="utf-8")
        (folder / "layout.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record
