"""Frame windows of the ``window`` temporal focus (pure function)."""

from __future__ import annotations

import pytest

from stmod.core.st_layout.windows import temporal_windows
from stmod.core.types import ModulationConfig


@pytest.mark.parametrize(("frames", "length", "overlap", "anchors"),
                         [(1, 1, 0, 0), (10, 4, 1, 1), (16, 8, 4, 2), (17, 8, 4, 0), (100, 16, 4, 1), (5, 5, 2, 3)])
def test_windows_cover_the_clip_in_linear_work(frames: int, length: int, overlap: int, anchors: int) -> None:
    windows = temporal_windows(frames, length, overlap, anchors)
    covered = sorted({f for q, _ in windows for f in q})
    assert covered == list(range(frames))
    for (q, k), nxt in zip(windows, windows[1:] + [None]):
        assert len(q) == min(length, frames) and q == list(range(q[0], q[0] + len(q)))
        assert k == sorted(set(q) | set(range(min(anchors, frames))))
        if nxt is not None:  # neighbours share at least ``overlap`` frames (the last window may share more)
            assert len(set(q) & set(nxt[0])) >= overlap
    # linear: about frames / (length − overlap) windows of bounded size
    assert len(windows) <= frames // max(1, length - overlap) + 2
    assert max(len(k) for _, k in windows) <= length + anchors


def test_a_long_window_is_the_whole_clip() -> None:
    assert temporal_windows(6, 16, 4, 1) == [(list(range(6)), list(range(6)))]


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        temporal_windows(8, 4, 4, 0)
    with pytest.raises(ValueError, match="window_overlap 8 must be smaller than window_frames 8"):
        ModulationConfig(temporal="window", window_frames=8, window_overlap=8)
