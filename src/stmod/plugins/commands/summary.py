"""The closing summary of ``edit`` and ``demo``: time, time per phase, memory, cache, the files to open."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["summary_lines", "OPEN_FIRST"]

#: Output files worth opening, in the order a person looks at them, with what each shows.
OPEN_FIRST = (("side_by_side.mp4", "source | edit"), ("result.mp4", "the edit"), ("masks.mp4", "the regions"),
              ("attention_effect.png", "attention without and with modulation"), ("run.json", "figures"))

_GIB = float(1 << 30)


def _memory(run: Mapping[str, Any]) -> str:
    rss, gpu = run.get("peak_rss_bytes"), run.get("peak_gpu_bytes")
    parts = [f"RSS {rss / _GIB:.2f} GiB" if rss else "RSS unknown"]
    parts.append(f"GPU {gpu / _GIB:.2f} GiB" if gpu is not None else "no GPU")
    return ", ".join(parts)


def _cache(run: Mapping[str, Any]) -> str:
    info = run.get("inversion") or {}
    if info.get("cached"):
        return "inversion: cache hit (read, not recomputed)"
    if info.get("key") and info.get("stored", True):  # a run.json without "stored" predates --no-cache's flag
        return "inversion: computed (cache miss; cached for the next run of this clip)"
    return "inversion: computed (cache off)"


def summary_lines(output: Path, run: Mapping[str, Any], *, wall_seconds: float) -> list[str]:
    """What a finished run prints last: total and per-phase seconds, peak memory, cache, files to open."""
    phases = run.get("phases", {})
    per_phase = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items())
    files = [f"  {output / name}  ({what})" for name, what in OPEN_FIRST if (output / name).exists()]
    return [f"done in {wall_seconds:.1f} s: {per_phase}",
            f"peak memory: {_memory(run)}; {_cache(run)}",
            "open:", *files]
