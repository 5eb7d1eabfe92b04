"""FLATTEN trajectories and trajectory attention against plain references (float64, Python loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stmod.core.trajectories import (
    level_flows,
    level_trajectories,
    link_targets,
    resolve_conflicts,
    trajectory_attention,
    trajectory_keys,
)


def official_sequences(cells: np.ndarray, radius: int, rng: np.random.Generator):
    """A plain-Python transcription of the official ``sample_trajectories_new`` (dicts and loops, as
    VideoGrain's ``common/image_util.py``) from rounded cell flows ``(T−1, H, W, 2)``, with two changes
    only: ``divmod(x, W)`` for the official square-only ``x//H, x%H``, and ``int(rng.random()·n)`` for
    ``random.randint(0, n−1)``. Returns per token ``(t, x, y)`` the official sequence and mask, and the
    trajectories."""
    T, H, W = cells.shape[0] + 1, cells.shape[1], cells.shape[2]
    trajectories = {}
    for t in range(T - 1):
        for h in range(H):
            for w in range(W):
                x, y = h + int(cells[t, h, w, 1]), w + int(cells[t, h, w, 0])
                if 0 <= x < H and 0 <= y < W:
                    trajectories[(t, h, w)] = (t + 1, x, y)
    by_value = {}
    for key, value in trajectories.items():
        by_value.setdefault(value, []).append(key)
    for value, keys in by_value.items():
        if len(keys) > 1:
            keys = list(keys)
            keys.pop(min(int(rng.random() * len(keys)), len(keys) - 1))
            for point in keys:
                trajectories[point] = (-1, -1, -1)
    active, finished = [], []
    for t in range(T):
        pixel_set = {(t, *divmod(x, W)): 0 for x in range(H * W)}
        extended = []
        for traj in active:
            if traj[-1] in trajectories:
                v = trajectories[traj[-1]]
                extended.append(traj + [v])
                pixel_set[v] = 1
            else:
                finished.append(traj)
        active = extended + [[p] for p in pixel_set if pixel_set[p] == 0]
    finished += active
    useful = [traj[:-1] if traj[-1] == (-1, -1, -1) else traj for traj in finished]
    point_to_traj = {p: traj for traj in useful for p in traj}
    assert len(point_to_traj) == T * H * W == sum(len(traj) for traj in useful)  # a partition
    longest = max(len(traj) for traj in useful)
    side = (2 * radius + 1) ** 2
    out = []
    for t in range(T):
        for x in range(H):
            for y in range(W):
                near = [(t, x + i, y + j) for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)
                        if (i, j) != (0, 0) and 0 <= x + i < H and 0 <= y + j < W]
                rest = [p for p in point_to_traj[(t, x, y)] if p != (t, x, y)]
                sequence = [(t, x, y)] + near + [(0, 0, 0)] * (side - 1 - len(near)) + rest + [(0, 0, 0)] * (
                    longest - 1 - len(rest))
                mask = [True] * (1 + len(near)) + [False] * (side - 1 - len(near)) + [True] * len(rest) + [False] * (
                    longest - 1 - len(rest))
                out.append((sequence, mask))
    return out, useful


def _official_keys(cells, radius, seed):
    """The official key selection of ``fully_frame_forward``: entry 0 and the last T−1 entries."""
    sequences, _ = official_sequences(cells, radius, np.random.default_rng(seed))
    T, H, W = cells.shape[0] + 1, cells.shape[1], cells.shape[2]
    keys, valid = [], []
    for sequence, mask in sequences:
        chosen = [0] + list(range(len(sequence)))[-(T - 1):]
        keys.append([sequence[i][0] * H * W + sequence[i][1] * W + sequence[i][2] for i in chosen])
        valid.append([mask[i] for i in chosen])
    return np.array(keys), np.array(valid)


def _random_cells(rng, frames, h, w, spread=2):
    return rng.integers(-spread, spread + 1, size=(frames - 1, h, w, 2))


@pytest.mark.parametrize(("frames", "grid", "radius", "spread"),
                         [(5, (4, 4), 2, 1), (6, (3, 7), 1, 2), (4, (6, 5), 2, 3), (9, (2, 3), 1, 1), (1, (3, 4), 1, 1),
                          (3, (5, 5), 0, 0)])
def test_trajectory_keys_equal_the_official_algorithm(frames, grid, radius, spread) -> None:
    """Random flows (many conflicts, non-square grids): the vectorised construction gives the plain
    official algorithm's keys and mask for the same seed."""
    for seed in range(3):
        cells = _random_cells(np.random.default_rng(100 + seed), frames, *grid, spread)
        keys, valid = _official_keys(cells, radius, seed)
        target = resolve_conflicts(link_targets(cells), np.random.default_rng(seed))
        got = trajectory_keys(target, frames=frames, grid=grid, radius=radius)
        assert got.keys.shape == keys.shape
        np.testing.assert_array_equal(got.valid, valid)
        np.testing.assert_array_equal(np.where(valid, got.keys, -1), np.where(valid, keys, -1))


def test_the_seed_decides_the_conflicts() -> None:
    cells = _random_cells(np.random.default_rng(7), 6, 6, 6, 2)
    links = link_targets(cells)
    a, b, c = (resolve_conflicts(links, np.random.default_rng(s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    kept = a[a >= 0]
    assert len(kept) == len(np.unique(kept))  # one link into each token


def test_trajectories_follow_the_flow() -> None:
    """A constant shift of one cell right: every trajectory is a row walking right until the edge."""
    frames, grid = 4, (3, 5)
    cells = np.zeros((frames - 1, *grid, 2), np.int64)
    cells[..., 0] = 1
    got = trajectory_keys(resolve_conflicts(link_targets(cells), np.random.default_rng(0)), frames=frames,
                          grid=grid, radius=1)
    n = 15
    token = 0 * n + 1 * 5 + 0  # frame 0, row 1, column 0 → (1, 1, 1), (2, 1, 2), (3, 1, 3)
    assert got.longest == 4
    assert list(got.keys[token][got.valid[token]]) == [token, n + 6, 2 * n + 7, 3 * n + 8]


def test_level_flows_are_the_official_scaling() -> None:
    """Square and aspect-aligned grids: ``round(max(h, w)·interpolate(flow / max(H, W)))`` as the official."""
    rng = np.random.default_rng(3)
    for size, grid in [((64, 64), (8, 8)), ((48, 96), (6, 12)), ((64, 64), (4, 4))]:
        flows = (rng.standard_normal((3, *size, 2)) * 9).astype(np.float32)
        pixel = torch.from_numpy(flows).permute(0, 3, 1, 2) / max(size)
        factors = (grid[0] / size[0], grid[1] / size[1])
        official = torch.round(max(grid) * torch.nn.functional.interpolate(pixel, scale_factor=factors))
        np.testing.assert_array_equal(level_flows(flows, grid), official.permute(0, 2, 3, 1).numpy())


def _reference_attention(q, k, v, keys, valid, heads):
    """float64, one token and one head at a time."""
    batch, tokens, channels = q.shape
    d = channels // heads
    q, k, v = (x.double() for x in (q, k, v))
    out = torch.zeros_like(v)
    for b in range(batch):
        for i in range(tokens):
            chosen = keys[i][valid[i]].tolist()
            for h in range(heads):
                part = slice(h * d, (h + 1) * d)
                scores = torch.stack([q[b, i, part] @ k[b, j, part] for j in chosen]) / math.sqrt(d)
                out[b, i, part] = torch.softmax(scores, 0) @ v[b, chosen, part]
    return out


@pytest.mark.parametrize("budget", [1, 64 << 20])
def test_trajectory_attention_equals_a_float64_reference(budget) -> None:
    rng = np.random.default_rng(5)
    frames, grid, heads, channels, batch = 4, (3, 5), 2, 8, 2
    target = resolve_conflicts(link_targets(_random_cells(rng, frames, *grid, 1)), rng)
    tk = trajectory_keys(target, frames=frames, grid=grid, radius=1)
    keys, valid = torch.from_numpy(tk.keys).long(), torch.from_numpy(tk.valid)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch, frames * 15, channels, generator=g) for _ in range(3))
    got = trajectory_attention(q, k, v, keys, valid, heads=heads, budget_bytes=budget)
    torch.testing.assert_close(got.double(), _reference_attention(q, k, v, keys, valid, heads), rtol=1e-5, atol=1e-6)


def test_tokens_that_attend_only_to_themselves_are_unchanged() -> None:
    """Trajectories of length 1 and no neighbours (no links, radius 0): the output is the value."""
    frames, grid = 5, (3, 4)
    target = np.full(frames * 12, -1, np.int64)
    tk = trajectory_keys(target, frames=frames, grid=grid, radius=0)
    assert tk.longest == 1 and (tk.keys == np.arange(frames * 12)[:, None]).all()
    q, k, v = (torch.randn(2, frames * 12, 8) for _ in range(3))
    out = trajectory_attention(q, k, v, torch.from_numpy(tk.keys).long(), torch.from_numpy(tk.valid), heads=2)
    torch.testing.assert_close(out, v)


def test_level_trajectories_on_non_square_pixel_flows() -> None:
    rng = np.random.default_rng(0)
    flows = (rng.standard_normal((3, 40, 72, 2)) * 6).astype(np.float32)
    tk = level_trajectories(flows, grid=(5, 9), radius=1, seed=0, level=0)
    assert tk.keys.shape[0] == 4 * 45 and tk.valid[:, 0].all()
    again = level_trajectories(flows, grid=(5, 9), radius=1, seed=0, level=0)
    np.testing.assert_array_equal(tk.keys, again.keys)
