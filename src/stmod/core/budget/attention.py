"""Working memory of one modulated self-attention call, from :mod:`stmod.core.st_layout.kernels`.

The two-pass kernel (``modulated_attention``) holds, besides its inputs and output:

* the row-extrema score buffer: ``min(budget, CPU_BLOCK_BYTES)`` on the CPU (``budget`` elsewhere),
  never more than all scores of the call;
* the widened ``q̃, k̃, ṽ`` and SDPA's widened output for a group of heads, ``g = max(1, min(H,
  budget // per_head))`` with ``per_head = B·(Lq + 2·Lk)·width·item`` and ``width = d + P`` (rounded
  up to 8 off the CPU): ``g·B·(2·Lq + 2·Lk)·width·item`` — bounded by the budget, not by ``Lq·Lk``;
* the gathered query rows and the call's output: ``2·B·Lq·C·item``.

The single-pass Triton kernel holds its output only. The plain CFG branch of the same call is
gathered by list index (q, k, v and its output copied): ``(2·Lq + 2·Lk)·C·item`` per branch.
"""

from __future__ import annotations

from stmod.core.budget.formulas import Focus, tokens
from stmod.core.budget.sizes import UNetShape

__all__ = ["CPU_BLOCK_BYTES", "modulated_call_bytes", "modulated_extra"]

#: The CPU row-extrema block of :mod:`stmod.core.st_layout.kernels` (kept equal by a test).
CPU_BLOCK_BYTES = 64 * 2**20


def modulated_call_bytes(*, batch: int, heads: int, channels: int, queries: int, keys: int, codes: int, item: int,
                         budget: int, device: str, kernel: str = "two-pass") -> float:
    """Bytes one modulated call adds (``batch`` items of ``queries`` × ``keys`` tokens, ``heads`` heads)."""
    rows = 2.0 * batch * queries * channels * item
    if kernel == "triton":
        return batch * queries * channels * item
    head_dim = channels // heads
    width = head_dim + codes
    if device != "cpu":
        width = -(-width // 8) * 8
    block = min(budget, CPU_BLOCK_BYTES) if device == "cpu" else budget
    extrema = min(float(block), float(batch * heads) * queries * keys * item)
    per_head = batch * (queries + 2 * keys) * width * item
    group = max(1, min(heads, budget // max(1, per_head)))
    widened = group * batch * (2 * queries + 2 * keys) * width * item
    return extrema + widened + rows


def modulated_extra(shape: UNetShape, height: int, width: int, focus: Focus, *, frames: int, branches: int,
                    codes: int, item: int, budget: int, device: str, kernel: str = "two-pass") -> dict[int, float]:
    """Elements per batch item that modulated self-attention adds at each attention level of the UNet.

    The batch is ``branches × frames`` items; the modulated kernel runs on one branch (the others are
    plain SDPA on gathered copies). ``height × width`` is the latent grid.
    """
    found = {}
    items = branches * frames
    for level, has in enumerate(shape.attention):
        if not has:
            continue
        t, c = tokens(height, width, level), shape.channels[level]
        if focus.joined:  # one sequence per call: batch 1, the call's query and key frames
            batch, queries = 1, round(focus.query_share * frames) * t
            keys = round(focus.key_share * frames) * t
        else:  # frame by frame: every frame a batch item, its own or its key frames' tokens
            batch, queries, keys = frames, t, round(focus.key_frames) * t
        extra = modulated_call_bytes(batch=batch, heads=shape.heads[level], channels=c, queries=queries, keys=keys,
                                     codes=codes, item=item, budget=budget, device=device, kernel=kernel)
        if focus.joined:
            extra += (branches - 1) * (2 * queries + 2 * keys) * c * item
        found[level] = extra / (items * item)
    return found
