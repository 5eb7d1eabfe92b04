"""Frame windows of the ``window`` temporal focus: long clips in linear time and memory.

Self-attention over a whole clip costs ``(F·N)²``; with windows each query frame attends only to the
frames of its window plus a few shared anchor frames, so the cost grows linearly with ``F``. Windows
of ``length`` frames start every ``length − overlap`` frames, the last one ending at the clip's end;
a frame in several windows takes the mean of their outputs (the overlap blends neighbouring windows).
A window that covers the clip is exactly full space-time attention.
"""

from __future__ import annotations

__all__ = ["temporal_windows"]


def temporal_windows(frames: int, length: int, overlap: int, anchors: int) -> list[tuple[list[int], list[int]]]:
    """``[(query frames, key frames), ...]`` covering ``frames`` frames; key frames in ascending order.

    :param length: frames per window (a window of at least ``frames`` is the whole clip).
    :param overlap: frames two neighbouring windows share (``0 <= overlap < length``).
    :param anchors: the clip's first ``anchors`` frames are keys of every window.
    """
    if frames < 1 or length < 1 or not 0 <= overlap < length or anchors < 0:
        raise ValueError(f"bad windows: frames={frames}, length={length}, overlap={overlap}, anchors={anchors}")
    if length >= frames:
        return [(list(range(frames)), list(range(frames)))]
    starts = list(range(0, frames - length + 1, length - overlap))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    shared = set(range(min(anchors, frames)))
    return [(list(range(s, s + length)), sorted(shared | set(range(s, s + length)))) for s in starts]
