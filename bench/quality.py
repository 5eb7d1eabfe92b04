"""Edit quality on the shapes world: the paper's ablation, measured on a model trained here.

Runs fixed shapes-world edits (``--per-kind`` of each kind: class, instance, part, object, crossing;
see :mod:`stmod.backbones.shapes.edits`) through the real :class:`Editor` on the ``shapes`` backbone,
once per row — no modulation (the global prompt alone), the ``videograin`` composite text without
modulation, cross only, self only, both (``videograin``), both (``paper``), the temporal focus
``per-frame`` / ``sparse-causal`` / ``window``, without the latent blend, and with masks downsampled by
area instead of the official nearest; on request the structure guidance of the official configs
(``control``, ``pnp``, ``flatten``, ``official``) and the diagnosis rows (``modulate-60``/``-100``: a
longer modulation window; ``recon-1``/``recon-7.5``/``recon``: no edit at all, the source prompt denoised
at guidance 1, 7.5 or ``--guidance``, scored against the source) — and scores each result against the world's exact masks
(:mod:`stmod.backbones.shapes.metrics`), sorting every region-frame that failed by its cause. Prints two
tables and writes ``quality.json``::

    .venv/bin/python bench/quality.py                     # 30 cases x 11 rows (~10 min at --frames 4 --steps 12)
    .venv/bin/python bench/quality.py --per-kind 2 --rows none,both
    .venv/bin/python bench/quality.py --out bench-quality --rescore   # a finished run, scored again

Inversions are cached per clip (in ``OUT/cache``), so rows that share one reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import yaml
from attrs import frozen
from tqdm.auto import tqdm

from stmod import Editor
from stmod.backbones.shapes import edits, independent, metrics
from stmod.core.config import load_job
from stmod.core.io.evaldata import read_eval_frames
from stmod.core.pipeline.cache import InversionCache
from stmod.core.types import ComponentRef

#: Structure guidance as the official configs add it (their recipe: a ControlNet, PnP, FLATTEN), at the
#: shapes model's scale: its ControlNet on the canny annotator's edges, PnP injecting for the first half of
#: the steps, FLATTEN on the latent grid (level 0, the official ``flatten_res: [1]``).
CONTROL = {"control": [{"annotator": "canny", "scale": 1.0}]}
FLATTEN = {"name": "flatten", "levels": [0]}
#: Negative-prompt inversion: classifier-free guidance away from the source prompt.
NPI = {"inversion": "negative-prompt"}
#: Direct inversion: each denoising step corrected by the drift of the source prompt's guided step.
DIRECT = {"inversion": "direct"}
#: Guidance in the first half of the denoising steps only (the demo's); the rest run the conditional branch.
GUIDED_50 = {"guidance_interval": [0, 0.5]}
#: The paper preset with masks downsampled by area: the modulation of the demo's recipe and its variants.
PAPER_AREA = {"preset": "paper", "mask_downsample": "area"}


def _pnp(steps: int) -> dict:
    return {"name": "pnp", "inject_step": steps // 2}


def _add(keys) -> Callable[[dict, int], dict]:
    """A job change that adds the keys ``keys(steps)`` returns."""
    return lambda job, steps: {**job, **keys(steps)}


def _then(first: Callable[[dict, int], dict], second: Callable[[dict, int], dict]) -> Callable[[dict, int], dict]:
    """Two job changes, ``first`` then ``second``."""
    return lambda job, steps: second(first(job, steps), steps)


def _modulate_until(share: float) -> Callable[[dict, int], dict]:
    """A job change that modulates the first ``share`` of the steps (the cases modulate the first 30 %)."""
    return lambda job, steps: {**job, "modulation": {**job["modulation"], "end_step": max(1, round(steps * share))}}


def _reconstruct(guidance: float | None) -> Callable[[dict, int], dict]:
    """A job change that edits nothing: the source prompt as the target, no regions, at ``guidance`` (``None``:
    the run's). What it loses, no edit can keep."""
    def change(job: dict, steps: int) -> dict:
        kept = {k: v for k, v in job.items() if k not in ("regions", "layout", "modulation")}
        return {**kept, "prompt": job["source_prompt"], **({} if guidance is None else {"guidance": guidance})}
    return change


@frozen
class Row:
    """A benchmark row: how it changes each case's job and what it is."""

    description: str
    #: modulation fields set on the job (after its file is read)
    modulation: dict = attrs.field(factory=dict)
    #: the blend, or ``None`` for the job's
    blend: str | None = None
    #: a change of the job file's data, given the step count
    job: Callable[[dict, int], dict] | None = None
    #: scored against the source (the objects' own colours) instead of the regions' targets
    reconstruction: bool = False
    #: guidance fixed by the row (``--guidance`` does not change it)
    guidance: float | None = None


ROWS: dict[str, Row] = {
    "none": Row("no modulation (global prompt only)",
                {"preset": "paper", "modulate_cross": False, "modulate_self": False}),
    # The videograin preset also changes the text: its conditional branch is the composite embedding
    # of the local prompts. This row has that text and no attention modulation.
    "text": Row("videograin's composite text, no modulation", {"modulate_cross": False, "modulate_self": False}),
    "cross": Row("cross-attention only", {"modulate_self": False}),
    "self": Row("self-attention only", {"modulate_cross": False}),
    "both": Row("cross + self, videograin preset"),
    "paper": Row("cross + self, paper preset", {"preset": "paper"}),
    "per-frame": Row("both, temporal focus per-frame", {"temporal": "per-frame"}),
    "sparse-causal": Row("both, temporal focus sparse-causal", {"temporal": "sparse-causal"}),
    "window": Row("both, temporal focus window (2 frames, overlap 1, 1 anchor)",
                  {"temporal": "window", "window_frames": 2, "window_overlap": 1, "anchor_frames": 1}),
    "no-blend": Row("both, no latent blend", blend="none"),
    # The official nearest downsampling keeps a latent cell when its top-left pixel is inside the mask,
    # shifting masks down-right by half a cell (16 px at 4x4 on 128² frames); area keeps them centred.
    "area": Row("both, masks downsampled by area", {"mask_downsample": "area"}),
    "control": Row("both + the model's ControlNet on canny edges", job=_add(lambda steps: CONTROL)),
    "official-area": Row("official, masks downsampled by area", {"mask_downsample": "area"},
                         job=_add(lambda steps: {**CONTROL, "extensions": [_pnp(steps), FLATTEN]})),
    "none-control": Row("no modulation (global prompt only) + the ControlNet",
                        {"preset": "paper", "modulate_cross": False, "modulate_self": False},
                        job=_add(lambda steps: CONTROL)),
    "control-area": Row("control, masks downsampled by area", {"mask_downsample": "area"}, job=_add(lambda steps: CONTROL)),
    # Guidance only while the colours are decided (the first steps); the rest follow the conditional prediction,
    # as the inversion did, so that the late steps keep to the clip instead of drifting at guidance 7.5.
    "guided-30": Row("control-area, guidance in the first 30 % of the steps", {"mask_downsample": "area"},
                     job=_add(lambda steps: {**CONTROL, "guidance_interval": [0, 0.3]})),
    "guided-50": Row("control-area, guidance in the first 50 % of the steps", {"mask_downsample": "area"},
                     job=_add(lambda steps: {**CONTROL, **GUIDED_50})),
    # paper-guided-50 without modulation: the same text, masks (for the blend), ControlNet and guidance
    "none-guided-50": Row("no modulation + the ControlNet, guidance in the first 50 % of the steps",
                          {"preset": "paper", "modulate_cross": False, "modulate_self": False,
                           "mask_downsample": "area"},
                          job=_add(lambda steps: {**CONTROL, **GUIDED_50})),
    "recon-guided-50": Row("reconstruction at guidance 7.5 in the first 50 % of the steps",
                           job=_then(_reconstruct(7.5), _add(lambda steps: GUIDED_50)),
                           reconstruction=True, guidance=7.5),
    # Does one object's colour reach the other through self-attention? λ of self-attention at the cross one's
    # scale (1.0 instead of the paper's 0.3): keys of the other region all but cut off in the first steps.
    "strong-self": Row("control-area, self-attention modulated at strength 1.0", {"mask_downsample": "area",
                       "self_strength": 1.0}, job=_add(lambda steps: CONTROL)),
    # The videograin preset leaves the finest layers stock (the official code's xformers path); at the shapes
    # model's 16×16 latents those are the layers that paint each object's colour.
    "finest": Row("control-area, the finest layers modulated too", {"mask_downsample": "area", "modulate_finest": True},
                  job=_add(lambda steps: CONTROL)),
    # The paper preset modulates self-attention in the conditional branch (videograin: the unconditional one, as
    # the official code), the finest layers too, and conditions on the global prompt (no composite text).
    "paper-area": Row("control-area with the paper preset", PAPER_AREA,
                      job=_add(lambda steps: CONTROL)),
    # The official code modulates self-attention in the unconditional branch, which guidance g weighs by 1 − g:
    # these rows modulate the conditional branch's instead (as the paper preset and DenseDiffusion do).
    "cond-self": Row("control-area, self-attention modulated in the conditional branch",
                     {"mask_downsample": "area", "self_branch": "cond"}, job=_add(lambda steps: CONTROL)),
    "cond-self-finest": Row("cond-self with the finest layers modulated too",
                            {"mask_downsample": "area", "self_branch": "cond", "modulate_finest": True},
                            job=_add(lambda steps: CONTROL)),
    "paper-guided-50": Row("paper-area, guidance in the first 50 % of the steps", PAPER_AREA,
                           job=_add(lambda steps: {**CONTROL, **GUIDED_50})),
    # Does the demo's recipe lose colours after the modulation's window (the first 30 % of the steps) or through
    # the other object's keys in self-attention? Neither, measured (docs/shapes.md, fifth session).
    "paper-guided-50-modulate-100": Row("paper-guided-50, modulating every step", PAPER_AREA,
                                        job=_then(_add(lambda steps: {**CONTROL, **GUIDED_50}), _modulate_until(1.0))),
    "paper-guided-50-strong-self": Row("paper-guided-50, self-attention modulated at strength 1.0",
                                       {**PAPER_AREA, "self_strength": 1.0},
                                       job=_add(lambda steps: {**CONTROL, **GUIDED_50})),
    # The demo's recipe without structure guidance: for a model folder that has no ControlNet (yet).
    "paper-guided-50-no-control": Row("paper-guided-50 without the ControlNet", PAPER_AREA,
                                      job=_add(lambda steps: GUIDED_50)),
    "finest-guided-50": Row("finest, guidance in the first 50 % of the steps",
                            {"mask_downsample": "area", "modulate_finest": True},
                            job=_add(lambda steps: {**CONTROL, **GUIDED_50})),
    "pnp": Row("both + PnP (inject for half the steps)", job=_add(lambda steps: {"extensions": [_pnp(steps)]})),
    "flatten": Row("both + FLATTEN (level 0)", job=_add(lambda steps: {"extensions": [FLATTEN]})),
    "official": Row("control + PnP + FLATTEN + videograin modulation: the official configs' recipe",
                    job=_add(lambda steps: {**CONTROL, "extensions": [_pnp(steps), FLATTEN]})),
    # When are colours decided? The cases modulate the first 30 % of the steps (videograin's window).
    "modulate-60": Row("both, modulating the first 60 % of the steps", job=_modulate_until(0.6)),
    "modulate-100": Row("both, modulating every step", job=_modulate_until(1.0)),
    # Reconstruction: invert and denoise with the source prompt, no edit; scored against the source.
    "recon-1": Row("reconstruction: the source prompt, no regions, guidance 1", job=_reconstruct(1.0),
                   reconstruction=True, guidance=1.0),
    "recon-7.5": Row("reconstruction: the source prompt, no regions, guidance 7.5", job=_reconstruct(7.5),
                     reconstruction=True, guidance=7.5),
    "recon": Row("reconstruction at the run's guidance (--guidance)", job=_reconstruct(None), reconstruction=True),
    # Negative-prompt inversion: guidance away from the source prompt instead of the empty one.
    "recon-npi": Row("reconstruction at guidance 7.5 with negative-prompt inversion",
                     job=_then(_reconstruct(7.5), _add(lambda steps: NPI)), reconstruction=True, guidance=7.5),
    "none-npi": Row("no modulation, negative-prompt inversion",
                    {"preset": "paper", "modulate_cross": False, "modulate_self": False}, job=_add(lambda steps: NPI)),
    "npi": Row("both, negative-prompt inversion", job=_add(lambda steps: NPI)),
    "control-npi": Row("control, negative-prompt inversion", job=_add(lambda steps: {**CONTROL, **NPI})),
    "recon-direct": Row("reconstruction at guidance 7.5 with direct inversion",
                        job=_then(_reconstruct(7.5), _add(lambda steps: DIRECT)), reconstruction=True, guidance=7.5),
    "none-direct": Row("no modulation, direct inversion",
                       {"preset": "paper", "modulate_cross": False, "modulate_self": False},
                       job=_add(lambda steps: DIRECT)),
    "direct": Row("both, direct inversion", job=_add(lambda steps: DIRECT)),
    "control-direct": Row("control, direct inversion", job=_add(lambda steps: {**CONTROL, **DIRECT})),
    "official-direct": Row("official, direct inversion",
                           job=_add(lambda steps: {**CONTROL, "extensions": [_pnp(steps), FLATTEN], **DIRECT})),
    "official-npi": Row("official, negative-prompt inversion",
                        job=_add(lambda steps: {**CONTROL, "extensions": [_pnp(steps), FLATTEN], **NPI})),
}
#: The rows run by default (the structure-guided rows need a model folder with a ControlNet; the diagnosis
#: rows are asked for by name).
DEFAULT_ROWS = ("none", "text", "cross", "self", "both", "paper", "per-frame", "sparse-causal", "window",
                "no-blend", "area", "pnp", "flatten")


def score(case, source: np.ndarray, result: np.ndarray, frames: int, *, reconstruction: bool = False) -> dict:
    """The metrics of one edited clip (means over its regions), and its regions' frames by failure cause.
    ``reconstruction``: each object of the scene is a region whose target is its own source colour."""
    _, bodies, parts = case.render(frames, (source.shape[2], source.shape[1]))
    if reconstruction:
        masks = {f"object{k}": bodies[:, k] for k in range(bodies.shape[1]) if bodies[:, k].any()}
        colours = {name: metrics.dominant_colour(source, mask) for name, mask in masks.items()}
        things = {f"object{k}": [k] for k in range(bodies.shape[1])}
    else:
        masks = edits.case_masks(case, bodies, parts)
        colours = {r.name: r.colour for r in case.regions}
        things = {r.name: list(r.things) for r in case.regions}
    names = list(masks)
    accuracy = [metrics.attribute_accuracy(result, masks[n], colours[n]) for n in names]
    leak = metrics.leakage(source, result, masks, colours)
    causes = dict.fromkeys(("right", *metrics.CAUSES), 0)
    wrong = dict.fromkeys(metrics.WRONG_COLOURS, 0)
    swaps = dict.fromkeys(metrics.SWAP_KINDS, 0)
    objects = bodies | parts
    for n in names:
        same = [masks[o] for o in names if o != n and colours[o] == colours[n]]
        exclude = np.any(same, axis=0) if same else None
        found = metrics.failure_causes(source, result, masks[n], colours[n], exclude=exclude)
        causes = {k: causes[k] + found[k] for k in causes}
        rest = objects[:, things[n]].any(axis=1) & ~masks[n]  # the rest of the region's objects: a part's body
        shown = metrics.wrong_colours(source, result, masks[n], colours[n], exclude=exclude, rest=rest,
                                      others=[colours[o] for o in names if o != n])
        wrong = {k: wrong[k] + shown[k] for k in wrong}
        by_target = {c: np.any([masks[o] for o in names if colours[o] == c], axis=0)
                     for c in {colours[o] for o in names if o != n and colours[o] != colours[n]}}
        split = metrics.swap_kinds(source, result, masks[n], colours[n], exclude=exclude, rest=rest, others=by_target)
        swaps = {k: swaps[k] + split[k] for k in swaps}
    return {
        "accuracy": float(np.mean(accuracy)),
        "shape_iou": float(np.mean([metrics.shape_iou(result, masks[n], colours[n]) for n in names])),
        "clean": float(np.mean([metrics.clean_frames(result, masks[n], colours[n]) for n in names])),
        "leakage": float(np.mean(list(leak.values()))),
        "background_psnr": metrics.background_psnr(source, result, (bodies | parts).any(axis=1)),
        "flicker": float(np.mean([metrics.flicker(result, masks[n]) for n in names])),
        "causes": causes,
        "wrong_colours": wrong,
        "swaps": swaps,
    }


def _row_job(job: Path, row: str, steps: int) -> Path:
    """The case's job file with the row's changes (control, extensions, prompts), written beside it."""
    change = ROWS[row].job
    if change is None:
        return job
    data = change(yaml.safe_load(job.read_text(encoding="utf-8")), steps)
    path = job.with_name(f"job-{row}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run(args: argparse.Namespace, save) -> dict:
    """Every row over every case; ``save(results)`` after each row, so a long run keeps what it did."""
    out: Path = args.out.absolute()
    cases = (edits.benchmark_cases(args.per_kind, seed=args.seed) if args.cases == "benchmark" else
             independent.independent_cases(args.per_kind, seed=args.seed))
    if args.kinds:
        unknown = sorted(args.kinds - set(edits.KINDS))
        if unknown:
            raise SystemExit(f"quality: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(edits.KINDS)}")
        cases = [c for c in cases if c.kind in args.kinds]
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
        spec_of = ROWS[row]
        for case in cases:
            # the editor's registry already has the plugins' job formats: no plugin manager per case
            spec = load_job(_row_job(jobs[case.name], row, args.steps), formats=editor.registry.job_formats.values())
            if args.model or args.backbone != "shapes":
                spec = attrs.evolve(spec, backbone=ComponentRef(
                    name=args.backbone, options={"folder": str(args.model)} if args.model else {}))
            guidance = spec_of.guidance if spec_of.guidance is not None else args.guidance
            spec = attrs.evolve(spec, modulation=attrs.evolve(spec.modulation, **spec_of.modulation),
                                blend=ComponentRef(name=spec_of.blend) if spec_of.blend else spec.blend,
                                output=out / "runs" / row / case.name, overwrite=True,
                                guidance=guidance if guidance is not None else spec.guidance)
            began = time.perf_counter()
            result = editor.run(spec)
            seconds = time.perf_counter() - began
            records.append({"row": row, "case": case.name, "kind": case.kind, "seconds": seconds,
                            **score(case, result.source, result.frames, frames_of[case.name],
                                    reconstruction=spec_of.reconstruction)})
            bar.update()
        done = rows[: rows.index(row) + 1]
        results = {"backbone": args.backbone, "model": str(args.model or "shipped"), "cases": args.cases,
                   "frames": args.frames,
                   "steps": args.steps,
                   "guidance": args.guidance,
                   "per_kind": args.per_kind, "seed": args.seed, "kinds": sorted(args.kinds or edits.KINDS),
                   "rows": done, "records": records, "summary": summarise(records, done)}
        save(results)
    bar.close()
    return results


def rescore(results: dict, out: Path) -> dict:
    """``results`` (a finished run's ``quality.json``) scored again, with the metrics as they are now, from the
    frames each edit saved under ``OUT/runs/ROW/CASE/eval/`` (lossless): nothing is edited again."""
    maker = edits.benchmark_cases if results.get("cases", "benchmark") == "benchmark" else independent.independent_cases
    cases = {c.name: c for c in maker(results["per_kind"], seed=results["seed"])}
    records = []
    for record in results["records"]:
        saved = read_eval_frames(out / "runs" / record["row"] / record["case"])
        if saved is None:
            raise SystemExit(f"quality: --rescore: {out / 'runs' / record['row'] / record['case']} has no eval/ frames; "
                             "run the rows again")
        source, result = saved
        case = cases[record["case"]]
        records.append({**{k: record[k] for k in ("row", "case", "kind", "seconds")},
                        **score(case, source, result, len(result), reconstruction=ROWS[record["row"]].reconstruction)})
    return {**results, "records": records, "summary": summarise(records, results["rows"])}


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
        for key in ("shape_iou", "clean", "leakage", "flicker", "seconds"):
            entry[key] = float(np.mean([r[key] for r in mine]))
        entry["background_psnr"] = pooled_psnr([r["background_psnr"] for r in mine])
        counted = [r["causes"] for r in mine if "causes" in r]
        if counted:
            total = max(1, sum(sum(c.values()) for c in counted))
            entry["causes"] = {k: sum(c[k] for c in counted) / total for k in ("right", *metrics.CAUSES)}
        shown = [r["wrong_colours"] for r in mine if "wrong_colours" in r]
        if counted and shown:  # shares of all region-frames, as the causes: they split the causes' colour share
            entry["wrong_colours"] = {k: sum(c[k] for c in shown) / total for k in metrics.WRONG_COLOURS}
        split = [r["swaps"] for r in mine if "swaps" in r]
        if counted and split:
            entry["swaps"] = {k: sum(c[k] for c in split) / total for k in metrics.SWAP_KINDS}
        summary[row] = entry
    return summary


def pooled_psnr(psnrs: list[float]) -> float:
    """The PSNR of the cases' mean squared error: a case whose background came back exact (∞ dB) counts as
    zero error instead of making the row's mean ∞."""
    mse = np.mean([255.0**2 * 10 ** (-p / 10) for p in psnrs])
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


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


def causes_table(summary: dict) -> str:
    """Per row, the share of region-frames that came out right and of those that failed, by cause."""
    head = ["row", "right", *(f"failed: {c}" for c in metrics.CAUSES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        if "causes" in s:
            lines.append("| " + " | ".join([row] + [f"{s['causes'][k]:.2f}" for k in ("right", *metrics.CAUSES)])
                         + " |")
    return "\n".join(lines)


def wrong_colours_table(summary: dict) -> str:
    """Per row, the region-frames failed for colour (shares of all), by the colour shown instead."""
    head = ["row", "failed: colour", *(f"of which {k}" for k in metrics.WRONG_COLOURS),
            *(f"swapped: {k}" for k in metrics.SWAP_KINDS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, s in summary.items():
        if "wrong_colours" in s:
            split = [f"{s['swaps'][k]:.2f}" if "swaps" in s else "" for k in metrics.SWAP_KINDS]
            lines.append("| " + " | ".join([row, f"{s['causes']['colour']:.2f}"]
                                           + [f"{s['wrong_colours'][k]:.2f}" for k in metrics.WRONG_COLOURS] + split)
                         + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-kind", type=int, default=6, help="cases of each kind (default: %(default)s; 5 kinds)")
    p.add_argument("--kinds", type=lambda v: set(v.split(",")), default=None,
                   help="only these kinds of case, comma-separated (default: all five)")
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
    p.add_argument("--backbone", choices=("shapes", "shapes-wan"), default="shapes",
                   help="shapes: the SD-1.5-layout UNet model; shapes-wan: the Wan-layout model (frames must be "
                        "1 + 4k; it takes no ControlNet or extension rows) (default: %(default)s)")
    p.add_argument("--model", type=Path, default=None,
                   help="a model folder of the --backbone (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("bench-quality"), help="work folder (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="where the results go (default: OUT/quality.json)")
    p.add_argument("--rescore", action="store_true",
                   help="edit nothing: score OUT's finished run again from its saved frames with the current metrics "
                        "(rewrites its quality.json; the other options are the run's own)")
    args = p.parse_args(argv)
    if args.model is not None:
        # absolute: a relative folder would be read against each case's job folder, not the shell's
        args.model = args.model.absolute()
        part = "transformer" if args.backbone == "shapes-wan" else "model_index.json"
        if not (args.model / part).exists():
            raise SystemExit(f"quality: --model {args.model} is not a diffusers model folder (no {part});"
                             " give the model/ folder that the training command wrote")
    path = args.json or args.out / "quality.json"

    def save(results: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)

    if args.rescore:
        if not path.is_file():
            raise SystemExit(f"quality: --rescore: no {path}; give the --out of a finished run")
        results = rescore(json.loads(path.read_text(encoding="utf-8")), args.out.absolute())
        save(results)
        args.backbone, args.cases, args.frames, args.steps, args.guidance = (
            results["backbone"], results["cases"], results["frames"], results["steps"], results["guidance"])
    else:
        results = run(args, save)
    print(f"{args.backbone} on the shapes world ({args.cases} cases), {len(results['records']) // len(results['rows'])} edits per row, "
          f"{args.frames} frames, {args.steps} steps, guidance {args.guidance if args.guidance is not None else 7.5}")
    for row in results["rows"]:
        print(f"  {row}: {ROWS[row].description}")
    print(table(results["summary"]))
    print("\nregion-frames by failure cause (stmod.backbones.shapes.metrics.failure_causes; shares of all):")
    print(causes_table(results["summary"]))
    print("\nregion-frames failed for colour, by the colour shown instead (metrics.wrong_colours; shares of all):")
    print(wrong_colours_table(results["summary"]))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
