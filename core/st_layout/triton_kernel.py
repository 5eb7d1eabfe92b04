"""Single-pass modulated attention in Triton (GPU; CPU tests run it with ``TRITON_INTERPRET=1``).

Same contract as :func:`stmod.core.st_layout.kernels.modulated_attention`. One pass over the keys,
exact: up to a per-row constant ``s' = (1 − λ)·s + λ(mx − mn)·R`` with ``R ∈ {0, 1}``, so per query
row it keeps the running max/min of the raw scores and two online-softmax accumulators of
``exp((1 − λ)s)`` and ``exp((1 − λ)s)·v`` — over its positive keys (``R = 1``) and its negative ones.
At the end the positive part is weighted by ``exp(λ(mx − mn))``::

    out = (e^{λΔ}·Σ_pos e^{t}v + Σ_neg e^{t}v) / (e^{λΔ}·Σ_pos e^{t} + Σ_neg e^{t}),   t = (1 − λ)s

(the per-key-code accumulators of the design collapse to these two because ``relation`` is boolean).
Inputs fp16/bf16/fp32, accumulation in fp32 (fp32 inputs use IEEE dots, not TF32).

Triton is imported only when :func:`triton_modulated_attention` runs; :func:`triton_available` says
whether it can (a CUDA tensor and an importable ``triton``, or the interpreter).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import torch

__all__ = ["triton_available", "triton_modulated_attention"]


def triton_available(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA, or anything under ``TRITON_INTERPRET=1``)."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache  # one JITFunction per process: Triton caches its compiled variants on it
def _build() -> Any:
    """Long: the kernel body is one Triton function (the online-softmax loop reads best in one piece).

    Decorated on first use so that importing this module needs no Triton.
    """
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(q_ptr, k_ptr, v_ptr, o_ptr, lam_ptr, qc_ptr, kc_ptr, rel_ptr,
               sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
               s_lam, s_qc, s_kc, heads, lq, lk, dim, dim_v, pk, scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, IEEE: tl.constexpr):
        """Long: one program = BLOCK_M query rows of one (batch, head); the loop walks all keys once."""
        start_m, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // heads, bh % heads
        rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims, dims_v = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
        row_ok = rows < lq
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rows[:, None] * sq_l + dims[None, :],
                    mask=row_ok[:, None] & (dims[None, :] < dim), other=0.0)
        lam = tl.load(lam_ptr + b * s_lam + rows, mask=row_ok, other=0.0)
        q_code = tl.load(qc_ptr + b * s_qc + rows, mask=row_ok, other=0)
        keep = 1.0 - lam
        neg_inf = float("-inf")
        mx = tl.full([BLOCK_M], neg_inf, tl.float32)
        mn = tl.full([BLOCK_M], float("inf"), tl.float32)
        m_pos = tl.full([BLOCK_M], neg_inf, tl.float32)
        m_neg = tl.full([BLOCK_M], neg_inf, tl.float32)
        l_pos = tl.zeros([BLOCK_M], tl.float32)
        l_neg = tl.zeros([BLOCK_M], tl.float32)
        acc_pos = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        acc_neg = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        for start_n in range(0, lk, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            col_ok = cols < lk
            k = tl.load(k_ptr + b * sk_b + h * sk_h + cols[:, None] * sk_l + dims[None, :],
                        mask=col_ok[:, None] & (dims[None, :] < dim), other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + cols[:, None] * sv_l + dims_v[None, :],
                        mask=col_ok[:, None] & (dims_v[None, :] < dim_v), other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
            else:
                s = tl.dot(q, tl.trans(k)) * scale
            k_code = tl.load(kc_ptr + b * s_kc + cols, mask=col_ok, other=0)
            r = tl.load(rel_ptr + q_code[:, None] * pk + k_code[None, :], mask=col_ok[None, :], other=0) != 0
            ok = col_ok[None, :]
            mx = tl.maximum(mx, tl.max(tl.where(ok, s, neg_inf), 1))
            mn = tl.minimum(mn, tl.min(tl.where(ok, s, float("inf")), 1))
            t = s * keep[:, None]
            pos, neg = ok & r, ok & (r == 0)
            new_pos = tl.maximum(m_pos, tl.max(tl.where(pos, t, neg_inf), 1))
            new_neg = tl.maximum(m_neg, tl.max(tl.where(neg, t, neg_inf), 1))
            safe_pos = tl.where(new_pos == neg_inf, 0.0, new_pos)  # no such key yet: avoid inf − inf
            safe_neg = tl.where(new_neg == neg_inf, 0.0, new_neg)
            p_pos = tl.where(pos, tl.exp(t - safe_pos[:, None]), 0.0)
            p_neg = tl.where(neg, tl.exp(t - safe_neg[:, None]), 0.0)
            a_pos, a_neg = tl.exp(m_pos - safe_pos), tl.exp(m_neg - safe_neg)
            l_pos = l_pos * a_pos + tl.sum(p_pos, 1)
            l_neg = l_neg * a_neg + tl.sum(p_neg, 1)
            if IEEE:
                acc_pos = acc_pos * a_pos[:, None] + tl.dot(p_pos, v, input_precision="ieee")
                acc_neg = acc_neg * a_neg[:, None] + tl.dot(p_neg, v, input_precision="ieee")
            else:
                acc_pos = acc_pos * a_pos[:, None] + tl.dot(p_pos.to(v.dtype), v)
                acc_neg = acc_neg * a_neg[:, None] + tl.dot(p_neg.to(v.dtype), v)
            m_pos, m_neg = new_pos, new_neg
        # Weight the positive part by e^{λ(mx − mn)}, in log space against the larger of the two maxima.
        a = lam * (mx - mn) + m_pos
        top = tl.maximum(a, m_neg)
        w_pos = tl.where(m_pos == neg_inf, 0.0, tl.exp(a - top))
        w_neg = tl.where(m_neg == neg_inf, 0.0, tl.exp(m_neg - top))
        out = (acc_pos * w_pos[:, None] + acc_neg * w_neg[:, None]) / (l_pos * w_pos + l_neg * w_neg)[:, None]
        tl.store(o_ptr + b * so_b + h * so_h + rows[:, None] * so_l + dims_v[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dims_v[None, :] < dim_v))

    return kernel, triton


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
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """Modulated attention in one pass (see the module docstring). Returns ``(B, H, Lq, dv)`` in ``q``'s dtype."""
    kernel, triton = _build()
    b, h, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    scale = d**-0.5 if scale is None else scale
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    lam = strength.to(q.device, torch.float32).contiguous()
    q_codes = query_codes.to(q.device, torch.int32).contiguous()
    k_codes = key_codes.to(q.device, torch.int32).contiguous()
    rel = relation.to(q.device, torch.int32).contiguous()
    out = torch.empty(b, h, lq, dv, dtype=q.dtype, device=q.device)

    def batch_stride(x: torch.Tensor) -> int:  # (1, L) labels are shared by the batch
        return 0 if x.shape[0] == 1 else x.stride(0)

    grid = (triton.cdiv(lq, block_m), b * h)
    kernel[grid](
        q, k, v, out, lam, q_codes, k_codes, rel,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        batch_stride(lam), batch_stride(q_codes), batch_stride(k_codes), h, lq, lk, d, dv, rel.shape[1],
        float(scale), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)),
        BLOCK_DV=max(16, triton.next_power_of_2(dv)), IEEE=q.dtype == torch.float32,
    )
    return out
