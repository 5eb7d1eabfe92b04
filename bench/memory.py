"""Predicted against measured: peak memory and seconds per phase of whole edits, side by side.

Not a test. Each configuration is predicted the way ``stmod-run check`` predicts it (no weights
load: :mod:`stmod.core.budget`) and then edited through the real ``Editor`` in a fresh subprocess, so
that its peak is its own: peak RSS (``ru_maxrss``) on the CPU, ``torch.cuda.max_memory_allocated``
with ``--cuda``. Backbones: ``tiny`` and a full-size SD 1.5 + ControlNet with random weights (built
once into ``--work``; cost does not depend on the weights)::

    .venv/bin/python bench/memory.py                                     # CPU: tiny and SD 1.5 at 128², 2 steps
    .venv/bin/python bench/memory.py --backbone sd15 --frames 4 --size 192
    .venv/bin/python bench/memory.py --cuda --backbone sd15 --frames 32 --size 512 --steps 50

Prints a memory table and a time table (predicted, measured, measured ÷ predicted) and writes them as
JSON (``--json``). Timings depend on the machine's load: note it beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _child import run_again  # bench/, the script's folder, is first on sys.path

PHASES = (("load", "load"), ("encode", "encode"), ("inversion", "invert"), ("denoising", "denoise"),
          ("decoding", "decode"))


def make_spec(config: dict, work: Path):
    """The job of one configuration: the demo clip and masks, the backbone, CPU or CUDA."""
    import attrs

    from stmod.core.config import load_job
    from stmod.plugins.commands.demo import write_demo_inputs

    frames, size, steps = config["frames"], config["size"], config["steps"]
    job = write_demo_inputs(work / f"inputs-{frames}-{size}-{steps}", frames=frames, size=(size, size), steps=steps)
    spec = load_job(job)
    device = "cuda" if config["cuda"] else "cpu"
    changes: dict = {"save_attention": False, "overwrite": True, "output": work / f"out-{config['backbone']}-{frames}",
                     "modulation": attrs.evolve(spec.modulation, temporal=config["temporal"])}
    if config["backbone"] == "sd15":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from edit import build_random_sd15  # the bench's random full-size SD 1.5 + ControlNet

        folder = build_random_sd15(work / "sd15-random")
        changes["backbone"] = attrs.evolve(spec.backbone, name="sd15", options={"model": str(folder), "device": device})
        changes["control"] = (attrs.evolve(spec.control[0], model=str(folder / "controlnet")),)
    else:
        changes["backbone"] = attrs.evolve(spec.backbone, options={**spec.backbone.options, "device": device})
    return attrs.evolve(spec, **changes)


def measure(config: dict, work: Path) -> dict:
    """Edit once in this process (the child); the peak memory and seconds per phase it took."""
    import resource

    import torch

    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.manager import make_plugin_manager

    spec = make_spec(config, work)
    if config["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    run = Editor(make_plugin_manager().registry, progress=False, cache=False).run(spec).run
    peak = torch.cuda.max_memory_allocated() if config["cuda"] else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_bytes": peak, "phases": {name: run["phases"].get(key) for name, key in PHASES}}


def predict(config: dict, work: Path) -> dict:
    """The estimate ``stmod-run check`` prints for this configuration (no weights load)."""
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.commands.prediction import predict as predict_job
    from stmod.plugins.manager import make_plugin_manager

    spec = make_spec(config, work)
    backbone = Editor(make_plugin_manager().registry, progress=False, cache=False).check(spec).backbone
    _, _, found = predict_job(spec, backbone, config["frames"])
    return {"peak_bytes": found.peak_bytes, "peak_phase": found.peak_phase.name,
            "parts": {p.name: p.bytes for p in found.peak_phase.parts},
            "phases": {p.name: p.seconds for p in found.phases},
            "phase_peaks": {p.name: p.peak_bytes for p in found.phases}}


def _ratio(measured: float | None, predicted: float | None) -> str:
    return f"{measured / predicted:.2f}" if measured and predicted else "-"


def print_tables(rows: list[dict], cuda: bool) -> None:
    memory = "GPU max_memory_allocated" if cuda else "peak RSS"
    print(f"\n| backbone | frames | size | steps | focus | predicted GiB (phase) | measured {memory} GiB | measured ÷ predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p, m = r["predicted"], r["measured"]
        print(f"| {r['backbone']} | {r['frames']} | {r['size']}² | {r['steps']} | {r['temporal']} | "
              f"{p['peak_bytes'] / 2**30:.2f} ({p['peak_phase']}) | "
              f"{m['peak_bytes'] / 2**30 if m else float('nan'):.2f} | {_ratio(m and m['peak_bytes'], p['peak_bytes'])} |")
    print("\n| backbone | frames | size | " + " | ".join(f"{name} s pred / meas / ratio" for name, _ in PHASES) + " |")
    print("|---|---|---|" + "---|" * len(PHASES))
    for r in rows:
        p, m = r["predicted"]["phases"], (r["measured"] or {}).get("phases", {})
        cells = [f"{p[name]:.1f} / {m.get(name) or float('nan'):.1f} / {_ratio(m.get(name), p[name])}"
                 for name, _ in PHASES]
        print(f"| {r['backbone']} | {r['frames']} | {r['size']}² | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=("tiny", "sd15", "both"), default="both")
    parser.add_argument("--frames", type=int, nargs="*", help="frame counts (default: tiny 4 8 16, sd15 2 4 8)")
    parser.add_argument("--size", type=int, default=128, help="square edit size (default %(default)s)")
    parser.add_argument("--steps", type=int, default=2, help="DDIM steps (default %(default)s)")
    parser.add_argument("--temporal", default="full", choices=("full", "per-frame", "sparse-causal", "window"))
    parser.add_argument("--cuda", action="store_true", help="run on the CUDA device (peak: max_memory_allocated)")
    parser.add_argument("--work", type=Path, help="working folder, reused (default: $TMPDIR/stmod-memory-bench)")
    parser.add_argument("--json", type=Path, help="write the rows here (default: WORK/memory.json)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a configuration as JSON, measured in the child
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "stmod-memory-bench"
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("STMOD_CACHE_DIR", str(work / "cache"))
    if args.one:
        print(json.dumps(measure(json.loads(args.one), work)))
        return 0
    backbones = ("tiny", "sd15") if args.backbone == "both" else (args.backbone,)
    rows = []
    for backbone in backbones:
        for frames in args.frames or ((4, 8, 16) if backbone == "tiny" else (2, 4, 8)):
            config = {"backbone": backbone, "frames": frames, "size": args.size, "steps": args.steps,
                      "temporal": args.temporal, "cuda": args.cuda}
            predicted = predict(config, work)
            measured, failure = run_again(__file__, ["--work", str(work), "--one", json.dumps(config)])
            if measured is None:
                print(f"{backbone} {frames} frames failed: {failure}")
            rows.append({**config, "predicted": predicted, "measured": measured})
            print(json.dumps(rows[-1]), flush=True)
    print_tables(rows, args.cuda)
    (args.json or work / "memory.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
