"""Modulated attention kernels that never build a full score matrix (``docs/method.md`` §3).

Both kernels compute, per query x, ``softmax_y(s'_xy) · V`` with ``s' `` from
:func:`stmod.core.st_layout.labels.modulated_scores` and ``R = relation[query_codes[x], key_codes[y]]``.
Inputs are SDPA-shaped: ``q (B, H, Lq, d)``, ``k (B, H, Lk, d)``, ``v (B, H, Lk, dv)``; labels and
strengths are per token and shared by the heads: ``strength`` float ``(B or 1, Lq)``,
``query_codes`` int64 ``(B or 1, Lq)``, ``key_codes`` int64 ``(B or 1, Lk)``, ``relation`` bool
``(Pq, Pk)``. Scores use ``scale = d^-½`` unless given.

:func:`modulated_attention` (long key sequences, spatio-temporal self-attention) makes two passes:

1. the row max/min of the *unmodulated* scores, in query chunks (``chunk × Lk`` scores at a time);
2. one fused SDPA call on inputs widened by a few columns. Up to a per-row constant,
   ``s' = (1 − λ)·s + λ(mx − mn)·R``, and ``R`` factors through the codes:
   ``R_xy = Σ_p relation[c_x, p]·[c_y = p]``. So with ``q̃ = [(1 − λ)q, λ(mx − mn)/scale · relation[c_x]]``
   and ``k̃ = [k, onehot(c_y)]``, ``scale · q̃·k̃ = s'`` exactly and SDPA (flash / memory-efficient
   kernels) never materialises the bias.

:func:`modulated_attention_explicit` (few keys: cross-attention, tests) applies the literal formula
to ``chunk × Lk`` score blocks and can hand both probability blocks (before and after modulation) to
a callback for recording.

Peak extra memory is bounded by ``budget_bytes`` plus O(B·H·Lq) row statistics and the output; it
does not grow with Lq·Lk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stmod.core.st_layout.extrema import bf16_screen_available, screened_row_extrema
from stmod.core.st_layout.labels import modulated_scores
from stmod.core.st_layout.triton_kernel import TokenOrder, triton_available, triton_modulated_attention

__all__ = ["DEFAULT_BUDGET", "row_extrema", "uniform_rows", "uses_triton", "modulated_attention",
           "modulated_attention_few_keys", "modulated_attention_explicit"]

#: Default working-memory budget of one kernel call (bytes).
DEFAULT_BUDGET = 256 * 2**20

#: Score block of the CPU row-extrema pass (bytes), all heads per call. Few large calls beat
#: cache-sized tiles with two threads on a shared machine: every call is a parallel region, and one
#: descheduled thread stalls it (measured, 2 threads, 8 heads × 8192 × 16384 scores: 1 MiB tiles
#: 30.6 s, 8 MiB per-head blocks 18.5 s, 64 MiB all-head blocks 6.9 s; one SDPA call 7.0 s).
CPU_BLOCK_BYTES = 64 * 2**20

#: ``on_probs(start, stop, plain, modulated)``: float32 ``(B, H, stop − start, Lk)`` probabilities of
#: query rows ``start:stop`` without and with modulation.
ProbsCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def _chunks(total: int, rows: int) -> list[tuple[int, int]]:
    rows = max(1, min(total, rows))
    return [(a, min(total, a + rows)) for a in range(0, total, rows)]


@torch.no_grad()
def row_extrema(
    q: torch.Tensor, k: torch.Tensor, *, scale: float | None = None, budget_bytes: int = DEFAULT_BUDGET
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query max and min over all keys of ``scale·q·kᵀ``.

    :param q: ``(B, H, Lq, d)``; ``k``: ``(B, H, Lk, d)``; same dtype and device.
    :returns: ``(mx, mn)``, float32 ``(B, H, Lq)``. Scores are computed in query chunks into one
        reused buffer of at most ``budget_bytes`` (on CPU also at most :data:`CPU_BLOCK_BYTES`), all
        heads at once when that leaves enough rows: few, large ATen calls (see
        :data:`CPU_BLOCK_BYTES`). On CPUs with native bf16 dot products, fp32 inputs go through
        :func:`~stmod.core.st_layout.extrema.screened_row_extrema` (a bf16 product screens the
        candidates, fp32 recomputes them: the same extrema, faster). Computed without autograd: the
        extrema are constants for gradients (the engine is for inference).
    """
    b, h, lq, d = q.shape
    lk = k.shape[-2]
    scale = d**-0.5 if scale is None else scale
    heads, item = b * h, q.element_size()
    qs = q.reshape(heads, lq, d)
    kt = k.reshape(heads, lk, d).transpose(1, 2)
    block = min(budget_bytes, CPU_BLOCK_BYTES) if q.device.type == "cpu" else budget_bytes
    # exact, from a bf16 screen (core/st_layout/extrema.py); its candidate lists are data-dependent
    # (nonzero), so a traced call takes the fp32 product below (the same extrema).
    if not torch.compiler.is_compiling() and bf16_screen_available(q, k):
        mx, mn = screened_row_extrema(qs, kt.transpose(1, 2), block)
        return (mx * scale).view(b, h, lq), (mn * scale).view(b, h, lq)
    group, rows = 1, block // (lk * item)
    if block // (heads * lk * item) >= min(lq, 256 if q.device.type != "cpu" else 16):
        group, rows = heads, block // (heads * lk * item)
    rows = max(1, min(lq, rows))
    mx = torch.empty(heads, lq, dtype=q.dtype, device=q.device)
    mn = torch.empty_like(mx)
    traced = torch.compiler.is_compiling()  # dynamo cannot trace out= into views; inductor plans memory itself
    buffer = None if traced else torch.empty(group * rows * lk, dtype=q.dtype, device=q.device)
    for first in range(0, heads, group):
        last = min(heads, first + group)
        for a, z in _chunks(lq, rows):
            if buffer is None:
                scores = torch.matmul(qs[first:last, a:z], kt[first:last])
                mx[first:last, a:z], mn[first:last, a:z] = scores.amax(-1), scores.amin(-1)
                continue
            scores = buffer[: (last - first) * (z - a) * lk].view(last - first, z - a, lk)
            torch.matmul(qs[first:last, a:z], kt[first:last], out=scores)
            torch.amax(scores, dim=-1, out=mx[first:last, a:z])
            torch.amin(scores, dim=-1, out=mn[first:last, a:z])
    # max(scale·s) = scale·max(s) for scale > 0: scaling after the reduction saves a pass.
    return (mx.float() * scale).view(b, h, lq), (mn.float() * scale).view(b, h, lq)


def _check(q: torch.Tensor, strength: torch.Tensor, query_codes: torch.Tensor, key_codes: torch.Tensor,
           k: torch.Tensor, relation: torch.Tensor) -> None:
    if strength.shape[-1] != q.shape[-2] or query_codes.shape[-1] != q.shape[-2]:
        raise ValueError(f"strength {tuple(strength.shape)} / query codes {tuple(query_codes.shape)} "
                         f"do not match {q.shape[-2]} queries")
    if key_codes.shape[-1] != k.shape[-2]:
        raise ValueError(f"key codes {tuple(key_codes.shape)} do not match {k.shape[-2]} keys")
    if relation.dtype != torch.bool or relation.ndim != 2:
        raise ValueError("relation must be a bool (Pq, Pk) table")


def uniform_rows(
    strength: torch.Tensor, query_codes: torch.Tensor, key_codes: torch.Tensor, relation: torch.Tensor
) -> torch.Tensor:
    """Bool ``(Lq,)``: query rows whose modulation needs no row extrema, in every batch item.

    A row whose relation row is all-negative or all-positive over the keys present (background in
    the ``videograin`` preset, or a region covering everything) has ``s' = (1 − λ)·s`` + a per-row
    constant, and so has a row with ``λ = 0``: softmax ignores the constant, so ``mx − mn`` is unused.
    """
    present = torch.zeros(relation.shape[1], dtype=torch.bool, device=relation.device)
    present[key_codes.reshape(-1).to(relation.device)] = True
    rel = relation[:, present]
    flat = (rel.all(1) | ~rel.any(1))[query_codes.to(relation.device)]  # (B|1, Lq)
    flat, zero = torch.broadcast_tensors(flat, strength.to(relation.device) == 0)
    return (flat | zero).all(0)


def uses_triton(q: torch.Tensor) -> bool:
    """Whether :func:`modulated_attention` picks the Triton kernel for ``q`` by default: Triton can run
    on its device (CUDA, or any device under ``TRITON_INTERPRET=1``) and no gradient is wanted (the
    kernel has no backward pass)."""
    return not torch.is_grad_enabled() and triton_available(q.device)


def _widened_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor,
                       query_codes: torch.Tensor, key_codes: torch.Tensor, relation: torch.Tensor,
                       scale: float, budget_bytes: int) -> torch.Tensor:
    """Both passes for every row of ``q``: row extrema, then SDPA on ``q̃ = [(1 − λ)q, λ(mx − mn)/scale ·
    relation[c_x]]``, ``k̃ = [k, onehot(c_y)]``, in groups of heads whose widened inputs fit the budget."""
    b, h, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    mx, mn = row_extrema(q, k, scale=scale, budget_bytes=budget_bytes)
    coef = (lam[:, None, :] * mx.sub_(mn)).div_(scale)  # (B, H, Lq); R's weight inside scale·q̃·k̃
    del mx, mn
    p = relation.shape[1]
    q_rows = relation.to(q.device, torch.float32)[query_codes.to(q.device)]  # (B|1, Lq, P)
    k_onehot = F.one_hot(key_codes.to(q.device), p).to(q.dtype)  # (B|1, Lk, P)
    # q, k and v share one width (fused kernels need it); GPU flash kernels also want a multiple of 8.
    width = max(d, dv) + p
    if q.device.type != "cpu":
        width = -(-width // 8) * 8
    per_head = b * (lq + 2 * lk) * width * q.element_size()
    group = max(1, min(h, budget_bytes // max(1, per_head)))
    out = torch.empty(b, h, lq, dv, dtype=q.dtype, device=q.device)
    keep = (1 - lam)[:, None, :, None].to(q.dtype)
    for first in range(0, h, group):
        heads = slice(first, min(h, first + group))
        g = heads.stop - heads.start
        q_wide = q.new_zeros(b, g, lq, width)
        q_wide[..., :d] = q[:, heads] * keep
        q_wide[..., d : d + p] = (q_rows[:, None] * coef[:, heads, :, None]).to(q.dtype)
        k_wide = k.new_zeros(b, g, lk, width)
        k_wide[..., :d] = k[:, heads]
        k_wide[..., d : d + p] = k_onehot[:, None]
        v_wide = v.new_zeros(b, g, lk, width)
        v_wide[..., :dv] = v[:, heads]
        out[:, heads] = F.scaled_dot_product_attention(q_wide, k_wide, v_wide, scale=scale)[..., :dv]
        del q_wide, k_wide, v_wide
    return out


def modulated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strength: torch.Tensor,
    query_codes: torch.Tensor,
    key_codes: torch.Tensor,
    relation: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    use_triton: bool | None = None,
    order: TokenOrder | None = None,
) -> torch.Tensor:
    """Modulated attention in two passes (row extrema, then one SDPA on widened inputs).

    Shapes as in the module docstring. Returns ``(B, H, Lq, dv)`` in ``q``'s dtype. Rows that
    :func:`uniform_rows` finds skip both the extrema and the widening: they are one plain SDPA call
    with ``q`` scaled by ``1 − λ`` per row. The rest are gathered (O(Lq·d) copies) and widened.
    ``use_triton`` (``None``: :func:`uses_triton`) runs the single-pass kernel of
    :mod:`stmod.core.st_layout.triton_kernel` instead, with the tokens in code order when ``order``
    (``token_order(query_codes, key_codes)``, cached by the caller) is given; the two-pass path
    ignores ``order``.
    """
    _check(q, strength, query_codes, key_codes, k, relation)
    if use_triton is None:
        use_triton = uses_triton(q)
    if use_triton:
        return triton_modulated_attention(q, k, v, strength=strength, query_codes=query_codes,
                                          key_codes=key_codes, relation=relation, scale=scale, order=order)
    b, h, lq, d = q.shape
    scale = d**-0.5 if scale is None else scale
    lam = strength.to(device=q.device, dtype=torch.float32).expand(b, lq)
    query_codes = query_codes.to(q.device).expand(b, lq)
    if torch.compiler.is_compiling():  # the row split below is data-dependent: widen every row (same result)
        return _widened_attention(q, k, v, lam, query_codes, key_codes, relation, scale, budget_bytes)
    uniform = uniform_rows(strength, query_codes, key_codes, relation.to(q.device))
    flat, mixed = uniform.nonzero().flatten(), (~uniform).nonzero().flatten()
    if not flat.numel():
        return _widened_attention(q, k, v, lam, query_codes, key_codes, relation, scale, budget_bytes)
    keep = (1 - lam)[:, None, :, None].to(q.dtype)
    if not mixed.numel():
        return F.scaled_dot_product_attention(q * keep, k, v, scale=scale)
    out = torch.empty(b, h, lq, v.shape[-1], dtype=q.dtype, device=q.device)
    q_flat = q.index_select(2, flat).mul_(keep.index_select(2, flat))
    out.index_copy_(2, flat, F.scaled_dot_product_attention(q_flat, k, v, scale=scale))
    del q_flat
    out.index_copy_(2, mixed, _widened_attention(
        q.index_select(2, mixed), k, v, lam.index_select(1, mixed), query_codes.index_select(1, mixed),
        key_codes, relation, scale, budget_bytes))
    return out


def modulated_attention_few_keys(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strength: torch.Tensor,
    query_codes: torch.Tensor,
    key_codes: torch.Tensor,
    relation: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """Modulated attention for short key sequences (cross-attention: 77 text tokens), lean.

    Per query chunk one score block: its row extrema (``aminmax``, cheap over few keys), then
    ``s' = (1 − λ)·s + λ(mx − mn)·R`` written in place, softmax, ``·V`` — two float32 blocks live at a
    time. Same result as :func:`modulated_attention_explicit` (without recording). Shapes as in the
    module docstring; returns ``(B, H, Lq, dv)`` in ``v``'s dtype.
    """
    _check(q, strength, query_codes, key_codes, k, relation)
    b, h, lq, d = q.shape
    lk = k.shape[-2]
    scale = d**-0.5 if scale is None else scale
    lam = strength.to(device=q.device, dtype=torch.float32).expand(b, lq)
    # R as a float (B|1, Lq, Lk) gather, shared by the heads: relation rows of the query codes at the keys.
    key_table = relation.to(q.device, torch.float32)[:, key_codes.to(q.device)]  # (Pq, B|1, Lk)
    q_codes = query_codes.to(q.device)
    rows = budget_bytes // max(1, b * h * lk * 4 * 2)
    out = torch.empty(b, h, lq, v.shape[-1], dtype=v.dtype, device=q.device)
    kt = k.transpose(-1, -2)
    batch = torch.arange(key_table.shape[1], device=q.device)[:, None]
    for a, z in _chunks(lq, rows):
        scores = torch.matmul(q[:, :, a:z], kt).float()  # raw q·k, (B, H, c, Lk)
        low, high = torch.aminmax(scores, dim=-1)
        positive = key_table[q_codes[:, a:z], batch]  # (B|1, c, Lk)
        keep = (1 - lam[:, None, a:z, None]) * scale
        coef = high.sub_(low).mul_(lam[:, None, a:z] * scale)  # λ(mx − mn) in scaled units
        scores.mul_(keep).addcmul_(coef[..., None], positive[:, None])
        out[:, :, a:z] = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)
    return out


def modulated_attention_explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strength: torch.Tensor,
    query_codes: torch.Tensor,
    key_codes: torch.Tensor,
    relation: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET,
    on_probs: ProbsCallback | None = None,
) -> torch.Tensor:
    """Modulated attention with the literal formula on float32 ``chunk × Lk`` score blocks.

    Meant for short key sequences (cross-attention: 77 text tokens). ``on_probs`` (optional) receives
    each block's probabilities without and with modulation. Returns ``(B, H, Lq, dv)`` in ``v``'s dtype.
    """
    _check(q, strength, query_codes, key_codes, k, relation)
    b, h, lq, d = q.shape
    lk = k.shape[-2]
    scale = d**-0.5 if scale is None else scale
    device = q.device
    lam = strength.to(device=device, dtype=torch.float32)
    relation = relation.to(device)
    q_codes, k_codes = query_codes.to(device), key_codes.to(device)
    rows = budget_bytes // max(1, b * h * lk * 4 * (4 if on_probs else 3))
    out = torch.empty(b, h, lq, v.shape[-1], dtype=v.dtype, device=device)
    kt = k.transpose(-1, -2)
    for a, z in _chunks(lq, rows):
        scores = torch.matmul(q[:, :, a:z], kt).float().mul_(scale)  # (B, H, c, Lk)
        positive = relation[q_codes[:, a:z, None], k_codes[:, None, :]]  # (B|1, c, Lk)
        probs = modulated_scores(scores, positive[:, None], lam[:, None, a:z]).softmax(dim=-1)
        out[:, :, a:z] = torch.matmul(probs.to(v.dtype), v)
        if on_probs is not None:
            on_probs(a, z, scores.softmax(dim=-1), probs)
    return out
