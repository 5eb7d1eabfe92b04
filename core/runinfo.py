"""Run bookkeeping: wall time per phase, peak memory, versions, and the inversion cache.

Everything here is cheap and model-agnostic; the orchestrator writes it to ``run.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["PhaseTimer", "peak_rss_bytes", "versions", "InversionCache", "cache_root"]

log = logging.getLogger(__name__)

#: Bump when the inversion algorithm changes, so stale cached trajectories are not reused.
INVERSION_FORMAT = 1


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


def cache_root() -> Path:
    """``$STMOD_CACHE_DIR`` or ``~/.cache/stmod``."""
    return Path(os.environ.get("STMOD_CACHE_DIR") or Path.home() / ".cache" / "stmod")


class InversionCache:
    """DDIM inversion trajectories on disk, keyed by everything that determines them.

    The key covers the clip content (a hash of the selected, resized frames, so frame selection and
    size are included), the model, the dtype, the number of steps, the source prompt and the control
    settings. Files are written atomically; a corrupt file is ignored and overwritten.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "inversion"

    @staticmethod
    def key(*, frames_digest: str, settings: Mapping[str, Any]) -> str:
        payload = json.dumps({"format": INVERSION_FORMAT, "frames": frames_digest, **settings},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @staticmethod
    def digest(array) -> str:
        """Content hash of a numpy array (shape, dtype and bytes)."""
        h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
        h.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> dict[int, torch.Tensor] | None:
        entry = self.load_entry(key)
        return None if entry is None else entry[0]

    def load_entry(self, key: str) -> tuple[dict[int, torch.Tensor], dict[str, Any] | None] | None:
        """``(trajectory, features or None)`` stored under ``key`` (see :meth:`save`), or ``None``."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return {int(k): v for k, v in data["trajectory"].items()}, data.get("features")
        except Exception as exc:  # unreadable: recompute rather than fail the edit
            log.warning("ignoring unreadable inversion cache %s: %s", path, exc)
            return None

    def save(self, key: str, trajectory: Mapping[int, torch.Tensor], *,
             features: Mapping[str, Any] | None = None) -> Path:
        """Store ``trajectory`` (and the inversion ``features`` state of K-Means layouts, if given)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            data: dict[str, Any] = {"trajectory": {int(k): v.detach().cpu() for k, v in trajectory.items()}}
            if features is not None:
                data["features"] = dict(features)
            torch.save(data, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
