"""Exact row max/min of ``q·kᵀ`` on the CPU from a bf16 screen (``docs/method.md`` §3).

The row extrema pass of the two-pass kernel is one ``Lq × Lk`` matrix product with a head dim of
40–160; on CPUs with native bf16 dot products (AVX512-BF16, AMX) a bf16 product runs about three
times faster than fp32. bf16 scores alone are not exact, so they only *screen*:

* bf16 inputs and output give ``|ŝ − s| ≤ 3.1·2⁻⁹·‖q‖·‖k‖`` (two input roundings, fp32
  accumulation, one output rounding); :data:`SCREEN_ERROR` ``= 2⁻⁷`` bounds it with a margin, and
  ``E_x = SCREEN_ERROR·‖q_x‖·max_y ‖k_y‖`` per row;
* the key of the true maximum has ``ŝ ≥ max_y ŝ − 2E_x`` (and the true minimum ``ŝ ≤ min_y ŝ + 2E_x``),
  so only keys past that threshold are candidates — a few per row on real and random data;
* candidates are found per chunk of up to :data:`CHUNK` keys (a chunk's bf16 max/min is one cheap
  reduction; elementwise compares over the whole block cost more than the product), and their
  scores are recomputed in fp32 from the original ``q`` and ``k``: the result is the fp32 extremum.

A block whose candidates are too many (near-ties, e.g. repeated keys) is redone in fp32, so the
result is exact on any input; only the speed depends on the data.
"""

from __future__ import annotations

import torch

__all__ = ["SCREEN_ERROR", "CHUNK", "MIN_CHUNK", "bf16_screen_available", "chunk_length", "screened_row_extrema"]

#: Bound on ``|bf16 score − score| / (‖q‖·‖k‖)`` used for the screen (≥ 3.1·2⁻⁹ with a margin).
SCREEN_ERROR = 2.0**-7
#: Keys per screening chunk (a chunk's bf16 max/min decides whether its keys are recomputed): the
#: largest power of two ≤ this that divides the key count. Measured (1 thread, 8 heads × 8960 × 16384):
#: 64 keys 8.7 s, 128 6.7 s, 256 5.9 s, 512 2.8 s, 1024 3.2 s, 2048 3.6 s (short reductions are slow,
#: long chunks make more keys to recompute).
CHUNK = 512
#: The smallest chunk worth screening with (fewer keys per chunk: the fp32 product is as fast).
MIN_CHUNK = 64
#: Chunks per key sequence at least (so that the candidates' scores stay within the block's memory).
MIN_CHUNKS = 8
#: Candidate chunks / keys per row and side (on average over a block) above which the block is redone
#: in fp32 (near-ties); random attention inputs have about 1.2 of each.
MAX_CHUNKS_PER_ROW = 4
MAX_KEYS_PER_ROW = 16


def bf16_screen_available(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`screened_row_extrema` pays off: fp32 CPU inputs, keys in whole chunks, and a CPU
    with native bf16 dot products (without them a bf16 product is slower than fp32)."""
    return (q.device.type == "cpu" and q.dtype == torch.float32 and chunk_length(k.shape[-2]) is not None
            and torch.cpu._is_avx512_bf16_supported())


def chunk_length(keys: int) -> int | None:
    """Keys per screening chunk for ``keys`` keys: the largest power of two up to :data:`CHUNK` that
    divides it into at least :data:`MIN_CHUNKS` chunks; ``None`` when there is none of ``MIN_CHUNK`` or more."""
    chunk = CHUNK
    while chunk >= MIN_CHUNK:
        if keys % chunk == 0 and keys // chunk >= MIN_CHUNKS:
            return chunk
        chunk //= 2
    return None


def _exact_pick(qs: torch.Tensor, ks: torch.Tensor, scores: torch.Tensor, chunk_best: torch.Tensor,
                threshold: torch.Tensor, start: int, largest: bool) -> torch.Tensor | None:
    """fp32 extremum per row ``(G, r)`` over the screened candidates of one block, or ``None`` when there
    are too many. ``scores`` bf16 ``(G, r, Lk)``, ``chunk_best`` its per-chunk max (min) ``(G, r, Lk/CHUNK)``."""
    g, r, n_chunks = chunk_best.shape
    best = chunk_best.float()
    hits = (best >= threshold[..., None]) if largest else (best <= threshold[..., None])
    found = hits.nonzero()  # (n, 3): head, row, chunk
    if found.shape[0] > MAX_CHUNKS_PER_ROW * g * r:
        return None
    head, row, chunk = found.unbind(1)
    flat_row = head * r + row
    # The bf16 scores of each candidate chunk, then the candidate keys inside it.
    size = scores.shape[-1] // n_chunks
    within = scores.view(g * r, n_chunks, size)[flat_row, chunk].float()  # (n, chunk length)
    keep = (within >= threshold.view(-1)[flat_row, None]) if largest else (within <= threshold.view(-1)[flat_row, None])
    which, offset = keep.nonzero().unbind(1)
    if which.numel() > MAX_KEYS_PER_ROW * g * r:
        return None
    key = chunk[which] * size + offset
    exact = (qs[head[which], start + row[which]] * ks[head[which], key]).sum(-1)  # fp32 q·k of the candidates
    out = torch.full((g * r,), float("nan"), dtype=torch.float32, device=qs.device)
    return out.scatter_reduce_(0, flat_row[which], exact, "amax" if largest else "amin", include_self=False).view(g, r)


@torch.no_grad()
def screened_row_extrema(qs: torch.Tensor, ks: torch.Tensor, block_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscaled fp32 row ``(max, min)`` of ``qs·ksᵀ``, each ``(G, Lq)``, for fp32 ``qs (G, Lq, d)`` and
    ``ks (G, Lk, d)`` (``Lk`` a multiple of :data:`MIN_CHUNK`); bf16 score blocks of ``block_bytes``."""
    heads, lq, _ = qs.shape
    lk = ks.shape[1]
    q16, k16t = qs.bfloat16(), ks.bfloat16().transpose(1, 2)
    error = SCREEN_ERROR * qs.norm(dim=-1) * ks.norm(dim=-1).amax(-1, keepdim=True)  # (G, Lq): E_x
    mx = torch.empty(heads, lq, dtype=torch.float32, device=qs.device)
    mn = torch.empty_like(mx)
    size = chunk_length(lk)
    if size is None:
        raise ValueError(f"{lk} keys do not split into screening chunks of at least {MIN_CHUNK}")
    rows = max(1, min(lq, block_bytes // (2 * heads * lk)))
    buffer = torch.empty(heads * rows * lk, dtype=torch.bfloat16, device=qs.device)
    for a in range(0, lq, rows):
        z = min(lq, a + rows)
        scores = buffer[: heads * (z - a) * lk].view(heads, z - a, lk)
        torch.matmul(q16[:, a:z], k16t, out=scores)
        chunks = scores.view(heads, z - a, lk // size, size)
        high, low = chunks.amax(-1), chunks.amin(-1)
        e2 = 2 * error[:, a:z]
        top = _exact_pick(qs, ks, scores, high, high.amax(-1).float() - e2, a, largest=True)
        bottom = _exact_pick(qs, ks, scores, low, low.amin(-1).float() + e2, a, largest=False)
        if top is None or bottom is None:  # near-ties: this block in fp32
            exact = torch.matmul(qs[:, a:z], ks.transpose(1, 2))
            top, bottom = exact.amax(-1), exact.amin(-1)
        mx[:, a:z], mn[:, a:z] = top, bottom
    return mx, mn
