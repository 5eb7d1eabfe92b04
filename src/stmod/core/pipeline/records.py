"""Run bookkeeping: wall time per phase, peak memory and versions.

Everything here is cheap and model-agnostic; the editor writes it to ``run.json``.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import sys
import time
from collections.abc import Iterator
from importlib import metadata

import torch

__all__ = ["PhaseTimer", "peak_rss_bytes", "peak_gpu_bytes", "versions"]


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase, in the order phases first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.ran: list[str] = []
        self._running: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self._running[name] = time.perf_counter()
        if name not in self.ran:
            self.ran.append(name)
        try:
            yield
        finally:
            del self._running[name]
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def snapshot(self) -> dict[str, float]:
        """Seconds per phase so far, phases still running included (rounded to ms)."""
        now = time.perf_counter()
        return {name: round(self.seconds.get(name, 0.0) + now - self._running.get(name, now), 3) for name in self.ran}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_gpu_bytes() -> int | None:
    """Peak CUDA memory allocated by torch in this process, or ``None`` without CUDA."""
    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated())


def versions() -> dict[str, str]:
    """Versions of stmod and the libraries that decide its numbers."""
    found = {"python": platform.python_version()}
    for name in ("stmod", "torch", "diffusers", "transformers", "numpy"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["cuda"] = torch.version.cuda or "none"
    return found
