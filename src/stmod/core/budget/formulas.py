"""Bytes and FLOPs of the UNet, the ControlNet and the VAE, walked block by block from their configs.

Pure arithmetic on :class:`~stmod.core.budget.sizes.UNetShape` / :class:`~stmod.core.budget.sizes.VAEShape`.
Memory counts are *elements per batch item* (multiply by the batch and the dtype's bytes); FLOPs are
per batch item, a multiply-add counted as 2. The walk follows diffusers' ``UNet2DConditionModel``
(``get_down_block`` / ``get_up_block``: ``layers`` resnets per down block, ``layers + 1`` per up
block, each taking one skip) and ``Encoder`` / ``Decoder`` of ``AutoencoderKL``.

What a block holds at its peak (elements per token, ``C`` its channels), counted from the forward
code (tensors referenced at the same time, no grad):

* resnet ``cin → cout``: input, two temporaries (norm, SiLU) of the wider side, output:
  ``cin + 2·max(cin, cout) + cout`` (an up block's concatenated input is one more ``cin``);
* transformer feed-forward (GEGLU, 4× inner): residual, hidden, norm, the ``8C`` projection, GELU of
  the gate ``4C`` and the product ``4C``: ``19C`` — the largest at every level;
* self-attention: residual, hidden, norm, q/k/v, their joined-sequence copies, SDPA's output and its
  reshape: ``11C`` (``full``), per window less (see :func:`self_attention_elements`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

from attrs import frozen

from stmod.core.budget.sizes import UNetShape, VAEShape

__all__ = ["Focus", "PER_FRAME", "Block", "Cost", "TEXT_TOKENS", "FF_ELEMENTS", "tokens", "unet_blocks", "block_cost",
           "self_attention_elements", "self_attention_flops", "unet_cost", "vae_cost", "skip_elements"]

#: Text tokens of a CLIP prompt (keys of cross-attention).
TEXT_TOKENS = 77

#: Head width from which SDPA runs at its full FLOP rate (narrower heads: proportionally slower).
REFERENCE_HEAD_DIM = 64

#: Feed-forward peak per token in units of ``C`` (see the module docs).
FF_ELEMENTS = 19


@frozen
class Focus:
    """How self-attention spans frames, as the formulas need it.

    :ivar key_frames: key frames per query frame, averaged over the clip (``full``: F; ``per-frame``:
        1; ``sparse-causal``: 2; ``window``: Σ |queries|·|keys| / F over the windows).
    :ivar joined: frames attend as one sequence (``full``, ``window``) rather than frame by frame.
    :ivar query_share: query frames of the largest single call ÷ F (``full``: 1).
    :ivar key_share: key frames of that call ÷ F.
    """

    key_frames: float
    joined: bool = False
    query_share: float = 1.0
    key_share: float = 1.0


#: Frame-by-frame attention (and the VAE, which has none across frames).
PER_FRAME = Focus(key_frames=1.0)


@frozen
class Block:
    """One block of a UNet walk: kind, level, channels in and out, whether it pops a skip (up blocks)
    or its output is pushed as one (down blocks)."""

    kind: str  # conv | resnet | transformer | down | up
    level: int
    cin: int
    cout: int
    pops_skip: bool = False
    pushes_skip: bool = False


@frozen
class Cost:
    """Per batch item: peak live elements, dense FLOPs (conv, linear), attention FLOPs (QKᵀ, PV), and
    the attention FLOPs weighted by ``max(1, REFERENCE_HEAD_DIM / head_dim)`` (``attention_work``):
    SDPA over narrow heads is memory-bound, its FLOP rate falls with the head width."""

    peak: float
    dense: float
    attention: float
    attention_work: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(max(self.peak, other.peak), self.dense + other.dense, self.attention + other.attention,
                    self.attention_work + other.attention_work)


def tokens(height: int, width: int, level: int) -> int:
    """Tokens of a grid ``height × width`` after ``level`` halvings (diffusers pads odd sizes up)."""
    return math.ceil(height / 2**level) * math.ceil(width / 2**level)


def unet_blocks(shape: UNetShape, *, down_only: bool = False) -> Iterator[Block]:
    """The blocks of a UNet in execution order (``down_only``: a ControlNet's encoder half and mid block)."""
    levels, last = len(shape.channels), len(shape.channels) - 1
    yield Block("conv", 0, shape.in_channels, shape.channels[0], pushes_skip=True)
    previous = shape.channels[0]
    skips = [previous]
    for level, channels in enumerate(shape.channels):
        for _ in range(shape.layers):
            yield Block("resnet", level, previous, channels, pushes_skip=not shape.attention[level])
            previous = channels
            if shape.attention[level]:
                yield Block("transformer", level, channels, channels, pushes_skip=True)
            skips.append(channels)
        if level < last:
            yield Block("down", level + 1, channels, channels, pushes_skip=True)
            skips.append(channels)
    yield Block("resnet", last, previous, previous)
    if shape.mid_attention:
        yield Block("transformer", last, previous, previous)
    yield Block("resnet", last, previous, previous)
    if down_only:
        return
    for level in reversed(range(levels)):
        channels = shape.channels[level]
        for _ in range(shape.layers + 1):
            yield Block("resnet", level, previous + skips.pop(), channels, pops_skip=True)
            previous = channels
            if shape.attention[level]:
                yield Block("transformer", level, channels, channels)
        if level > 0:
            yield Block("up", level - 1, channels, channels)
    yield Block("conv", 0, shape.channels[0], shape.in_channels)


def skip_elements(shape: UNetShape, height: int, width: int) -> float:
    """Elements per item of all skip tensors (a ControlNet's residuals have these shapes, plus the mid one)."""
    return float(sum(b.cout * tokens(height, width, b.level) for b in unet_blocks(shape, down_only=True)
                     if b.pushes_skip))


def self_attention_elements(channels: int, focus: Focus) -> float:
    """Peak elements per token of a self-attention block under ``focus`` (see :class:`Focus`).

    Always: residual, hidden, norm and the q/k/v projections (``6C``). Frame by frame
    (``per-frame``): SDPA's output and its reshape (``2C``); ``sparse-causal`` also gathers each
    frame's two key frames for k and v (``4C``). Joined frames: one call's q, k, v sequence copies
    (``(q_share + 2·k_share)·C``), its output and reshape (``2·q_share·C``), and with several windows
    the clip's accumulator (``C``).
    """
    c = channels
    if not focus.joined:
        return 8.0 * c + (4.0 * c if focus.key_frames > 1 else 0.0)
    one_call = (focus.query_share + 2 * focus.key_share) * c + 2 * focus.query_share * c
    return 6.0 * c + one_call + (c if focus.query_share < 1 else 0.0)


def block_cost(block: Block, shape: UNetShape, height: int, width: int, focus: Focus,
               extra: Mapping[int, float] | None = None) -> Cost:
    """Peak elements and FLOPs per item of one block; ``extra``: elements per item a self-attention
    kernel adds at a level (the modulated kernel's buffers, see :mod:`stmod.core.budget.attention`)."""
    t = tokens(height, width, block.level)
    cin, cout = block.cin, block.cout
    if block.kind == "conv":
        return Cost(float((cin + cout) * t), 18.0 * cin * cout * t, 0.0)
    if block.kind in ("down", "up"):  # stride-2 conv, or nearest ×2 then conv, at the block's output grid
        return Cost(float(3 * cout * t), 18.0 * cin * cout * t, 0.0)
    if block.kind == "resnet":
        peak: float = cin + 2 * max(cin, cout) + cout + (cin if block.pops_skip else 0)
        dense = 18.0 * (cin * cout + cout * cout) * t + (2.0 * cin * cout * t if cin != cout else 0.0)
        return Cost(float(peak * t), dense, 0.0)
    c = cout
    dense = 40.0 * c * c * t + 4.0 * shape.cross_dim * c * TEXT_TOKENS
    attention = 4.0 * t * (t * focus.key_frames) * c + 4.0 * t * TEXT_TOKENS * c
    head_dim = c // shape.heads[min(block.level, len(shape.heads) - 1)]
    work = attention * max(1.0, REFERENCE_HEAD_DIM / max(1, head_dim))
    attention_peak = self_attention_elements(c, focus) * t + (extra or {}).get(block.level, 0.0)
    peak = max(FF_ELEMENTS * c * t, attention_peak)
    return Cost(float(peak), dense, attention, work)


def unet_cost(shape: UNetShape, height: int, width: int, focus: Focus, *, down_only: bool = False,
              extra: Mapping[int, float] | None = None) -> Cost:
    """Peak live elements (skips alive at that moment included), and FLOPs, of one forward per item;
    ``height × width`` is the latent grid."""
    live, stack = 0.0, []
    total = Cost(0.0, 0.0, 0.0)
    for block in unet_blocks(shape, down_only=down_only):
        cost = block_cost(block, shape, height, width, focus, extra)
        total = total + Cost(live + cost.peak, cost.dense, cost.attention, cost.attention_work)
        if block.pushes_skip:
            stack.append(block.cout * tokens(height, width, block.level))
            live += stack[-1]
        if block.pops_skip:
            live -= stack.pop()
    return total


def self_attention_flops(shape: UNetShape, height: int, width: int, focus: Focus) -> float:
    """Attention work (FLOPs weighted as in :class:`Cost`) per item of the UNet's self-attention alone."""
    return sum(4.0 * tokens(height, width, b.level) ** 2 * focus.key_frames * b.cout
               * max(1.0, REFERENCE_HEAD_DIM / max(1, b.cout // shape.heads[b.level]))
               for b in unet_blocks(shape) if b.kind == "transformer")


def vae_cost(shape: VAEShape, height: int, width: int, *, decoder: bool) -> Cost:
    """Peak live elements and FLOPs per frame of the VAE encoder (``decoder=False``) or decoder.

    ``height × width`` is the pixel grid (level 0); level ``L − 1`` is the latent grid, where the
    mid block's single-head attention runs over all of its tokens.
    """
    levels, channels = len(shape.channels), shape.channels
    last = levels - 1
    blocks: list[Block] = []
    if decoder:
        previous = channels[-1]
        blocks.append(Block("conv", last, shape.latent_channels, previous))
        mid = [Block("resnet", last, previous, previous), Block("transformer", last, previous, previous),
               Block("resnet", last, previous, previous)]
        blocks += mid
        for i, level in enumerate(reversed(range(levels))):
            out = channels[level]
            for _ in range(shape.layers + 1):
                blocks.append(Block("resnet", level, previous, out))
                previous = out
            if level > 0:
                blocks.append(Block("up", level - 1, out, out))
        blocks.append(Block("conv", 0, channels[0], 3))
    else:
        blocks.append(Block("conv", 0, 3, channels[0]))
        previous = channels[0]
        for level, out in enumerate(channels):
            for _ in range(shape.layers):
                blocks.append(Block("resnet", level, previous, out))
                previous = out
            if level < last:
                blocks.append(Block("down", level + 1, out, out))
        blocks += [Block("resnet", last, previous, previous), Block("transformer", last, previous, previous),
                   Block("resnet", last, previous, previous), Block("conv", last, previous, 2 * shape.latent_channels)]
    total = Cost(0.0, 0.0, 0.0)
    for block in blocks:
        total = total + _vae_block(block, height, width)
    return total


def _vae_block(block: Block, height: int, width: int) -> Cost:
    """A VAE block; its attention is one head over the latent grid (q, k, v, output: ``6C`` per token)."""
    if block.kind != "transformer":
        return block_cost(block, _NO_UNET, height, width, PER_FRAME)
    t, c = tokens(height, width, block.level), block.cout
    return Cost(6.0 * c * t, 8.0 * c * c * t, 4.0 * t * t * c, 4.0 * t * t * c)


_NO_UNET = UNetShape(channels=(1,), layers=1, attention=(False,), heads=(1,), cross_dim=1)
