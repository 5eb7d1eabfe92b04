"""Run bookkeeping: phase timing and the inversion cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.records import PhaseTimer


def test_phase_timer_accumulates_and_snapshots_running_phases() -> None:
    """Repeated phases add up; a snapshot taken inside a phase includes it."""
    timer = PhaseTimer()
    with timer.phase("a"):
        time.sleep(0.01)
    with timer.phase("b"):
        inside = timer.snapshot()
        time.sleep(0.01)
    with timer.phase("a"):
        time.sleep(0.01)
    assert list(inside) == ["a", "b"] and inside["b"] >= 0.0
    assert timer.ran == ["a", "b"] and timer.seconds["a"] >= 0.02 and timer.seconds["b"] >= 0.01
    assert timer.snapshot() == {k: round(v, 3) for k, v in timer.seconds.items()}


def test_inversion_cache_round_trip_and_keys(tmp_path: Path) -> None:
    """Saved trajectories load back equal; keys change with the frames and the settings."""
    cache = InversionCache(tmp_path)
    frames = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    key = InversionCache.key(frames_digest=InversionCache.digest(frames), settings={"steps": 10})
    assert key != InversionCache.key(frames_digest=InversionCache.digest(frames[::-1].copy()), settings={"steps": 10})
    assert key != InversionCache.key(frames_digest=InversionCache.digest(frames), settings={"steps": 11})
    assert cache.load(key) is None
    trajectory = {0: torch.randn(2, 4, 1, 1), 981: torch.randn(2, 4, 1, 1)}
    cache.save(key, trajectory)
    loaded = cache.load(key)
    assert loaded is not None and all(torch.equal(loaded.trajectory[t], trajectory[t]) for t in trajectory)
    cache.path(key).write_bytes(b"corrupt")
    assert cache.load(key) is None  # unreadable entries are recomputed, not fatal
