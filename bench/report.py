"""Markdown tables in the shape of the paper's Tables 1–3 from a batch's ``run.json`` files.

Not a test. Usage::

    python bench/report.py runs/                       # a batch's output root (reads batch.json)
    python bench/report.py runs/a runs/b --group-by name --out report.md

* **Table 1 — automatic metrics**: CLIP-F, CLIP-T, Warp-Err, Q-edit per group (run ``stmod-run eval``
  or ``batch --eval`` first). Group values are means over the group's runs; Q-edit of a group is
  mean CLIP-T / mean Warp-Err (the ratio of the printed columns, as the paper's rows are).
* **Table 2 — efficiency**: minutes (all phases of the edit), peak GPU and peak RAM in GB (2³⁰ bytes).
* **Table 3 — ablation**: runs classified by their resolved job (``config.yaml``): *baseline* (no
  modulation: ``modulate_cross`` and ``modulate_self`` false, or the ``null`` modulator),
  *+ cross* (``modulate_self: false``), *+ cross + self* (both).
* **Table 4 — regions**: mean per-region CLIP-T and background PSNR/SSIM (metrics the paper does not
  report, for multi-grained edits).

Groups (``--group-by``): a manifest axis of the batch (``preset`` by default when the batch has
presets, else ``name``), or ``name`` (one row per run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

from stmod.plugins.eval.evaluate import efficiency
from stmod.plugins.eval.tables import EFFICIENCY_COLUMNS, METRIC_COLUMNS, Column, markdown_table, rows

ABLATION = ("baseline", "+ cross", "+ self", "+ cross + self")


def _variant(config: dict[str, Any]) -> str:
    modulation = config.get("modulation") or {}
    modulator = config.get("modulator") or {}
    if (modulator.get("name") if isinstance(modulator, dict) else modulator) == "null":
        return "baseline"
    cross, self_ = modulation.get("modulate_cross", True), modulation.get("modulate_self", True)
    return {(False, False): "baseline", (True, False): "+ cross", (False, True): "+ self"}.get((cross, self_),
                                                                                               "+ cross + self")


def _record(folder: Path, axes: dict[str, Any] | None = None) -> dict[str, Any] | None:
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return {"name": folder.name, "folder": str(folder), "axes": axes or {}, "metrics": run.get("metrics") or {},
            "efficiency": efficiency(run), "variant": _variant(config)}


def collect(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """One record per finished run: batch roots (``batch.json``) expand to their done jobs."""
    records = []
    for path in paths:
        summary = path / "batch.json"
        if summary.is_file():
            for job in json.loads(summary.read_text(encoding="utf-8"))["jobs"]:
                if job["status"] == "done":
                    records.append(_record(Path(job["output"]), job.get("axes")))
        elif (path / "run.json").is_file():
            records.append(_record(path))
        else:
            records.extend(_record(p) for p in sorted(path.iterdir())
                           if not p.name.startswith(".") and (p / "run.json").is_file())
    return [r for r in records if r is not None]


def _mean(values: Iterable[Any]) -> float | None:
    found = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return mean(found) if found else None


def aggregate(name: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several runs: means of every number; Q-edit from the mean CLIP-T and Warp-Err."""
    metrics = {k: _mean(m["metrics"].get(k) for m in members) for k in ("clip_f", "clip_t", "warp_err")}
    metrics["q_edit"] = (metrics["clip_t"] / metrics["warp_err"]
                         if metrics["clip_t"] is not None and metrics["warp_err"] else None)
    metrics["background"] = {k: _mean((m["metrics"].get("background") or {}).get(k) for m in members)
                             for k in ("psnr", "ssim")}
    metrics["region_clip_t"] = _mean(r.get("clip_t") for m in members
                                     for r in (m["metrics"].get("regions") or {}).values())
    eff = {k: _mean(m["efficiency"].get(k) for m in members) for k in ("minutes", "gpu_gb", "ram_gb")}
    return {"name": f"{name} (n={len(members)})", "metrics": metrics, "efficiency": eff}


def grouped(records: list[dict[str, Any]], key) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(key(record)), []).append(record)
    return [aggregate(name, members) for name, members in groups.items()]


def report(records: list[dict[str, Any]], group_by: str) -> list[str]:
    """The Markdown report: four tables and the settings the numbers were computed with."""
    key = (lambda r: r["name"]) if group_by == "name" else (lambda r: r["axes"].get(group_by) or r["name"])
    rows_ = grouped(records, key)
    by_variant = {v: [r for r in records if r["variant"] == v] for v in ABLATION}
    ablation = [aggregate(v, members) for v, members in by_variant.items() if members]
    regions = (Column("region CLIP-T ↑", lambda r: r["metrics"].get("region_clip_t")),
               Column("BG PSNR ↑", lambda r: r["metrics"]["background"].get("psnr")),
               Column("BG SSIM ↑", lambda r: r["metrics"]["background"].get("ssim"), 3))
    settings = {json.dumps(r["metrics"].get("settings", {}), sort_keys=True) for r in records if r["metrics"]}
    out = [f"# stmod report ({len(records)} runs, grouped by {group_by})", "",
           "## Table 1 — automatic metrics", "", *markdown_table(rows(rows_, METRIC_COLUMNS, first="method")), "",
           "## Table 2 — efficiency", "", *markdown_table(rows(rows_, EFFICIENCY_COLUMNS, first="method")), "",
           "## Table 3 — ablation of ST-Layout attention", "",
           *markdown_table(rows(ablation, METRIC_COLUMNS, first="variant")), "",
           "## Table 4 — regions and background", "", *markdown_table(rows(rows_, regions, first="method")), ""]
    if len(settings) > 1:
        out += ["**Warning:** the runs were evaluated with different settings; their numbers are not comparable.", ""]
    for text in sorted(settings):
        out.append(f"Metric settings: `{text}`")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="batch output roots or output folders")
    parser.add_argument("--group-by", default=None, choices=("preset", "clip", "prompt", "seed", "name"),
                        help="row grouping (default: preset when the batch has presets, else name)")
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    records = collect(args.paths)
    if not records:
        print("report: no finished runs found under " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return 2
    group_by = args.group_by or ("preset" if any(r["axes"].get("preset") for r in records) else "name")
    text = "\n".join(report(records, group_by)) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
