"""Edit quality on the shapes world: the paper's ablation, measured on a model trained here.

Runs fixed shapes-world edits (``--per-kind`` of each kind: class, instance, part, object, crossing;
see :mod:`stmod.backbones.shapes.edits`) through the real :class:`Editor` on the ``shapes`` backbone,
once per row — no modulation (the global prompt alone), the ``videograin`` composite text without
modulation, cross only, self only, both (``videograin``), both (``paper``), the temporal focus
``per-frame`` / ``sparse-causal`` / ``window``, without the latent blend, and with masks downsampled by
area instead of the official nearest —
and scores each result against the world's exact masks (:mod:`stmod.backbones.shapes.metrics`).
Prints a table and writes ``quality.json``::

    .venv/bin/python bench/quality.py                     # 30 cases x 11 rows (~10 min at --frames 4 --steps 12)
    .venv/bin/python bench/quality.py --per-kind 2 --rows none,both

Inversions are cached per clip (in ``OUT/cache``), so rows that share one reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import yaml
from tqdm.auto import tqdm

from stmod import Editor
from stmod.backbones.shapes import edits, independent, metrics
from stmod.core.config import load_job
from stmod.core.pipeline.cache import InversionCache
from stmod.core.types import ComponentRef

#: Structure guidance as the official configs add it (their recipe: a ControlNet, PnP, FLATTEN), at the
#: shapes model's scale: its ControlNet on the canny annotator's edges, PnP injecting for the first half of
#: the steps, FLATTEN on the latent grid (level 0, the official ``flatten_res: [1]``).
CONTROL = {"control": [{"annotator": "canny", "scale": 1.0}]}
FLATTEN = {"name": "flatten", "levels": [0]}


def _pnp(steps: int) -> dict:
    return {"name": "pnp", "inject_step": steps // 2}


#: Row name → (description, modulation overrides, blend or None for the job's, job additions).
#: A job addition is a function of the step count returning keys added to the job file.
ROWS: dict[str, tuple[str, dict, str | None, object]] = {
    "none": ("no modulation (global prompt only)",
             {"preset": "paper", "modulate_cross": False, "modulate_self": False}, None, None),
    # The videograin preset also changes the text: its conditional branch is the composite embedding
    # of the local prompts. This row has that text and no attention modulation.
    "text": ("videograin's composite text, no modulation", {"modulate_cross": False, "modulate_self": False}, None,
             None),
    "cross": ("cross-attention only", {"modulate_self": False}, None, None),
    "self": ("self-attention only", {"modulate_cross": False}, None, None),
    "both": ("cross + self, videograin preset", {}, None, None),
    "paper": ("cross + self, paper preset", {"preset": "paper"}, None, None),
    "per-frame": ("both, temporal focus per-frame", {"temporal": "per-frame"}, None, None),
    "sparse-causal": ("both, temporal focus sparse-causal", {"temporal": "sparse-causal"}, None, None),
    "window": ("both, temporal focus window (2 frames, overlap 1, 1 anchor)",
               {"temporal": "window", "window_frames": 2, "window_overlap": 1, "anchor_frames": 1}, None, None),
    "no-blend": ("both, no latent blend", {}, "none", None),
    # The official nearest downsampling keeps a latent cell when its top-left pixel is inside the mask,
    # shifting masks down-right by half a cell (16 px at 4x4 on 128² frames); area keeps them centred.
    "area": ("both, masks downsampled by area", {"mask_downsample": "area"}, None, None),
    "control": ("both + the model's ControlNet on canny edges", {}, None, lambda steps: CONTROL),
    "pnp": ("both + PnP (inject for half the steps)", {}, None, lambda steps: {"extensions": [_pnp(steps)]}),
    "flatten": ("both + FLATTEN (level 0)", {}, None, lambda steps: {"extensions": [FLATTEN]}),
    "official": ("control + PnP + FLATTEN + videograin modulation: the official configs' recipe", {}, None,
                 lambda steps: {**CONTROL, "extensions": [_pnp(steps), FLATTEN]}),
}
#: The rows run by default (the structure-guided rows need a model folder with a ControlNet).
DEFAULT_ROWS = tuple(r for r in ROWS if r not in ("control", "official"))


def score(case, source: np.ndarray, result: np.ndarray, frames: int) -> dict:
    """The metrics of one edited clip (means over its regions)."""
    _, bodies, parts = case.render(frames, (source.shape[2], source.shape[1]))
    masks = edits.case_masks(case, bodies, parts)
    colours = {r.name: r.colour for r in case.regions}
    accuracy = [metrics.attribute_accuracy(result, masks[r.name], r.colour) for r in case.regions]
    leak = metrics.leakage(source, result, masks, colours)
    return {
        "accuracy": float(np.mean(accuracy)),
        "shape_iou": float(np.mean([metrics.shape_iou(result, masks[r.name], r.colour) for r in case.regions])),
        "clean": float(np.mean([metrics.clean_frames(result, masks[r.name], r.colour) for r in case.regions])),
        "leakage": float(np.mean(list(leak.values()))),
        "background_psnr": metrics.background_psnr(source, result, (bodies | parts).any(axis=1)),
        "flicker": float(np.mean([metrics.flicker(result, masks[r.name]) for r in case.regions])),
    }


def _row_job(job: Path, row: str, steps: int) -> Path:
    """The case's job file with the row's additions (control, extensions), written beside it."""
    additions = ROWS[row][3]
    if additions is None:
        return job
    data = yaml.safe_load(job.read_text(encoding="utf-8"))
    data.update(additions(steps))
    path = job.with_name(f"job-{row}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run(args: argparse.Namespace, save) -> dict:
    """Every row over every case; ``save(results)`` after each row, so a long run keeps what it did."""
    out: Path = args.out.absolute()
    cases = (edits.benchmark_cases(args.per_kind, seed=args.seed) if args.cases == "benchmark" else
             independent.independent_cases(args.per_kind, seed=args.seed))
    rows = [r.strip() for r in args.rows.split(",")]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"quality: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    editor = Editor.from_plugins(progress=False, cache=InversionCache(out / "cache"))
    jobs = {c.name: edits.write_case(out / "cases" / c.name, c, frames=args.frames, steps=args.steps) for c in cases}
    frames_of = {c.name: c.frames or args.frames for c in cases}
    records = []
    bar = tqdm(total=len(rows) * len(cases), desc="quality", unit="edit")
    for row in rows:
        _, modulation, blend, _ = ROWS[row]
        for case in cases:
            # the editor's registry already has the plugins' job formats: no plugin manager per case
            spec = load_job(_row_job(jobs[case.name], row, args.steps), formats=editor.registry.job_formats.values())
            if args.model:
                spec = attrs.evolve(spec, backbone=ComponentRef(name="shapes", options={"folder": str(args.model)}))
            spec = attrs.evolve(spec, modulation=attrs.evolve(spec.modulation, **modulation),
                                blend=ComponentRef(name=blend) if blend else spec.blend,
                                output=out / "runs" / row / case.name, overwrite=True,
                                guidance=args.guidance if args.guidance is not None else spec.guidance)
            began = time.perf_counter()
            result = editor.run(spec)
            seconds = time.perf_counter() - began
            records.append({"row": row, "case": case.name, "kind": case.kind, "seconds": seconds,
                            **score(case, result.source, result.frames, frames_of[case.name])})
            bar.update()
        done = rows[: rows.index(row) + 1]
        results = {"model": str(args.model or "shipped"), "cases": args.cases, "frames": args.frames,
                   "steps": args.steps,
                   "guidance": args.guidance,
                   "per_kind": args.per_kind, "seed": args.seed,
                   "rows": done, "records": records, "summary": summarise(records, done)}
        save(results)
    bar.close()
    return results


def summarise(records: list[dict], rows: list[str]) -> dict:
    """Per row: accuracy overall and per kind, mean leakage, background PSNR, flicker, seconds per edit."""
    summary = {}
    for row in rows:
        mine = [r for r in records if r["row"] == row]
        entry = {"accuracy": float(np.mean([r["accuracy"] for r in mine]))}
        for kind in edits.KINDS:
            of_kind = [r["accuracy"] for r in mine if r["kind"] == kind]
            if of_kind:
                entry[f"accuracy_{kind}"] = float(np.mean(of_kind))
        for key in ("shape_iou", "clean", "leakage", "background_psnr", "flicker", "seconds"):
            entry[key] = float(np.mean([r[key] for r in mine]))
        summary[row] = entry
    return summary


def table(summary: dict) -> str:
    kinds = [k for k in edits.KINDS if any(f"accuracy_{k}" in s for s in summary.values())]
    head = ["row", "acc"] + [f"acc {k}" for k in kinds] + ["shape IoU", "clean", "leak %", "bg PSNR", "flicker",
                                                            "s/edit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        cells = [row, f"{s['accuracy']:.2f}"] + [f"{s.get(f'accuracy_{k}', float('nan')):.2f}" for k in kinds]
        cells += [f"{s.get('shape_iou', float('nan')):.2f}", f"{s.get('clean', float('nan')):.2f}",
                  f"{100 * s['leakage']:.2f}", f"{s['background_psnr']:.1f}", f"{s['flicker']:.1f}",
                  f"{s['seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-kind", type=int, default=6, help="cases of each kind (default: %(default)s; 5 kinds)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="first case seed")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the cases' 7.5)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                   help=f"comma-separated rows (default: {','.join(DEFAULT_ROWS)}); all: " + ", ".join(ROWS))
    p.add_argument("--cases", choices=("benchmark", "independent"), default="benchmark",
                   help="benchmark: the world generator's cases; independent: clips drawn by another renderer "
                        "(other textures, sizes, positions and frame counts; stmod.backbones.shapes.independent)")
    p.add_argument("--model", type=Path, default=None, help="a shapes model folder (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("bench-quality"), help="work folder (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="where the results go (default: OUT/quality.json)")
    args = p.parse_args(argv)
    if args.model is not None:
        # absolute: a relative folder would be read against each case's job folder, not the shell's
        args.model = args.model.absolute()
        if not (args.model / "model_index.json").is_file():
            raise SystemExit(f"quality: --model {args.model} is not a diffusers model folder (no model_index.json);"
                             " give the model/ folder that the training command wrote")
    path = args.json or args.out / "quality.json"

    def save(results: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    results = run(args, save)
    print(f"shapes world ({args.cases} cases), {len(results['records']) // len(results['rows'])} edits per row, "
          f"{args.frames} frames, {args.steps} steps, guidance {args.guidance if args.guidance is not None else 7.5}")
    for row in results["rows"]:
        print(f"  {row}: {ROWS[row][0]}")
    print(table(results["summary"]))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
