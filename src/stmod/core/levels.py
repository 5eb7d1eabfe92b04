"""UNet levels: each level halves the latent grid with a stride-2 convolution, rounding up.

Level ``r`` of an ``h × w`` latent has ``ceil(h/2^r) × ceil(w/2^r)`` tokens per frame (non-square
latents included). The one place that walks the levels; the engine, the feature recorder and the
feature requests ask here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["level_grid", "level_of"]

#: Enough levels to reach 1×1 from any latent a UNet can take.
_MAX_LEVELS = 16


def level_grid(latent_size: Sequence[int], level: int) -> tuple[int, int]:
    """``(h, w)`` of ``level`` for latents of ``latent_size`` (level 0 is the latent grid)."""
    h, w = int(latent_size[0]), int(latent_size[1])
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def level_of(tokens: int, latent_size: Sequence[int]) -> int | None:
    """The first level with ``tokens`` tokens per frame, or ``None`` when no level has that many."""
    h, w = int(latent_size[0]), int(latent_size[1])
    for level in range(_MAX_LEVELS):
        if h * w == tokens:
            return level
        if h == 1 and w == 1:
            return None
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return None
