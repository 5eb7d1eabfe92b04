"""Plain-text and Markdown tables of metrics and efficiency (``stmod-run eval`` and ``bench/report.py``).

A *record* is what the tables read from one run: ``{"name": str, "metrics": run.json's metrics or {},
"efficiency": stmod.plugins.eval.evaluate.efficiency(run)}``. Missing values print as ``—``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Column", "METRIC_COLUMNS", "EFFICIENCY_COLUMNS", "COMPARE_COLUMNS", "fmt", "text_table",
           "markdown_table", "rows"]

MISSING = "—"


def fmt(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals, ``yes``/``no`` for booleans, ``—`` for ``None``."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


class Column:
    """A table column: a header, how to get the value from a record, and the decimals to print."""

    def __init__(self, header: str, get: Callable[[dict[str, Any]], Any], digits: int = 2) -> None:
        self.header, self.get, self.digits = header, get, digits

    def cell(self, record: dict[str, Any]) -> str:
        try:
            return fmt(self.get(record), self.digits)
        except (KeyError, TypeError):
            return MISSING


def _metric(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r["metrics"].get(key)


def _background(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: (r["metrics"].get("background") or {}).get(key)


def _efficiency(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r["efficiency"].get(key)


#: The paper's Table 1 columns (CLIP-F, CLIP-T, Warp-Err, Q-edit; all ×100 but Q-edit, a ratio).
METRIC_COLUMNS = (
    Column("CLIP-F ↑", _metric("clip_f")),
    Column("CLIP-T ↑", _metric("clip_t")),
    Column("Warp-Err ↓", _metric("warp_err")),
    Column("Q-edit ↑", _metric("q_edit")),
)
#: The paper's Table 2 columns.
EFFICIENCY_COLUMNS = (
    Column("Time (min)", _efficiency("minutes")),
    Column("GPU (GB)", _efficiency("gpu_gb")),
    Column("RAM (GB)", _efficiency("ram_gb")),
)
#: ``stmod-run eval --compare``: everything side by side.
COMPARE_COLUMNS = METRIC_COLUMNS + (
    Column("BG PSNR ↑", _background("psnr")),
    Column("BG SSIM ↑", _background("ssim"), 3),
) + EFFICIENCY_COLUMNS + (Column("inv. cached", _efficiency("inversion_cached")),)


def rows(records: Sequence[dict[str, Any]], columns: Sequence[Column], *, first: str = "run") -> list[list[str]]:
    """Header row, then one row per record: its name, then each column's cell."""
    return [[first, *(c.header for c in columns)]] + [[r["name"], *(c.cell(r) for c in columns)] for r in records]


def text_table(table: Sequence[Sequence[str]]) -> list[str]:
    """Lines of an aligned text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    return [line(table[0]), "  ".join("-" * w for w in widths), *(line(r) for r in table[1:])]


def markdown_table(table: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub Markdown table (numbers right-aligned)."""
    head, *body = table
    align = [":--"] + ["--:"] * (len(head) - 1)
    return ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in body)]
