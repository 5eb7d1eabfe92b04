"""Two runs of ``bench/quality.py`` side by side: does one model edit differently from another?

Pairs the two runs' edits case by case within each row and prints, per row, both accuracies, their
difference and a 95 % bootstrap interval of it (``scipy.stats.bootstrap`` over the cases, seeded).
An interval that holds 0 says the benchmark cannot tell the two apart on that row: with 30 cases an
interval is about ±0.12 wide, so that is the finest difference between two models it resolves
(docs/shapes.md uses it to compare a model retrained from a clean clone with the shipped one)::

    .venv/bin/python bench/quality_compare.py bench-quality/quality.json retrained/quality.json

Or one run's rows against one of its own, case by case — does the modulation beat the unmodulated
baseline? — on some kinds only; several runs of the same cases (other rows of the same model, run apart)
are pooled into one first::

    .venv/bin/python bench/quality_compare.py bench-quality/quality.json --against none --kinds instance,crossing
    .venv/bin/python bench/quality_compare.py base/quality.json area/quality.json --against control
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

#: What both runs must share for their cases to be the same edits.
SETTINGS = ("frames", "steps", "guidance", "per_kind", "seed")


def check_result(run: dict) -> None:
    """Refuse what is not a ``bench/quality.py`` result, naming the keys it lacks."""
    missing = [k for k in ("model", "rows", "records", *SETTINGS) if k not in run]
    if missing:
        raise ValueError(f"not a bench/quality.py result: it has no {', '.join(map(repr, missing))}")


#: What a comparison can pair, per case: a record's own figure, or ``right`` — the share of the case's
#: region-frames that came out right (clean, in shape, no leakage; ``metrics.failure_causes``).
METRICS = ("accuracy", "clean", "shape_iou", "right")


def value(record: dict, metric: str = "accuracy") -> float:
    """One case's ``metric`` (:data:`METRICS`)."""
    if metric == "right":
        causes = record["causes"]
        return causes["right"] / max(1, sum(causes.values()))
    return float(record[metric])


def paired_accuracy(a: dict, b: dict, metric: str = "accuracy") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row → (``metric`` of ``a``, of ``b``; accuracy by default), case by case in the same order, for the rows
    both ran."""
    for run in (a, b):
        check_result(run)
    differ = [k for k in SETTINGS if a.get(k) != b.get(k)]
    if differ:
        raise ValueError("the two runs edited different cases: " + ", ".join(
            f"{k} {a.get(k)} against {b.get(k)}" for k in differ) + "; rerun one with the other's settings")
    rows = [r for r in a["rows"] if r in b["rows"]]
    if not rows:
        raise ValueError(f"the two runs share no row ({', '.join(a['rows'])} against {', '.join(b['rows'])})")
    pairs = {}
    for row in rows:
        mine = {r["case"]: value(r, metric) for r in a["records"] if r["row"] == row}
        theirs = {r["case"]: value(r, metric) for r in b["records"] if r["row"] == row}
        if mine.keys() != theirs.keys():
            raise ValueError(f"row {row}: the two runs scored different cases")
        cases = sorted(mine)
        pairs[row] = (np.array([mine[c] for c in cases]), np.array([theirs[c] for c in cases]))
    return pairs


def pooled(runs: list[dict]) -> dict:
    """Several runs of the same cases and model as one run with all their rows (a row run twice is refused)."""
    first = runs[0]
    for run in runs[1:]:
        differ = [k for k in (*SETTINGS, "model") if run.get(k) != first.get(k)]
        if differ:
            raise ValueError("the runs edited different cases: " + ", ".join(
                f"{k} {first.get(k)} against {run.get(k)}" for k in differ) + "; pool only runs of the same settings")
    rows = [row for run in runs for row in run["rows"]]
    twice = sorted({row for row in rows if rows.count(row) > 1})
    if twice:
        raise ValueError(f"row {', '.join(twice)} is in more than one run; pool runs of different rows")
    return {**first, "rows": rows, "records": [r for run in runs for r in run["records"]]}


def paired_against(run: dict, baseline: str, kinds: set[str] | None = None,
                   metric: str = "accuracy") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row → (``metric`` of ``baseline``, of the row; accuracy by default), case by case, for every other row of
    ``run`` (the cases of ``kinds`` only, when given)."""
    if baseline not in run.get("rows", []):
        raise ValueError(f"the run has no row {baseline!r} (it has {', '.join(run.get('rows', []))})")
    records = [r for r in run["records"] if kinds is None or r["kind"] in kinds]
    if not records:
        raise ValueError(f"the run has no case of the kinds {', '.join(sorted(kinds or ()))}")
    base = {r["case"]: value(r, metric) for r in records if r["row"] == baseline}
    pairs = {}
    for row in run["rows"]:
        if row == baseline:
            continue
        mine = {r["case"]: value(r, metric) for r in records if r["row"] == row}
        if mine.keys() != base.keys():
            raise ValueError(f"row {row}: scored other cases than row {baseline}")
        cases = sorted(base)
        pairs[row] = (np.array([base[c] for c in cases]), np.array([mine[c] for c in cases]))
    return pairs


def difference_interval(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of mean(b − a), resampling the paired cases."""
    diffs = b - a
    if np.all(diffs == diffs[0]):  # no spread to resample: the interval is the difference itself
        return float(diffs[0]), float(diffs[0])
    result = stats.bootstrap((diffs,), np.mean, n_resamples=10_000, method="percentile",
                             rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def table(pairs: dict[str, tuple[np.ndarray, np.ndarray]], names: tuple[str, str],
          metric: str = "accuracy") -> tuple[str, int]:
    """The Markdown table, and how many rows differ beyond their interval."""
    short = "acc" if metric == "accuracy" else metric
    lines = [f"| row | {short} {names[0]} | {short} {names[1]} | difference | 95 % interval | told apart |",
             "|---|---|---|---|---|---|"]
    apart = 0
    for row, (a, b) in pairs.items():
        low, high = difference_interval(a, b)
        differs = low > 0 or high < 0
        apart += differs
        lines.append(f"| {row} | {a.mean():.2f} | {b.mean():.2f} | {b.mean() - a.mean():+.3f} | "
                     f"[{low:+.3f}, {high:+.3f}] | {'yes' if differs else 'no'} |")
    return "\n".join(lines), apart


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, nargs="+", metavar="quality.json",
                   help="two runs of the same cases (e.g. the shipped and a retrained model); with --against, "
                        "one run or several of the same model and cases, pooled")
    p.add_argument("--against", metavar="ROW", help="instead of a second run: every row of the first run against "
                                                    "its row ROW (e.g. none, the unmodulated baseline)")
    p.add_argument("--kinds", type=lambda v: set(v.split(",")), default=None,
                   help="comma-separated case kinds to compare on (default: all)")
    p.add_argument("--metric", choices=METRICS, default="accuracy",
                   help="the per-case figure compared: accuracy, clean (share of clean region-frames), shape_iou, or "
                        "right (share of region-frames right: clean, in shape, no leakage) (default: %(default)s)")
    args = p.parse_args(argv)
    if args.against is None and len(args.runs) != 2:
        p.error("give two quality.json files, or --against ROW")
    try:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.runs]
        if args.against:
            for run in runs:
                check_result(run)
            pairs = paired_against(pooled(runs), args.against, args.kinds, args.metric)
            names = (args.against, "row")
        else:
            if args.kinds:
                runs = [{**run, "records": [r for r in run["records"] if r["kind"] in args.kinds]} for run in runs]
            pairs = paired_accuracy(*runs, metric=args.metric)
            names = (runs[0]["model"], runs[1]["model"])
    except (OSError, ValueError) as exc:
        print(f"quality_compare: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # a record without its fields
        print(f"quality_compare: not a bench/quality.py result: a record has no {exc}", file=sys.stderr)
        return 2
    text, apart = table(pairs, names, args.metric)
    print(text)
    print(f"{apart} of {len(pairs)} rows differ beyond their 95 % interval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
