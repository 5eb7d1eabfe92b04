"""``stmod-run eval RESULT_DIR…``: CLIP-T, CLIP-F, Warp-Err, Q-edit, region and background metrics.

Metrics go into each folder's ``run.json`` (key ``metrics``, rewritten atomically) and are printed;
``--compare`` prints all folders side by side with the efficiency columns of the paper's Table 2.
A folder that holds no ``run.json`` but has output folders inside (a batch's root) stands for them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any


from stmod.core.errors import InputError
from stmod.plugins.eval.names import DEFAULT_CLIP, METRICS, parse_metrics
from stmod.plugins.eval.tables import COMPARE_COLUMNS, fmt, rows, text_table

if TYPE_CHECKING:  # the metrics import torch: only when a command evaluates
    from stmod.cli import Session
    from stmod.plugins.eval.evaluate import EvalOptions

__all__ = ["add_eval_arguments", "eval_options", "expand_result_dirs", "configure", "run"]


def _metrics_arg(text: str) -> tuple[str, ...]:
    return () if text.strip().lower() == "none" else parse_metrics(text)


def add_eval_arguments(parser: argparse.ArgumentParser | Any, *, default_metrics: str = "all") -> None:
    """The metric options shared by ``eval`` and ``batch --eval``."""
    parser.add_argument("--metrics", type=_metrics_arg, default=_metrics_arg(default_metrics), metavar="LIST",
                        help=f"comma list of {', '.join(METRICS)}; 'all' (default) or 'none' (print what "
                             "run.json holds)")
    parser.add_argument("--clip", default=DEFAULT_CLIP, metavar="ID|PATH",
                        help=f"CLIP checkpoint: hub id or folder (default {DEFAULT_CLIP}, as LOVEU-TGVE)")
    parser.add_argument("--clip-f-mode", choices=("consecutive", "pairwise"), default="consecutive",
                        help="CLIP-F over consecutive frames (the paper) or all pairs (TGVE)")
    parser.add_argument("--flow", choices=("dis", "raft"), default="dis",
                        help="source flow for Warp-Err: OpenCV DIS (default, no weights) or RAFT-Large")
    parser.add_argument("--raft-weights", type=Path, metavar="PATH", help="torchvision raft_large state_dict (.pth)")
    parser.add_argument("--warp-norm", choices=("mse", "l1"), default="mse",
                        help="per-pixel error of Warp-Err (default mse, as Lai et al. 2018)")
    parser.add_argument("--no-occlusion", dest="occlusion", action="store_false",
                        help="score every pixel (no forward-backward occlusion mask)")
    parser.add_argument("--eval-device", default="auto", metavar="DEVICE",
                        help="device for CLIP/RAFT (auto, cpu, cuda)")
    parser.add_argument("--recompute", action="store_true", help="recompute metrics already in run.json")


def eval_options(args: argparse.Namespace) -> EvalOptions:
    """The :class:`EvalOptions` described by the flags of :func:`add_eval_arguments`."""
    from stmod.plugins.eval.evaluate import EvalOptions

    return EvalOptions(metrics=args.metrics, clip=args.clip, clip_f_mode=args.clip_f_mode, flow=args.flow,
                       raft_weights=args.raft_weights, warp_norm=args.warp_norm, occlusion=args.occlusion,
                       device=args.eval_device, recompute=args.recompute)


def expand_result_dirs(paths: list[Path]) -> list[Path]:
    """Output folders named by ``paths``: each one itself, or the output folders directly inside it.

    :raises InputError: for a path that is neither.
    """
    found: list[Path] = []
    for path in paths:
        if (path / "run.json").is_file():
            found.append(path)
            continue
        # hidden folders are skipped: an edit interrupted while being written leaves ".NAME.*.tmp"
        children = sorted(path.iterdir()) if path.is_dir() else []
        inner = [p for p in children if not p.name.startswith(".") and (p / "run.json").is_file()]
        if not inner:
            raise InputError("RESULT_DIR", str(path), "is not an output folder (no run.json) and holds none")
        found.extend(inner)
    return list(dict.fromkeys(found))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", type=Path, metavar="RESULT_DIR",
                        help="output folders of edits (or folders holding them, such as a batch's output)")
    add_eval_arguments(parser)
    parser.add_argument("--compare", action="store_true",
                        help="one table: every folder side by side, with time, peak GPU and RAM")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def _per_run(name: str, metrics: dict[str, Any], eff: dict[str, Any]) -> list[str]:
    settings = metrics.get("settings", {})
    clip, warp = settings.get("clip", {}), settings.get("warp", {})
    lines = [f"{name}  (frames: {metrics.get('frames_from', '—')}; CLIP: {clip.get('model', '—')}, "
             f"CLIP-F {clip.get('clip_f', '—')}; flow: {warp.get('flow', '—')}, {warp.get('norm', '—')}"
             f"{', occlusion' if warp.get('occlusion') else ''})"]
    table = [["metric", "value"],
             ["CLIP-T", fmt(metrics.get("clip_t"))], ["CLIP-F", fmt(metrics.get("clip_f"))],
             ["Warp-Err", fmt(metrics.get("warp_err"), 3)], ["Q-edit", fmt(metrics.get("q_edit"))],
             ["occluded share", fmt(metrics.get("occluded"), 3)]]
    background = metrics.get("background") or {}
    table += [["background PSNR (dB)", fmt(background.get("psnr"))],
              ["background SSIM", fmt(background.get("ssim"), 3)]]
    for region, values in (metrics.get("regions") or {}).items():
        table.append([f"{region} CLIP-T ({values.get('frames', 0)} frames)", fmt(values.get("clip_t"))])
    table += [["time (min)", fmt(eff["minutes"])], ["peak GPU (GB)", fmt(eff["gpu_gb"])],
              ["peak RAM (GB)", fmt(eff["ram_gb"])]]
    return lines + ["  " + line for line in text_table(table)]


def run(args: argparse.Namespace, session: Session) -> int:
    session.status("eval: loading the metrics...")
    from tqdm.auto import tqdm

    from stmod.plugins.eval.evaluate import Evaluator, efficiency, load_run

    dirs = expand_result_dirs(args.dirs)
    evaluator = Evaluator(eval_options(args))
    todo = set().union(*(evaluator.todo(folder) for folder in dirs)) if args.metrics else set()
    evaluator.prepare(todo)  # a missing CLIP/RAFT checkpoint fails here, before any work
    records: list[dict[str, Any]] = []
    for folder in tqdm(dirs, desc="eval", unit="run", disable=len(dirs) < 2 or not todo, leave=False):
        metrics = evaluator.evaluate_folder(folder, registry=session.registry) if args.metrics else \
            dict(load_run(folder).get("metrics") or {})
        records.append({"name": str(folder), "metrics": metrics, "efficiency": efficiency(load_run(folder))})
    if args.json:
        session.echo(json.dumps({r["name"]: {"metrics": r["metrics"], "efficiency": r["efficiency"]}
                                 for r in records}, indent=2))
    elif args.compare:
        for line in text_table(rows(records, COMPARE_COLUMNS)):
            session.echo(line)
    else:
        for record in records:
            for line in _per_run(record["name"], record["metrics"], record["efficiency"]):
                session.echo(line)
    return 0
