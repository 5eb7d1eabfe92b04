"""FLATTEN trajectories (Cong et al. 2023, as the official VideoGrain code builds them) and the
trajectory attention that uses them: pure functions of flows and tensors, no model.

Construction, per UNet level of an ``h × w`` grid and ``F`` frames (tokens indexed ``t·N + r·w + c``):

1. the pixel flow of each consecutive pair, sampled nearest at the level's grid, scaled to its cells
   and rounded (half to even, as ``torch.round``);
2. every token of frames ``0 … F−2`` links to the token its flow lands on in the next frame (none when
   it lands outside);
3. a token reached by several links keeps one of them, chosen by a seeded ``numpy.random.Generator``
   (``floor(u·n)`` with ``u = rng.random()``, one draw per conflict in the order of each conflict's
   first source token); the other sources end their trajectory there;
4. the links form disjoint paths: the trajectories (a token nobody links to starts one);
5. per token, the official *sequence*: itself, its spatial neighbours within radius ``w`` (the
   in-grid ones first, raster order, then padding), then the other points of its trajectory in time
   order (then padding), with a validity mask; the official attention reads entry 0 and the **last
   F − 1 entries** of that sequence (``traj[..., -F+1:]``), which are the trajectory points whenever
   some trajectory spans the whole clip (and otherwise include the tail of the neighbour part —
   an oddity kept for fidelity).

Provenance: steps 2–5 follow ``sample_trajectories_new`` in VideoGrain's ``common/image_util.py``
(itself FLATTEN's ``models/util.py``) and the key selection its ``fully_frame_forward``; here the
loops are vectorised, grids may be non-square (the official ``x//H, x%H`` assumes square) and the
conflict draw is seeded instead of Python's global ``random``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TrajectoryKeys", "level_trajectories", "level_flows", "link_targets", "resolve_conflicts", "trajectory_roots",
           "trajectory_keys", "trajectory_attention"]


@attrs.frozen(kw_only=True)
class TrajectoryKeys:
    """What one level's tokens attend to: ``keys`` ``int32 (F·N, K)`` token indices of the clip
    (frames outer), ``valid`` ``bool (F·N, K)``, entry 0 the token itself (always valid)."""

    keys: np.ndarray = attrs.field(eq=False)
    valid: np.ndarray = attrs.field(eq=False)
    grid: tuple[int, int]
    #: points of the longest trajectory
    longest: int


def level_flows(flows: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Pixel flows ``float (F−1, H, W, 2)`` ``(dx, dy)`` → ``int64 (F−1, h, w, 2)`` cells of ``grid``.

    Nearest sampling (the official ``interpolate`` default) and a per-axis scale ``w/W``, ``h/H``;
    for grids in the frame's aspect ratio this is the official ``round(max(h,w)·flow/max(H,W))``.
    """
    h, w = int(grid[0]), int(grid[1])
    if len(flows) == 0:
        return np.zeros((0, h, w, 2), np.int64)
    pixel = torch.from_numpy(np.ascontiguousarray(flows, dtype=np.float32)).permute(0, 3, 1, 2)
    sampled = F.interpolate(pixel, size=(h, w), mode="nearest")
    scale = torch.tensor([w / flows.shape[2], h / flows.shape[1]], dtype=torch.float32).view(1, 2, 1, 1)
    return torch.round(sampled * scale).to(torch.int64).permute(0, 2, 3, 1).numpy()


def link_targets(cells: np.ndarray) -> np.ndarray:
    """``int (F−1, h, w, 2)`` cell flows → ``int64 (F·N,)``: the token each token links to, −1 for none."""
    steps, h, w, _ = cells.shape
    n = h * w
    target = np.full((steps + 1) * n, -1, np.int64)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r, c = rows[None] + cells[..., 1], cols[None] + cells[..., 0]  # (dx, dy): row moves by dy
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    frames = np.arange(steps).reshape(-1, 1, 1)
    flat = (frames + 1) * n + r * w + c
    target[: steps * n] = np.where(inside, flat, -1).reshape(-1)
    return target


def resolve_conflicts(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep one link into each token reached by several (seeded draw, see the module notes)."""
    target = target.copy()
    source = np.flatnonzero(target >= 0)
    if not len(source):
        return target
    order = np.lexsort((source, target[source]))  # by target, then source (raster order)
    src, tgt = source[order], target[source[order]]
    _, first, group, counts = np.unique(tgt, return_index=True, return_inverse=True, return_counts=True)
    conflicts = np.flatnonzero(counts > 1)
    conflicts = conflicts[np.argsort(src[first[conflicts]])]  # the official dict order: by first source
    draws = rng.random(len(conflicts))
    size = counts[conflicts]
    winner = first[conflicts] + np.minimum((draws * size).astype(np.int64), size - 1)
    loser = counts[group] > 1
    loser[winner] = False
    target[src[loser]] = -1
    return target


def trajectory_roots(target: np.ndarray, frames: int) -> np.ndarray:
    """``int64 (F·N,)``: the first token of each token's trajectory (links must be conflict-free)."""
    n = len(target) // frames
    previous = np.full(len(target), -1, np.int64)
    linked = np.flatnonzero(target >= 0)
    previous[target[linked]] = linked
    root = np.arange(len(target), dtype=np.int64)
    for t in range(1, frames):  # a frame's predecessors all lie in the frame before
        part = slice(t * n, (t + 1) * n)
        before = previous[part]
        root[part] = np.where(before >= 0, root[np.maximum(before, 0)], root[part])
    return root


def _neighbours(grid: tuple[int, int], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, its in-grid neighbours within ``radius`` (raster order of offsets, then padding 0):
    ``int64 (N, (2r+1)²−1)`` cell indices and their validity."""
    h, w = grid
    offsets = [(i, j) for i in range(-radius, radius + 1) for j in range(-radius, radius + 1) if (i, j) != (0, 0)]
    rows, cols = np.divmod(np.arange(h * w), w)
    di = np.array([o[0] for o in offsets], np.int64).reshape(1, -1)
    dj = np.array([o[1] for o in offsets], np.int64).reshape(1, -1)
    r, c = rows[:, None] + di, cols[:, None] + dj
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    cells = np.where(inside, r * w + c, 0)
    packed = np.argsort(~inside, axis=1, kind="stable")  # in-grid ones first, order kept
    return np.take_along_axis(cells, packed, 1), np.take_along_axis(inside, packed, 1)


def trajectory_keys(target: np.ndarray, *, frames: int, grid: Sequence[int], radius: int) -> TrajectoryKeys:
    """The official per-token sequences from conflict-free links, cut to what the attention reads."""
    grid = (int(grid[0]), int(grid[1]))
    n = grid[0] * grid[1]
    total = frames * n
    root = trajectory_roots(target, frames)
    frame = np.arange(total, dtype=np.int64) // n
    length = np.bincount(root, minlength=total)[root]
    start = frame[root]
    longest = int(length.max())
    table = np.zeros((total, frames), np.int64)  # table[root, t]: the trajectory's token at frame t
    table[root, frame] = np.arange(total)
    k = np.arange(longest - 1, dtype=np.int64).reshape(1, -1)
    at = start[:, None] + k
    at = at + (at >= frame[:, None])  # skip the token itself
    traj_valid = k < (length[:, None] - 1)
    traj = np.where(traj_valid, table[root[:, None], np.minimum(at, frames - 1)], 0)
    cells, inside = _neighbours(grid, radius)
    near = np.where(np.tile(inside, (frames, 1)), frame[:, None] * n + np.tile(cells, (frames, 1)), 0)
    sequence = np.concatenate([np.arange(total)[:, None], near, traj], axis=1)
    valid = np.concatenate([np.ones((total, 1), bool), np.tile(inside, (frames, 1)), traj_valid], axis=1)
    tail = slice(-(frames - 1), None) if frames > 1 else slice(0, None)  # the official [-F+1:], F = 1 included
    keys = np.concatenate([sequence[:, :1], sequence[:, tail]], axis=1).astype(np.int32)
    mask = np.concatenate([valid[:, :1], valid[:, tail]], axis=1)
    return TrajectoryKeys(keys=keys, valid=mask, grid=grid, longest=longest)


def level_trajectories(flows: np.ndarray, *, grid: Sequence[int], radius: int, seed: int, level: int) -> TrajectoryKeys:
    """Steps 1–5 for one level from pixel flows ``(F−1, H, W, 2)``; the conflict draws come from
    ``default_rng([seed, level])``, so a level's trajectories do not depend on the other levels listed."""
    target = link_targets(level_flows(flows, grid))
    target = resolve_conflicts(target, np.random.default_rng([seed, level]))
    return trajectory_keys(target, frames=len(flows) + 1, grid=grid, radius=radius)


def trajectory_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, keys: torch.Tensor,
                         valid: torch.Tensor, *, heads: int, budget_bytes: int = 64 << 20) -> torch.Tensor:
    """Each token attends over its ``keys`` only: ``softmax(q·kᵀ/√d, −∞ where not valid)·v`` per head.

    ``query``, ``key``, ``value``: ``(B, L, C)`` with ``L = F·N`` tokens of a clip; ``keys``
    ``long (L, K)``, ``valid`` ``bool (L, K)``. Tokens run in chunks so the gathered keys and values
    take about ``budget_bytes``: memory O(chunk·K·C), time O(L·K·C), never O(L²).
    """
    batch, tokens, channels = query.shape
    d = channels // heads
    width = keys.shape[1]
    per_token = batch * width * (2 * channels * value.element_size() + heads * 4)
    chunk = max(1, min(tokens, budget_bytes // max(per_token, 1)))
    out = torch.empty_like(value)
    for a in range(0, tokens, chunk):
        z = min(tokens, a + chunk)
        idx, c = keys[a:z], z - a
        k = key[:, idx].view(batch, c, width, heads, d).permute(0, 1, 3, 4, 2)  # (B, c, H, d, K)
        v = value[:, idx].view(batch, c, width, heads, d).transpose(2, 3)  # (B, c, H, K, d)
        q = query[:, a:z].reshape(batch, c, heads, 1, d)
        scores = (q @ k) / math.sqrt(d)
        scores = scores.masked_fill(~valid[a:z].view(1, c, 1, 1, width), float("-inf"))
        probs = scores.float().softmax(dim=-1).to(v.dtype)
        out[:, a:z] = (probs @ v).reshape(batch, c, channels)
    return out
