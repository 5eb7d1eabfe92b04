"""Bytes and FLOPs of a video diffusion transformer (Wan 2.1's ``WanTransformer3DModel``) and of Wan's
causal video VAE (``AutoencoderKLWan``), from their configs.

Pure arithmetic, no torch. Counts are as in :mod:`.formulas`: memory in *elements per batch item* (one
CFG branch: a whole clip, since Wan attends over all its latent frames in one sequence), FLOPs per
item with a multiply-add counted as 2.

**Tokens.** ``f = 1 + (F − 1)/4`` latent frames (the causal VAE), ``(H/8)/2 × (W/8)/2`` tokens each (the
VAE's 8× and the 1×2×2 patch): ``L = f·(H/16)·(W/16)``; 81 frames at 480×832 are 21 × 30 × 52 = 32 760.

**What a block holds at its peak** (elements per token in units of the width ``D``, counted from
diffusers' ``WanTransformerBlock.forward`` and stmod's ``WanLayoutProcessor``; no dense ``L × L`` map:
SDPA's fused kernels and stmod's chunked / Triton kernels never hold one):

* self-attention: the block input, its modulated norm, q/k/v, their frame-row copies (the engine's
  layout), the joined-sequence copies of one call, SDPA's output, its frame-major copy and ``to_out``:
  :data:`ATTENTION_ELEMENTS` ``D`` with ``full`` attention (less per window, as :func:`self_attention_elements`
  counts for the UNet); the modulated kernel's buffers come on top (:mod:`.attention`);
* cross-attention: input, norm, q and its frame rows, output, copy, ``to_out`` (``7D``) plus the text's
  keys and values copied per latent frame (``2·f·512·D`` per item);
* feed-forward: input, norm, the ``ffn``-wide projection and its GELU (``2·ffn + 2D``).

Weights are exact (:func:`dit_params` equals diffusers' module for the 1.3B and 14B configs); the
VAE's working set and FLOPs are estimates from its config with constants marked as assumptions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from stmod.core.budget.formulas import Cost, Focus

__all__ = ["DiTShape", "WanVAEShape", "dit_shape", "wan_vae_shape", "dit_params", "latent_frames", "dit_tokens",
           "dit_cost", "wan_vae_cost", "DIT_TEXT_TOKENS", "ATTENTION_ELEMENTS", "VAE_LIVE_TENSORS",
           "VAE_CHUNK_FRAMES"]

#: Text positions of Wan's cross-attention (diffusers' ``max_sequence_length``).
DIT_TEXT_TOKENS = 512

#: Self-attention peak per token with ``full`` attention, in units of ``D`` (counted, see the module docs).
ATTENTION_ELEMENTS = 14

#: ASSUMPTION (until bench/gpu.sh measures it): the VAE holds about this many activation tensors of its
#: full-resolution stage at once, per frame of the chunk it works on (input, output, norm, SiLU, the
#: causal convolution's cache of two earlier frames, padding copies).
VAE_LIVE_TENSORS = 8

#: Frames diffusers' ``AutoencoderKLWan`` encodes or decodes at once (the first frame, then groups of
#: 4 with a cache of the causal convolutions): its working set does not grow with the clip.
VAE_CHUNK_FRAMES = 4


@frozen(kw_only=True)
class DiTShape:
    """The parts of a ``WanTransformer3DModel`` config the formulas need (text-to-video: no image keys)."""

    layers: int
    heads: int
    head_dim: int
    ffn: int
    text_dim: int
    freq_dim: int
    in_channels: int
    out_channels: int
    patch: tuple[int, int, int] = (1, 2, 2)
    cross_norm: bool = True
    qk_norm: bool = True

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


@frozen(kw_only=True)
class WanVAEShape:
    """The parts of an ``AutoencoderKLWan`` config the formulas need."""

    base_dim: int
    dim_mult: tuple[int, ...]
    res_blocks: int
    z_dim: int
    time_down: tuple[bool, ...]

    @property
    def time_ratio(self) -> int:
        return 2 ** sum(self.time_down)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


def dit_shape(config: Mapping[str, Any]) -> DiTShape | None:
    """The formulas' view of a Wan transformer config; ``None`` when the config is not that kind."""
    try:
        if config.get("image_dim") or config.get("added_kv_proj_dim"):
            return None  # image-to-video: keys of an image encoder too, not modelled
        patch = tuple(int(p) for p in config.get("patch_size", (1, 2, 2)))
        return DiTShape(layers=int(config["num_layers"]), heads=int(config["num_attention_heads"]),
                        head_dim=int(config["attention_head_dim"]), ffn=int(config["ffn_dim"]),
                        text_dim=int(config.get("text_dim", 4096)), freq_dim=int(config.get("freq_dim", 256)),
                        in_channels=int(config.get("in_channels", 16)),
                        out_channels=int(config.get("out_channels", 16)),
                        patch=(patch[0], patch[1], patch[2]), cross_norm=bool(config.get("cross_attn_norm", True)),
                        qk_norm=config.get("qk_norm", "rms_norm_across_heads") is not None)
    except (KeyError, TypeError, ValueError, IndexError):
        return None


def wan_vae_shape(config: Mapping[str, Any]) -> WanVAEShape | None:
    """The formulas' view of an ``AutoencoderKLWan`` config; ``None`` when the config is not that kind."""
    try:
        return WanVAEShape(base_dim=int(config["base_dim"]), dim_mult=tuple(int(m) for m in config["dim_mult"]),
                           res_blocks=int(config.get("num_res_blocks", 2)), z_dim=int(config.get("z_dim", 16)),
                           time_down=tuple(bool(t) for t in config.get("temperal_downsample", (False, True, True))))
    except (KeyError, TypeError, ValueError):
        return None


def dit_params(shape: DiTShape) -> int:
    """Parameters of diffusers' ``WanTransformer3DModel`` with this shape (exact; tests compare the module)."""
    d, p = shape.dim, math.prod(shape.patch)

    def linear(cin: int, cout: int) -> int:
        return cin * cout + cout

    embed = shape.in_channels * p * d + d  # the patch convolution
    time = linear(shape.freq_dim, d) + linear(d, d) + linear(d, 6 * d)  # timestep MLP and its 6 modulations
    text = linear(shape.text_dim, d) + linear(d, d)
    norms = 2 * d if shape.qk_norm else 0  # RMS norms of q and k across heads
    attention = 4 * linear(d, d) + norms
    block = 2 * attention + (2 * d if shape.cross_norm else 0) + linear(d, shape.ffn) + linear(shape.ffn, d) + 6 * d
    head = linear(d, shape.out_channels * p) + 2 * d  # output projection and its shift/scale table
    return embed + time + text + shape.layers * block + head


def latent_frames(frames: int, time_ratio: int) -> int:
    """Latent frames of ``frames`` clip frames through a causal VAE (``1 + (F − 1)/r``, rounded up)."""
    return 1 + math.ceil(max(0, frames - 1) / time_ratio)


def dit_tokens(height: int, width: int, shape: DiTShape, scale: int = 8) -> int:
    """Tokens per latent frame: the latent grid divided by the patch."""
    return (height // scale // shape.patch[1]) * (width // scale // shape.patch[2])


def _self_attention_elements(focus: Focus) -> float:
    """Self-attention peak per token in units of ``D`` under ``focus`` (windows: one call's copies)."""
    if not focus.joined:  # per latent frame: no sequence copies, the frame rows are the call's
        return ATTENTION_ELEMENTS - 3.0 + (4.0 if focus.key_frames > 1 else 0.0)
    one_call = (focus.query_share + 2 * focus.key_share) + 2 * focus.query_share
    return ATTENTION_ELEMENTS - 5.0 + one_call + (1.0 if focus.query_share < 1 else 0.0)


def dit_cost(shape: DiTShape, frames: int, per_frame: int, focus: Focus, *, extra: float = 0.0) -> Cost:
    """Peak elements and FLOPs of one transformer forward per item (one CFG branch of ``frames`` latent
    frames of ``per_frame`` tokens); ``focus`` in latent frames; ``extra``: elements per item the modulated
    self-attention kernel adds (:mod:`.attention`)."""
    d, length, text = shape.dim, frames * per_frame, DIT_TEXT_TOKENS
    attention_peak = _self_attention_elements(focus) * d * length + extra
    cross_peak = 7.0 * d * length + 2.0 * frames * text * d
    ffn_peak = (2.0 * shape.ffn + 2.0 * d) * length
    dense_per_token = 2.0 * (6 * d * d + 2 * d * shape.ffn)  # q, k, v, out of attn1; q, out of attn2; the FFN
    dense = shape.layers * (dense_per_token * length + 2.0 * 2 * d * d * text)  # + attn2's keys and values
    dense += 2.0 * text * (shape.text_dim * d + d * d)  # the text projection
    dense += 2.0 * length * math.prod(shape.patch) * d * (shape.in_channels + shape.out_channels)
    keys = focus.key_frames * per_frame
    attention = shape.layers * (4.0 * length * keys * d + 4.0 * length * text * d)
    work = attention * max(1.0, 64 / max(1, shape.head_dim))
    return Cost(float(max(attention_peak, cross_peak, ffn_peak)), dense, attention, work)


def wan_vae_cost(vae: WanVAEShape, height: int, width: int, *, decoder: bool) -> Cost:
    """Peak elements and FLOPs of ``AutoencoderKLWan`` per **clip frame** at ``height × width`` pixels.

    ``peak`` is the working set of one chunk (:data:`VAE_CHUNK_FRAMES` frames; an assumption, see
    :data:`VAE_LIVE_TENSORS`). FLOPs count the 3×3×3 convolutions of the residual blocks (two per block,
    ``res_blocks`` per stage, one more in the decoder), each stage at a quarter of the pixels of the one
    above and at the frames its time down-sampling leaves; the mid block's attention and the 1×1
    convolutions are left out (a few per cent).
    """
    pixels = height * width
    dims = [vae.base_dim * m for m in vae.dim_mult]
    blocks = vae.res_blocks + (1 if decoder else 0)
    flops, time = 0.0, 1
    for stage, channels in enumerate(dims):
        flops += 2.0 * 27 * 2 * blocks * channels * channels * pixels / (4**stage * time)
        if stage < len(vae.time_down) and vae.time_down[stage]:
            time *= 2
    peak = float(VAE_LIVE_TENSORS * VAE_CHUNK_FRAMES * dims[0] * pixels)
    return Cost(peak, flops, 0.0, 0.0)
