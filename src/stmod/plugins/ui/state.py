"""What the UI holds between clicks, and how it becomes a job: pure functions, no Gradio.

The app (:mod:`stmod.plugins.ui.app`) keeps, per browser session, the loaded clip (:class:`Clip`) and
the annotations: ``{slot: {source frame: {"box": [x0, y0, x1, y1] | None, "points": [[x, y]],
"labels": [1 | 0]}}}`` in source-frame pixels, exactly the ``prompts`` table of the ``grabcut`` (and
``sam2``) layout provider. :func:`job_mapping` turns them and the form into the mapping of a job
file; the app writes it as ``job.yaml`` and loads it back with :func:`stmod.core.config.load_job`, so
the UI validates and runs exactly what ``stmod-run edit job.yaml`` would.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from attrs import field, frozen

from stmod.core.errors import PromptError, UsageError
from stmod.core.io.video import FrameTransform
from stmod.core.io.visuals import region_colours
from stmod.core.tokens import find_token_spans
from stmod.core.types import as_tuple

__all__ = ["MAX_REGIONS", "MODES", "BACKBONES", "Clip", "Settings", "click", "clear_region", "crop_box", "display_scale",
           "draw_keyframe", "job_mapping", "prompt_flags", "metrics_markdown", "error_line"]

#: Region slots on the page (a fixed number keeps the page's layout static).
MAX_REGIONS = 4
#: What a click on the keyframe does: a box corner, an object click (label 1), a background click (label 0).
MODES = ("box corners", "object click", "background click")

#: Backbones the page offers, each with the sentence shown beside the choice: what it can edit.
BACKBONES = {
    "shapes": "`shapes` edits only its toy world: discs, squares, triangles and rings in eight colours on grass, "
              "sand, sky or snow (trained here, runs on the CPU); real clips need SD 1.5 weights.",
    "sd15": "`sd15` edits real clips with Stable Diffusion 1.5 weights: a diffusers model folder, a .safetensors "
            "file or a hub id (downloaded once); in practice it needs a GPU.",
    "tiny": "`tiny` has random weights: the pipeline runs, but its pictures mean nothing (for tests).",
}

Annotations = dict[int, dict[int, dict[str, Any]]]


@frozen(kw_only=True)
class Clip:
    """The loaded clip and the frame selection the job will use (``size`` is ``(width, height)``)."""

    path: str
    start: int
    every: int
    frames: int
    size: tuple[int, int]
    indices: tuple[int, ...] = field(converter=as_tuple)
    images: np.ndarray = field(eq=False, repr=False)  # uint8 (F, H, W, 3) of ``indices`` at the source size


@frozen(kw_only=True)
class Settings:
    """The form's edit settings."""

    prompt: str
    source_prompt: str = ""
    backbone: str = "shapes"
    #: ``sd15``'s weights: a hub id or the absolute path of a folder or ``.safetensors`` file ("": its default)
    model: str = ""
    blend: str = "latent"
    preset: str = "videograin"
    steps: int = 20
    seed: int = 0


def error_line(exc: BaseException) -> str:
    """The one line the CLI prints for a user error (``stmod-run: error: ...``)."""
    return f"stmod-run: error: {exc}"


def click(annotations: Annotations, pending: list[float] | None, *, slot: int, frame: int, x: float, y: float,
          mode: str) -> tuple[Annotations, list[float] | None, str]:
    """Apply one click on keyframe ``frame``; returns new annotations, the pending box corner, a status line.

    In ``box corners`` mode the first click stores a corner and the second (same region and frame)
    closes the box; clicks in the other modes add a labelled point.
    """
    notes = copy.deepcopy(annotations)
    entry = notes.setdefault(slot, {}).setdefault(frame, {"box": None, "points": [], "labels": []})
    if mode == MODES[0]:
        if pending is None or pending[:2] != [slot, frame]:
            return notes, [slot, frame, x, y], f"region {slot + 1}, frame {frame}: corner at ({x:.0f}, {y:.0f}); " \
                                                "click the opposite corner"
        x0, y0 = pending[2:]
        box = [min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1]  # the second corner's pixel is inside
        entry["box"] = [float(v) for v in box]
        return notes, None, f"region {slot + 1}, frame {frame}: box {[round(v) for v in box]}"
    if mode not in MODES:
        raise ValueError(f"unknown click mode {mode!r}")
    label = 1 if mode == MODES[1] else 0
    entry["points"].append([float(x), float(y)])
    entry["labels"].append(label)
    return notes, pending, f"region {slot + 1}, frame {frame}: {'object' if label else 'background'} click at " \
                           f"({x:.0f}, {y:.0f})"


def clear_region(annotations: Annotations, slot: int) -> Annotations:
    """The annotations without region ``slot``."""
    return {k: copy.deepcopy(v) for k, v in annotations.items() if k != slot}


def display_scale(height: int, width: int, target: int = 512) -> int:
    """The whole-number zoom that shows a small keyframe at about ``target`` pixels (1 for large ones): a
    128-pixel frame at 512, a 256x144 one at 512x288 (the page never enlarges a picture itself)."""
    return max(1, target // max(height, width))


def crop_box(source_width: int, source_height: int, width: int, height: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the part of a source frame an edit at ``width x height`` keeps, in source pixels.

    The edit scales the source to cover the edit size and centre-crops it (:class:`FrameTransform`, the
    geometry the job's reading uses), so a 16:9 clip edited square loses its sides.
    """
    transform = FrameTransform(source_height=source_height, source_width=source_width, height=height, width=width)
    (rh, rw), (top, left) = transform.resized, transform.offset
    sx, sy = source_width / rw, source_height / rh
    return left * sx, top * sy, (left + width) * sx, (top + height) * sy


def _draw_crop(out: np.ndarray, crop: tuple[float, float, float, float], scale: int, thick: int) -> None:
    """Dim what the edit crops away and outline what it keeps (in place; ``crop`` in source pixels)."""
    x0, y0, x1, y1 = (int(round(v * scale)) for v in crop)
    kept = out[y0:y1, x0:x1].copy()
    out[:] = (out * 0.4).astype(np.uint8)
    out[y0:y1, x0:x1] = kept
    cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 255, 255), thick)


def draw_keyframe(image: np.ndarray, annotations: Annotations, frame: int, names: Sequence[str],
                  pending: list[float] | None = None, *, scale: int = 1,
                  crop: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """``image`` zoomed ``scale`` times, with every region's box and clicks on ``frame`` in the region's colour.

    Annotations are in ``image`` pixels; a click on the result at ``(x, y)`` is ``(x / scale, y / scale)``.
    ``crop`` (:func:`crop_box`): the part the edit keeps is outlined and the rest dimmed.
    """
    out = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else image.copy()
    out = np.ascontiguousarray(out)
    thick = max(1, round(max(out.shape[:2]) / 200))
    if crop is not None and tuple(crop) != (0, 0, image.shape[1], image.shape[0]):
        _draw_crop(out, crop, scale, thick)
    colours = region_colours(MAX_REGIONS)

    def at(*values: float) -> tuple[int, ...]:
        return tuple(int(round(v * scale)) for v in values)

    for slot, frames in sorted(annotations.items()):
        entry = frames.get(frame)
        if not entry:
            continue
        colour = tuple(int(c) for c in colours[slot])
        if entry["box"] is not None:
            x0, y0, x1, y1 = at(*entry["box"])
            cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
            label = names[slot] or f"region {slot + 1}"
            cv2.putText(out, label, (x0 + 2, max(10, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, colour, thick)
        for (x, y), value in zip(entry["points"], entry["labels"]):
            marker = cv2.MARKER_CROSS if value else cv2.MARKER_TILTED_CROSS
            cv2.drawMarker(out, at(x, y), colour, marker, 6 * thick, thick)
    if pending is not None and pending[1] == frame:
        cv2.circle(out, at(pending[2], pending[3]), 2 * thick,
                   tuple(int(c) for c in colours[int(pending[0])]), -1)
    return out


def _regions(names: Sequence[str], locals_: Sequence[str], annotations: Annotations) -> dict[int, str]:
    """``{slot: name}`` of the slots in use (a box or clicks, or a local prompt), names checked."""
    used: dict[int, str] = {}
    for slot in range(MAX_REGIONS):
        marked = any(e["box"] is not None or e["points"] for e in annotations.get(slot, {}).values())
        if not (marked or locals_[slot].strip()):
            continue
        name = names[slot].strip()
        if not name:
            raise UsageError(f"region {slot + 1} has a box or a local prompt but no name; type a name for it")
        if name in used.values():
            raise UsageError(f"two regions are named {name!r}; give each region its own name")
        if not marked:  # the mask maker needs a box (or clicks) on some keyframe
            raise UsageError(f"region {slot + 1} ({name}) has a local prompt but no box: pick region {slot + 1}, "
                             "then click two corners of a box around it on the keyframe")
        used[slot] = name
    if not used:
        raise UsageError("no regions yet: pick a region, then click two corners of a box around it on the keyframe")
    return used


def _prompts(annotations: Annotations, slot: int) -> dict[int, dict[str, Any]]:
    table = {}
    for frame, entry in sorted(annotations.get(slot, {}).items()):
        item: dict[str, Any] = {}
        if entry["box"] is not None:
            item["box"] = [round(v, 1) for v in entry["box"]]
        if entry["points"]:
            item["points"] = [[round(v, 1) for v in p] for p in entry["points"]]
            item["labels"] = list(entry["labels"])
        if item:
            table[int(frame)] = item
    return table


def job_mapping(clip: Clip, names: Sequence[str], locals_: Sequence[str], annotations: Annotations,
                settings: Settings, *, output: str = "result") -> dict[str, Any]:
    """The job file's mapping for the form: the clip's selection, prompts, a ``grabcut`` layout, the settings.

    :raises UsageError: for a region without a name, two regions with one name, or no region at all.
    """
    used = _regions(names, locals_, annotations)
    job: dict[str, Any] = {
        "video": {"path": clip.path, "start": clip.start, "every": clip.every, "frames": clip.frames,
                  "size": list(clip.size)},
        "prompt": settings.prompt,
    }
    if settings.source_prompt.strip():
        job["source_prompt"] = settings.source_prompt
    job["regions"] = {name: locals_[slot] for slot, name in used.items()}
    job["layout"] = {"name": "grabcut", "prompts": {name: _prompts(annotations, slot) for slot, name in used.items()}}
    backbone = {"name": settings.backbone}
    if settings.backbone == "sd15" and settings.model.strip():
        backbone["model"] = settings.model.strip()
    job.update({
        "backbone": backbone,
        "blend": settings.blend,
        # No end_step: the job's default window, so the CLI and Python resolve this job to the same edit.
        "modulation": {"preset": settings.preset},
        "steps": settings.steps,
        "seed": settings.seed,
        "save_attention": True,
        "output": output,
        # No overwrite: rerunning the saved job from a shell must not replace its result without --overwrite.
    })
    return job


def prompt_flags(tokenizer: Any, prompt: str, locals_: Sequence[str]) -> list[str]:
    """Per local prompt: ``""`` (empty), a check mark, or the CLI's one-line reason it is not a token span."""
    flags = []
    for local in locals_:
        if not local.strip():
            flags.append("")
            continue
        try:
            (span,) = find_token_spans(tokenizer, prompt, [local])
        except PromptError as exc:
            flags.append(f"⚠ {exc}")
            continue
        flags.append(f"✓ tokens {span.start}–{span.stop - 1} of the global prompt" if span else "")
    return flags


def metrics_markdown(run: Mapping[str, Any]) -> str:
    """The run record's figures as Markdown: attention inside each region, timings, peak memory."""
    rows = [f"| {region} | {100 * mass['plain']:.0f}% | {100 * mass['modulated']:.0f}% |"
            for region, mass in (run.get("attention") or {}).items()]
    parts = []
    if rows:
        parts.append("\n".join(["| region | attention inside its region, plain | modulated |", "|---|---|---|",
                                 *rows]))
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in (run.get("phases") or {}).items())
    parts.append(f"**time**: {phases}")
    if run.get("peak_rss_bytes"):
        parts.append(f"**peak RSS**: {run['peak_rss_bytes'] / 2**20:.0f} MiB")
    if run.get("peak_gpu_bytes"):
        parts.append(f"**peak GPU memory**: {run['peak_gpu_bytes'] / 2**20:.0f} MiB")
    return "\n\n".join(parts)
