"""Long clips: the ``window`` temporal focus against ``full`` on the shapes world (time, peak RSS, quality).

Each row edits one shapes-world clip (``make_case(KIND, 0)`` rendered at F frames) through the real
``Editor`` on the ``shapes`` backbone, in a fresh subprocess so its peak RSS is its own. ``full`` is
space-time attention over the whole clip (memory and time grow with F²); ``window`` attends within
windows of ``--window`` frames (overlap ``--overlap``, ``--anchors`` shared first frames), so they
grow with F. Prints a table::

    .venv/bin/python bench/long_clip.py                                   # 16, 64 and 128 frames
    .venv/bin/python bench/long_clip.py --runs 16:full,16:window --steps 4
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from _child import run_again  # bench/, the script's folder, is first on sys.path

DEFAULT_RUNS = "16:full,16:window,64:full,64:window,128:window"


def one(frames: int, mode: str, args: argparse.Namespace) -> dict:
    """Edit one clip; the metrics of :mod:`stmod.backbones.shapes.metrics` against the exact masks."""
    import attrs
    import numpy as np

    from stmod import Editor
    from stmod.plugins.manager import load_job
    from stmod.backbones.shapes import edits, metrics, world

    case = edits.make_case(args.kind, 0)
    work = Path(tempfile.mkdtemp(prefix="stmod-long-"))
    spec = load_job(edits.write_case(work / "case", case, frames=frames, steps=args.steps))
    focus = {"temporal": mode}
    if mode == "window":
        focus.update(window_frames=args.window, window_overlap=args.overlap, anchor_frames=args.anchors)
    spec = attrs.evolve(spec, modulation=attrs.evolve(spec.modulation, **focus), output=work / "out")
    began = time.perf_counter()
    result = Editor.from_plugins(progress=False, cache=False).run(spec)
    seconds = time.perf_counter() - began
    _, bodies, parts = world.render_clip(case.scene, frames)
    masks = edits.case_masks(case, bodies, parts)
    accuracy = np.mean([metrics.attribute_accuracy(result.frames, masks[r.name], r.colour) for r in case.regions])
    leak = metrics.leakage(result.source, result.frames, masks, {r.name: r.colour for r in case.regions})
    return {"frames": frames, "mode": mode, "seconds": seconds, "accuracy": float(accuracy),
            "leakage": float(np.mean(list(leak.values()))),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=DEFAULT_RUNS, help="FRAMES:MODE,... (default: %(default)s)")
    p.add_argument("--kind", default="crossing", help="shapes edit kind (default: %(default)s)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--overlap", type=int, default=4)
    p.add_argument("--anchors", type=int, default=1)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # FRAMES:MODE, in the child process
    args = p.parse_args(argv)
    if args.one:
        frames, mode = args.one.split(":")
        print(json.dumps(one(int(frames), mode, args)))
        return 0
    passed = ["--kind", args.kind, "--steps", str(args.steps), "--window", str(args.window),
              "--overlap", str(args.overlap), "--anchors", str(args.anchors)]
    print(f"shapes world, kind {args.kind}, {args.steps} steps; window {args.window} frames, overlap "
          f"{args.overlap}, {args.anchors} anchor(s)")
    print("| frames | focus | seconds | peak RSS GiB | accuracy | leakage % |")
    print("|---|---|---|---|---|---|")
    for run in args.runs.split(","):
        r, failure = run_again(__file__, [*passed, "--one", run])
        if r is None:
            print(f"| {run} | failed: {failure} |")
            continue
        print(f"| {r['frames']} | {r['mode']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | "
              f"{r['accuracy']:.2f} | {100 * r['leakage']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
