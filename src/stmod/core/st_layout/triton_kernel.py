"""Single-pass modulated attention in Triton (GPU; CPU tests run it with ``TRITON_INTERPRET=1``).

Same contract as :func:`stmod.core.st_layout.kernels.modulated_attention`. One pass over the keys,
exact: up to a per-row constant ``s' = (1 − λ)·s + λ(mx − mn)·R`` with ``R ∈ {0, 1}``, so per query
row it keeps the running max/min of the raw scores and two online-softmax accumulators of
``exp((1 − λ)s)`` and ``exp((1 − λ)s)·v`` — over its positive keys (``R = 1``) and its negative ones.
At the end the positive part is weighted by ``exp(λ(mx − mn))``::

    out = (e^{λΔ}·Σ_pos e^{t}v + Σ_neg e^{t}v) / (e^{λΔ}·Σ_pos e^{t} + Σ_neg e^{t}),   t = (1 − λ)s

(the per-key-code accumulators of the design collapse to these two because ``relation`` is boolean).

**Sorted keys.** Attention does not depend on the order of the keys, so with a :class:`TokenOrder`
(:func:`token_order`, computed once per level and edit by the engine state) the keys and values are
gathered sorted by region code and nearly every key tile holds a single code. Such a tile is
positive or negative as a whole for each query row, so it costs one ``P·V`` product (added to that
row's positive or negative accumulator), like plain attention; only tiles that straddle a code
boundary take the general path with two masked products. Queries are read through the order too
(sorted rows keep a tile's relation rows alike) and each output row is written back at its original
position, so the result needs no un-permuting. Without an order the same kernel runs on the
original order (single-code tiles still take the fast path where they happen).

Inputs fp16/bf16/fp32, accumulation in fp32 (fp32 inputs use IEEE dots, not TF32). On CUDA the tile
sizes are autotuned over a few configurations (H100/H200-sized); explicit ``block_m``/``block_n``
pick one (tests). Triton is imported only when :func:`triton_modulated_attention` runs;
:func:`triton_available` says whether it can (a CUDA tensor and an importable ``triton``, or the
interpreter).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch
from attrs import field, frozen

__all__ = ["TokenOrder", "token_order", "triton_available", "triton_modulated_attention"]


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA, or anything under ``TRITON_INTERPRET=1``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or _interpreting()


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


#: Key tile length of the kernel (fixed: the lists of single-code tiles are made for it).
BLOCK_N = 64


@frozen(kw_only=True)
class KeyTiles:
    """The key tiles of one key sequence (codes shared by the batch), split by the kernel's two paths.

    :ivar single: int32 ``(S,)`` first key of each tile that holds a single code; ``single_codes`` its code.
    :ivar mixed: int32 ``(M,)`` first key of each tile with a code boundary.
    """

    single: torch.Tensor = field(eq=False)
    single_codes: torch.Tensor = field(eq=False)
    mixed: torch.Tensor = field(eq=False)

    def to(self, device: torch.device) -> KeyTiles:
        """A copy whose tensors live on ``device`` (``self`` when they already do)."""
        if self.single.device == device:
            return self
        return KeyTiles(single=self.single.to(device), single_codes=self.single_codes.to(device),
                        mixed=self.mixed.to(device))


def key_tiles(key_codes: torch.Tensor, block_n: int = BLOCK_N) -> KeyTiles:
    """Split the ``block_n``-key tiles of int64 codes ``(B|1, Lk)``: single-code tiles and the rest.

    Codes that differ between batch items make every tile mixed (the general path is exact for any tile).
    """
    lk, device = key_codes.shape[-1], key_codes.device
    starts = torch.arange(0, lk, block_n, device=device)
    if key_codes.shape[0] != 1:
        empty = torch.zeros(0, dtype=torch.int32, device=device)
        return KeyTiles(single=empty, single_codes=empty, mixed=starts.to(torch.int32))
    codes = key_codes[0]
    pad = -(-lk // block_n) * block_n - lk
    tiles = torch.cat([codes, codes[-1:].expand(pad)]).view(-1, block_n)  # the ragged end repeats its last code
    one = tiles.amin(1) == tiles.amax(1)
    return KeyTiles(single=starts[one].to(torch.int32), single_codes=tiles[one, 0].to(torch.int32),
                    mixed=starts[~one].to(torch.int32))


@frozen(kw_only=True)
class TokenOrder:
    """Queries and keys sorted by region code (stable), for :func:`triton_modulated_attention`.

    :ivar queries: int64 ``(B|1, Lq)``: sorted position → original query row.
    :ivar keys: int64 ``(B|1, Lk)``: sorted position → original key.
    :ivar key_codes: int64 ``(B|1, Lk)``: the key codes in sorted order.
    :ivar tiles: the :class:`KeyTiles` of the sorted keys.
    """

    queries: torch.Tensor = field(eq=False)
    keys: torch.Tensor = field(eq=False)
    key_codes: torch.Tensor = field(eq=False)
    tiles: KeyTiles

    def to(self, device: torch.device) -> TokenOrder:
        """A copy whose tensors live on ``device``."""
        return TokenOrder(queries=self.queries.to(device), keys=self.keys.to(device),
                          key_codes=self.key_codes.to(device), tiles=self.tiles.to(device))


def token_order(query_codes: torch.Tensor, key_codes: torch.Tensor) -> TokenOrder:
    """The :class:`TokenOrder` of int64 codes ``(B|1, Lq)`` and ``(B|1, Lk)`` (one stable sort each)."""
    key_sorted, keys = torch.sort(key_codes, dim=-1, stable=True)
    return TokenOrder(queries=torch.sort(query_codes, dim=-1, stable=True).indices, keys=keys,
                      key_codes=key_sorted, tiles=key_tiles(key_sorted))


#: Autotuned configurations on CUDA: (BLOCK_M, warps, stages). Few on purpose (each is compiled and
#: timed once per key length). Chosen with ``ptxas -v`` for sm_90 (no GPU at hand): with 64 × 64
#: tiles and 8 warps the two fp32 accumulators stay in registers for head dims up to 128 (no spills);
#: 128 rows spill a little at head dim 80 but less at 40.
_CONFIGS = ((64, 8, 2), (64, 8, 3), (128, 8, 3))


@functools.cache  # one JITFunction per process: Triton caches its compiled variants on it
def _build() -> Any:
    """Long: the kernel body is one Triton function (the online-softmax loop reads best in one piece).

    Decorated on first use so that importing this module needs no Triton. Returns
    ``(kernel, autotuned kernel, triton)``.
    """
    import triton
    import triton.language as tl

    # Triton reads parameter annotations (tl.constexpr marks compile-time ones); the others stay unannotated
    @triton.jit
    def kernel(q_ptr, k_ptr, v_ptr, o_ptr, lam_ptr, qc_ptr, kc_ptr, rel_ptr, qi_ptr,  # type: ignore[no-untyped-def]
               single_ptr, single_code_ptr,
               mixed_ptr, sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
               s_lam, s_qc, s_kc, s_qi, heads, lq, lk, dim, dim_v, pk, n_single, n_mixed, scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, F32_DOTS: tl.constexpr, QUERY_INDEX: tl.constexpr):
        """Long: one program = BLOCK_M query rows of one (batch, head); two loops walk all keys once.

        When the query block holds one code, the first loop takes the single-code key tiles (each is
        positive or negative as a whole: one P·V, accumulated in place, as in plain attention) and the
        second the mixed ones; otherwise the second loop takes every tile. Online softmax does not
        depend on the order of the tiles. (Nested jit helpers do not survive the interpreter, so the
        tile loads and dots are spelled out in both loops.)
        """
        start_m, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // heads, bh % heads
        rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims, dims_v = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
        row_ok = rows < lq
        if QUERY_INDEX:  # sorted position → original row: read and write rows where they are
            rows = tl.load(qi_ptr + b * s_qi + rows, mask=row_ok, other=0)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :],
                    mask=row_ok[:, None] & (dims[None, :] < dim), other=0.0)
        if F32_DOTS:
            q = q.to(tl.float32)
        lam = tl.load(lam_ptr + b * s_lam + rows, mask=row_ok, other=0.0)
        q_code = tl.load(qc_ptr + b * s_qc + rows, mask=row_ok, other=0)
        keep = 1.0 - lam
        q_first = tl.min(tl.where(row_ok, q_code, pk), 0)
        q_single = q_first == tl.max(tl.where(row_ok, q_code, -1), 0)
        neg_inf = float("-inf")
        mx = tl.full([BLOCK_M], neg_inf, tl.float32)
        mn = tl.full([BLOCK_M], float("inf"), tl.float32)
        m_pos = tl.full([BLOCK_M], neg_inf, tl.float32)
        m_neg = tl.full([BLOCK_M], neg_inf, tl.float32)
        l_pos = tl.zeros([BLOCK_M], tl.float32)
        l_neg = tl.zeros([BLOCK_M], tl.float32)
        acc_pos = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        acc_neg = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for j in range(0, tl.where(q_single, n_single, 0)):
            start_n = tl.load(single_ptr + j)
            cols = start_n + tl.arange(0, BLOCK_N)
            col_ok = cols < lk
            ok = col_ok[None, :]
            k = tl.load(k_ptr + b * sk_b + h * sk_h + cols[:, None] * sk_l + dims[None, :],
                        mask=col_ok[:, None] & (dims[None, :] < dim), other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + cols[:, None] * sv_l + dims_v[None, :],
                        mask=col_ok[:, None] & (dims_v[None, :] < dim_v), other=0.0)
            if F32_DOTS:
                k, v = k.to(tl.float32), v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            s_hi = tl.max(tl.where(ok, s, neg_inf), 1)
            s_lo = tl.min(tl.where(ok, s, float("inf")), 1)
            mx, mn = tl.maximum(mx, s_hi), tl.minimum(mn, s_lo)
            t = s * keep[:, None]
            tile_max = tl.where(keep >= 0, keep * s_hi, keep * s_lo)  # = max_y t, without a reduction
            if tl.load(rel_ptr + q_first * pk + tl.load(single_code_ptr + j)) != 0:
                m_new = tl.maximum(m_pos, tile_max)
                p = tl.where(ok, tl.exp(t - m_new[:, None]), 0.0)
                alpha = tl.exp(m_pos - m_new)
                l_pos = l_pos * alpha + tl.sum(p, 1)
                if F32_DOTS:
                    acc_pos = tl.dot(p, v, acc_pos * alpha[:, None], input_precision="ieee")
                else:
                    acc_pos = tl.dot(p.to(v.dtype), v, acc_pos * alpha[:, None])
                m_pos = m_new
            else:
                m_new = tl.maximum(m_neg, tile_max)
                p = tl.where(ok, tl.exp(t - m_new[:, None]), 0.0)
                alpha = tl.exp(m_neg - m_new)
                l_neg = l_neg * alpha + tl.sum(p, 1)
                if F32_DOTS:
                    acc_neg = tl.dot(p, v, acc_neg * alpha[:, None], input_precision="ieee")
                else:
                    acc_neg = tl.dot(p.to(v.dtype), v, acc_neg * alpha[:, None])
                m_neg = m_new
        for j in range(0, tl.where(q_single, n_mixed, tl.cdiv(lk, BLOCK_N))):
            if q_single:
                start_n = tl.load(mixed_ptr + j)
            else:
                start_n = j * BLOCK_N
            cols = start_n + tl.arange(0, BLOCK_N)
            col_ok = cols < lk
            ok = col_ok[None, :]
            k = tl.load(k_ptr + b * sk_b + h * sk_h + cols[:, None] * sk_l + dims[None, :],
                        mask=col_ok[:, None] & (dims[None, :] < dim), other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + cols[:, None] * sv_l + dims_v[None, :],
                        mask=col_ok[:, None] & (dims_v[None, :] < dim_v), other=0.0)
            if F32_DOTS:
                k, v = k.to(tl.float32), v.to(tl.float32)
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            mx = tl.maximum(mx, tl.max(tl.where(ok, s, neg_inf), 1))
            mn = tl.minimum(mn, tl.min(tl.where(ok, s, float("inf")), 1))
            t = s * keep[:, None]
            k_code = tl.load(kc_ptr + b * s_kc + cols, mask=col_ok, other=0)
            tile_pos = tl.load(rel_ptr + q_code[:, None] * pk + k_code[None, :], mask=ok, other=0) != 0
            pos, neg = ok & tile_pos, ok & (tile_pos == 0)
            new_pos = tl.maximum(m_pos, tl.max(tl.where(pos, t, neg_inf), 1))
            new_neg = tl.maximum(m_neg, tl.max(tl.where(neg, t, neg_inf), 1))
            safe_pos = tl.where(new_pos == neg_inf, 0.0, new_pos)  # no such key yet: avoid inf − inf
            safe_neg = tl.where(new_neg == neg_inf, 0.0, new_neg)
            p_pos = tl.where(pos, tl.exp(t - safe_pos[:, None]), 0.0)
            p_neg = tl.where(neg, tl.exp(t - safe_neg[:, None]), 0.0)
            a_pos, a_neg = tl.exp(m_pos - safe_pos), tl.exp(m_neg - safe_neg)
            l_pos = l_pos * a_pos + tl.sum(p_pos, 1)
            l_neg = l_neg * a_neg + tl.sum(p_neg, 1)
            if F32_DOTS:
                acc_pos = tl.dot(p_pos, v, acc_pos * a_pos[:, None], input_precision="ieee")
                acc_neg = tl.dot(p_neg, v, acc_neg * a_neg[:, None], input_precision="ieee")
            else:
                acc_pos = tl.dot(p_pos.to(v.dtype), v, acc_pos * a_pos[:, None])
                acc_neg = tl.dot(p_neg.to(v.dtype), v, acc_neg * a_neg[:, None])
            m_pos, m_neg = new_pos, new_neg
        # Weight the positive part by e^{λ(mx − mn)}, in log space against the larger of the two maxima.
        a = lam * (mx - mn) + m_pos
        top = tl.maximum(a, m_neg)
        w_pos = tl.where(m_pos == neg_inf, 0.0, tl.exp(a - top))
        w_neg = tl.where(m_neg == neg_inf, 0.0, tl.exp(m_neg - top))
        out = (acc_pos * w_pos[:, None] + acc_neg * w_neg[:, None]) / (l_pos * w_pos + l_neg * w_neg)[:, None]
        tl.store(o_ptr + b * so_b + h * so_h + rows[:, None] * so_l + dims_v[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dims_v[None, :] < dim_v))

    configs = [triton.Config({"BLOCK_M": m}, num_warps=w, num_stages=s) for m, w, s in _CONFIGS]
    tuned = triton.autotune(configs, key=["lk", "dim", "dim_v", "F32_DOTS"])(kernel)
    return kernel, tuned, triton


def _sorted_keys(k: torch.Tensor, v: torch.Tensor, order: TokenOrder) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` and ``v`` gathered in the order's key order (one O(Lk·d) copy each)."""
    b, h, lk = k.shape[:3]
    keys = order.keys.to(k.device)
    if keys.shape[0] == 1:
        return k.index_select(2, keys[0]), v.index_select(2, keys[0])
    index = keys[:, None, :, None]
    return (k.gather(2, index.expand(b, h, lk, k.shape[-1])), v.gather(2, index.expand(b, h, lk, v.shape[-1])))


def triton_modulated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    strength: torch.Tensor,
    query_codes: torch.Tensor,
    key_codes: torch.Tensor,
    relation: torch.Tensor,
    scale: float | None = None,
    order: TokenOrder | None = None,
    block_m: int | None = None,
    block_n: int = BLOCK_N,
) -> torch.Tensor:
    """Modulated attention in one pass (see the module docstring). Returns ``(B, H, Lq, dv)`` in ``q``'s dtype.

    :param order: ``token_order(query_codes, key_codes)`` (cached by the caller): queries and keys in
        code order, so that nearly every tile takes the single-code path. ``None``: the given order.
    :param block_m: query rows per program; ``None`` autotunes on CUDA (64 in the interpreter).
    :param block_n: keys per tile (tests use small tiles to get many of them).
    """
    kernel, tuned, triton = _build()
    b, h, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    scale = d**-0.5 if scale is None else scale
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    lam = strength.to(q.device, torch.float32).contiguous()
    q_codes = query_codes.to(q.device, torch.int32).contiguous()
    rel = relation.to(q.device, torch.int32).contiguous()
    if order is None:
        k_codes, q_index = key_codes.to(q.device), q_codes  # (q_index unused: QUERY_INDEX is off)
        tiles = key_tiles(k_codes, block_n)
    else:
        k, v = _sorted_keys(k, v, order)
        k_codes, q_index = order.key_codes.to(q.device), order.queries.to(q.device, torch.int32).contiguous()
        tiles = order.tiles.to(q.device) if block_n == BLOCK_N else key_tiles(k_codes, block_n)
    k_codes = k_codes.to(torch.int32).contiguous()
    out = torch.empty(b, h, lq, dv, dtype=q.dtype, device=q.device)

    def batch_stride(x: torch.Tensor) -> int:  # (1, L) labels are shared by the batch
        return 0 if x.shape[0] == 1 else x.stride(0)

    args = (q, k, v, out, lam, q_codes, k_codes, rel, q_index, tiles.single, tiles.single_codes, tiles.mixed,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            batch_stride(lam), batch_stride(q_codes), batch_stride(k_codes), batch_stride(q_index),
            h, lq, lk, d, dv, rel.shape[1], tiles.single.numel(), tiles.mixed.numel(), float(scale))
    # The interpreter has no bf16 matrix product (it multiplies the raw bits): fp32 dots there.
    f32_dots = q.dtype == torch.float32 or (_interpreting() and q.dtype == torch.bfloat16)
    meta = dict(BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)),
                BLOCK_DV=max(16, triton.next_power_of_2(dv)), F32_DOTS=f32_dots, QUERY_INDEX=order is not None)
    if block_m is None and not _interpreting():
        tuned[lambda m: (triton.cdiv(lq, m["BLOCK_M"]), b * h)](*args, **meta)
    else:
        block_m = block_m or 64
        kernel[(triton.cdiv(lq, block_m), b * h)](*args, BLOCK_M=block_m, **meta)
    return out
