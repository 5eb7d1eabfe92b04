"""ST-Layout modulation as pure tensor math (``docs/method.md``). No diffusers, no model, no state.

For a query x and key y with scaled scores ``s = q·k/√d`` (one attention row per query)::

    mx = max_y s     mn = min_y s                       (per query row, before modulation)
    s'  = s + R·λ_x·(mx − s) − (1 − R)·λ_x·(s − mn)
        = (1 − λ_x)·s + λ_x·(mx − mn)·R + λ_x·mn        (the last term is constant per row)
    λ_x = ξ(t) · c · (1 − S_x)      ξ(t) = ((t − 1)/1000)^5

``R`` says whether key y is *positive* for query x (same region for self-attention; a token of the
local prompt of a region that contains x for cross-attention). Everything here derives ``R`` and
``1 − S`` per attention resolution from the pixel masks, for either preset (:class:`PresetRules`):

* ``R`` is never stored as a matrix. Each token gets a small integer *code* (the index of its set of
  regions among the distinct sets present) and ``R = relation[code_x, code_y]`` with a tiny
  ``(P, P)`` table, so a layer's labels cost O(F·N) memory.
* Masks are down-sampled to each layer's grid with PyTorch ``nearest`` (the sample at the top-left
  corner of each block, exactly the official ``F.interpolate(mode='nearest')``) or ``area`` (a token
  is in a region when at least :data:`AREA_THRESHOLD` of its pixels are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from attrs import field, frozen

from stmod.core.levels import level_grid, level_of
from stmod.core.types import ModulationConfig

__all__ = [
    "AREA_THRESHOLD",
    "PresetRules",
    "rules_for",
    "time_weight",
    "time_weight_tensor",
    "modulated_scores",
    "layer_grid",
    "downsample_masks",
    "region_bits",
    "token_bits",
    "relation_codes",
    "size_factor",
    "official_float16",
    "token_strength",
    "LevelLayout",
    "level_layout",
    "rules_of",
]

#: ``area`` down-sampling: a token belongs to a region when at least this fraction of its pixels do.
AREA_THRESHOLD = 0.5


@frozen(kw_only=True)
class PresetRules:
    """The concrete choices behind a preset (``docs/method.md`` lists them side by side).

    :ivar background_region: pixels in no mask form a region of their own (positive among themselves
        in self-attention); otherwise they are negative to every key.
    :ivar self_size: ``"video/f²N"`` — ``S = Σ_k m_k[x]·|m_k|_video / (f²·N)`` (official);
        ``"smallest/video"`` — area fraction over the video of the smallest region containing x.
    :ivar cross_size: ``"frame-sum"`` — ``S = Σ_k m_k[x]·|m_k|_frame / N`` (official);
        ``"smallest/frame"`` — area fraction in x's frame of the smallest region containing x.
    :ivar token_owner: ``"last"`` — a token in several spans belongs to the last region (the official
        map is overwritten in order); ``"union"`` — it is positive in all their regions.
    :ivar self_branch, cross_branch: the CFG branch whose attention is modulated.
    :ivar skip_finest: leave layers with more than ``(h_lat//2)·(w_lat//2)`` tokens per frame (64×64
        at 512²) unmodulated.
    :ivar composite_text: condition the UNet on the composite text embedding
        (:func:`stmod.core.tokens.composite_text_embedding`) instead of the global prompt's.
    :ivar uncond_text: the UNet's unconditional text: ``"empty"`` (``E("")``; the official code sends
        the negative prompt to the ControlNet only) or ``"negative"`` (the negative prompt).
    :ivar float16_lambda: the default of ``ModulationConfig.exact_lambda``: round the size term and λ
        to float16 where the official code does (:func:`size_factor`, :func:`token_strength`).
    """

    background_region: bool
    self_size: Literal["video/f²N", "smallest/video"]
    cross_size: Literal["frame-sum", "smallest/frame"]
    token_owner: Literal["last", "union"]
    self_branch: Literal["uncond", "cond"]
    cross_branch: Literal["uncond", "cond"]
    skip_finest: bool
    composite_text: bool
    uncond_text: Literal["empty", "negative"]
    float16_lambda: bool


_RULES = {
    "videograin": PresetRules(
        background_region=False, self_size="video/f²N", cross_size="frame-sum", token_owner="last",
        self_branch="uncond", cross_branch="cond", skip_finest=True, composite_text=True,
        uncond_text="empty", float16_lambda=True,
    ),
    "paper": PresetRules(
        background_region=True, self_size="smallest/video", cross_size="smallest/frame", token_owner="union",
        self_branch="cond", cross_branch="cond", skip_finest=False, composite_text=False,
        uncond_text="negative", float16_lambda=False,
    ),
}


def rules_for(preset: str) -> PresetRules:
    """The rules of preset ``"videograin"`` (the official code) or ``"paper"`` (the equations)."""
    return _RULES[preset]


def rules_of(config: ModulationConfig) -> PresetRules:
    """The rules of ``config.preset`` with the choices ``config`` makes itself (``modulate_finest``,
    ``self_branch``; ``None`` keeps the preset's)."""
    rules = rules_for(config.preset)
    if config.modulate_finest is not None:
        rules = attrs.evolve(rules, skip_finest=not config.modulate_finest)
    if config.self_branch is not None:
        rules = attrs.evolve(rules, self_branch=config.self_branch)
    return rules


def time_weight(timestep: float, exponent: float = 5.0) -> float:
    """ξ(t) = ((timestep − 1)/1000)^exponent, the official ``treg`` (0.9039 at t = 981 for ^5).

    ``timestep`` is the scheduler's integer timestep (981, 961, … for 50 DDIM steps with
    ``steps_offset=1``). Timesteps below 1 give 0 instead of a negative or complex power.
    """
    base = max(0.0, (float(timestep) - 1.0) / 1000.0)
    return base**exponent


def modulated_scores(scores: torch.Tensor, positive: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """The literal formula: ``s + R·λ·(mx − s) − (1 − R)·λ·(s − mn)`` with row max/min of ``s``.

    :param scores: ``(..., Lq, Lk)`` scaled pre-softmax scores, any float dtype.
    :param positive: bool, broadcastable to ``scores``: ``R``.
    :param strength: ``(..., Lq)`` λ per query (broadcastable), any real value.
    :returns: a new tensor shaped and typed like ``scores``.
    """
    mx = scores.amax(dim=-1, keepdim=True)
    mn = scores.amin(dim=-1, keepdim=True)
    lam = strength.to(scores.dtype).unsqueeze(-1)
    pos = positive.to(scores.dtype)
    return scores + pos * lam * (mx - scores) - (1 - pos) * lam * (scores - mn)


def layer_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` grid of a UNet layer with ``tokens`` tokens per frame.

    Each UNet level halves the latent with a stride-2 convolution (``ceil``), so level ``r`` has
    ``ceil(h/2^r) × ceil(w/2^r)`` tokens; this works for non-square latents.

    :raises ValueError: when no level of ``latent_size`` has that many tokens.
    """
    level = level_of(tokens, latent_size)
    if level is None:
        raise ValueError(f"no UNet level of a {latent_size[0]}×{latent_size[1]} latent has {tokens} tokens per frame")
    return level_grid(latent_size, level)


def downsample_masks(
    masks: torch.Tensor, size: tuple[int, int], mode: Literal["nearest", "area"] = "nearest"
) -> torch.Tensor:
    """Bool ``(F, K, H, W)`` pixel masks → bool ``(F, K, h, w)`` on a layer grid.

    ``nearest`` samples pixel ``floor(i·H/h)`` (PyTorch's rule; the official two-stage resize gives the
    same samples when the sizes divide). ``area`` keeps a token when its covered fraction is at least
    :data:`AREA_THRESHOLD`.
    """
    if masks.shape[-2:] == tuple(size):
        return masks.clone()
    if mode == "nearest":
        return F.interpolate(masks.float(), size=size, mode="nearest") > 0.5
    if mode == "area":
        return F.interpolate(masks.float(), size=size, mode="area") >= AREA_THRESHOLD
    raise ValueError(f"unknown mask down-sampling {mode!r}; use 'nearest' or 'area'")


def region_bits(masks: torch.Tensor, *, background_region: bool = False) -> torch.Tensor:
    """Int64 ``(...)`` bitset per token: bit k set when region k covers it.

    :param masks: bool ``(..., K)`` (regions last).
    :param background_region: give tokens in no region bit ``K`` instead of no bit.
    """
    k = masks.shape[-1]
    if k + int(background_region) > 62:
        raise ValueError(f"at most 62 regions are supported, got {k}")
    weights = 2 ** torch.arange(k, dtype=torch.int64, device=masks.device)
    bits = (masks.to(torch.int64) * weights).sum(-1)
    if background_region:
        bits = torch.where(bits == 0, torch.full_like(bits, 1 << k), bits)
    return bits


def token_bits(
    spans: Sequence[tuple[int, int] | None], length: int = 77, *, owner: Literal["last", "union"] = "last"
) -> torch.Tensor:
    """Int64 ``(length,)`` bitset per text token: the regions whose local-prompt span contains it.

    :param spans: per region k, ``(start, stop)`` token positions in the global prompt or ``None``.
    :param owner: ``"last"`` keeps only the last region listing a token (official overwrite order);
        ``"union"`` keeps all of them. Tokens in no span (start/end/padding, other words) get 0.
    """
    bits = torch.zeros(length, dtype=torch.int64)
    for k, span in enumerate(spans):
        if span is None:
            continue
        start, stop = span
        if owner == "last":
            bits[start:stop] = 1 << k
        else:
            bits[start:stop] |= 1 << k
    return bits


def relation_codes(
    query_bits: torch.Tensor, key_bits: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compress bitsets into codes and a relation table: ``R[x, y] = relation[qc[x], kc[y]]``.

    :param query_bits: int64 bitsets of the queries, any shape.
    :param key_bits: those of the keys (``None``: same as the queries, one shared code book).
    :returns: ``(query_codes, key_codes, relation)``: int64 codes shaped like the inputs and a bool
        ``(Pq, Pk)`` table, ``True`` when the two bitsets share a region.
    """
    if key_bits is None:
        values, codes = torch.unique(query_bits, return_inverse=True)
        return codes, codes, (values[:, None] & values[None, :]) != 0
    q_values, q_codes = torch.unique(query_bits, return_inverse=True)
    k_values, k_codes = torch.unique(key_bits, return_inverse=True)
    return q_codes, k_codes, (q_values[:, None] & k_values[None, :]) != 0


def official_float16(values: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to the nearest float16 (ties to even), returned as float32."""
    return values.to(torch.float16).to(torch.float32)


def _official_one_minus_ratio(counts: torch.Tensor, denominator: int) -> torch.Tensor:
    """``1 − counts/denominator`` with the official float16 steps.

    Provenance: VideoGrain ``_prepare_attention_layout`` computes ``1-1.*layouts.sum(-1)/D`` on float16
    maps: the row sum is stored as float16, CUDA divides by a Python number as a float32 multiply by
    its float32 reciprocal (``div_true_kernel_cuda``), and each result is stored as float16.
    """
    inverse = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(float(denominator), dtype=torch.float32)
    ratio = official_float16(official_float16(counts) * inverse)
    return official_float16(1 - ratio)


def size_factor(masks: torch.Tensor, rule: str, *, float16: bool = False) -> torch.Tensor:
    """``1 − S_x`` per token, float32 ``(F, N)``, from bool masks ``(F, K, N)`` on one grid.

    Rules (see :class:`PresetRules`): ``"video/f²N"``, ``"frame-sum"`` (official; overlapping masks
    add up, so ``1 − S`` can go negative — reproduced on purpose), ``"smallest/video"``,
    ``"smallest/frame"`` (paper; pixels in no mask use the background's own area fraction).
    ``float16`` (official rules only) rounds the steps to float16 as the official code does
    (:func:`_official_one_minus_ratio`); the values stay float32 tensors.
    """
    frames, _, n = masks.shape
    m = masks.to(torch.float32)
    if rule in ("video/f²N", "frame-sum"):
        if rule == "video/f²N":
            area, denominator = m.sum(dim=(0, 2))[None, :, None], frames * frames * n  # pixels over all frames
        else:
            area, denominator = m.sum(dim=2, keepdim=True), n  # (F, K, 1) pixels in each frame
        counts = (m * area).sum(1)  # integers, exact in float32
        return _official_one_minus_ratio(counts, denominator) if float16 else 1 - counts / denominator
    if rule not in ("smallest/video", "smallest/frame"):
        raise ValueError(f"unknown size rule {rule!r}")
    if float16:
        raise ValueError(f"float16 rounding is the official code's; size rule {rule!r} is not")
    background = ~masks.any(1, keepdim=True)  # (F, 1, N)
    full = torch.cat([masks, background], 1).to(torch.float32)
    if rule == "smallest/video":
        fraction = full.sum(dim=(0, 2), keepdim=True).expand_as(full) / (frames * n)
    else:
        fraction = full.sum(dim=2, keepdim=True).expand_as(full) / n
    smallest = torch.where(full > 0, fraction, torch.full_like(fraction, math.inf)).amin(1)
    return 1 - smallest


def time_weight_tensor(timestep: float | torch.Tensor, exponent: float = 5.0) -> torch.Tensor:
    """:func:`time_weight` as a float64 0-dim tensor, bit for bit: a traced model reads the timestep as
    tensor data, so a compiled UNet does not recompile for every step's new value."""
    base = (torch.as_tensor(timestep, dtype=torch.float64) - 1.0) / 1000.0
    return base.clamp_min(0) ** exponent


def token_strength(size: torch.Tensor, scale: float, timestep: float | torch.Tensor, exponent: float = 5.0, *,
                   float16: bool = False) -> torch.Tensor:
    """λ per token: ``ξ(t) · c · (1 − S)``, float32 shaped like ``size``; ``timestep`` a number or a
    0-dim tensor (:attr:`~stmod.core.st_layout.state.StepInfo.clock`), computed without a host sync.

    ``float16`` reproduces the official rounding (``ST_Layout_Attn_ControlEdit.forward``:
    ``size_reg*self.sreg*treg`` with a float16 ``size_reg``, evaluated left to right before it meets the
    scores): ``(1 − S)·c`` is stored as float16, ``treg = ((t − 1)/1000)^5`` is a float32 tensor that the
    CUDA kernel reads as float16, and their product is stored as float16 — so λ is a float16 value even
    when the scores are float32.
    """
    t = torch.as_tensor(timestep, dtype=torch.float64)
    if not float16:  # ξ·c in float64, then float32 (as a Python float scalar meets a float32 tensor)
        return (time_weight_tensor(t, exponent) * scale).to(torch.float32) * size
    base = (t - 1.0).to(torch.float32) / 1000.0
    treg = official_float16(base.clamp_min(0) ** exponent)
    scaled = official_float16(size.to(torch.float32) * torch.tensor(scale, dtype=torch.float32))
    return official_float16(scaled * treg)


@frozen(kw_only=True)
class LevelLayout:
    """Everything one attention resolution needs, for all frames of the video (O(F·N) memory).

    ``N = h·w`` tokens per frame; frame-major flattening (token ``f·N + i``) matches the
    spatio-temporal sequence of a video.

    :ivar grid: ``(h, w)``.
    :ivar masks: bool ``(F, K, N)``, the region masks on this grid.
    :ivar self_codes: int64 ``(F, N)`` codes of the self-attention labels; ``self_relation`` bool
        ``(P, P)``.
    :ivar pixel_codes: int64 ``(F, N)`` and ``text_codes`` int64 ``(T,)`` cross-attention codes;
        ``cross_relation`` bool ``(Pq, Pt)``.
    :ivar self_size, cross_size: float32 ``(F, N)``: ``1 − S`` (multiply by ``ξ·c`` to get λ).
    """

    grid: tuple[int, int]
    masks: torch.Tensor = field(eq=False)
    self_codes: torch.Tensor = field(eq=False)
    self_relation: torch.Tensor = field(eq=False)
    pixel_codes: torch.Tensor = field(eq=False)
    text_codes: torch.Tensor = field(eq=False)
    cross_relation: torch.Tensor = field(eq=False)
    self_size: torch.Tensor = field(eq=False)
    cross_size: torch.Tensor = field(eq=False)

    def to(self, device: torch.device) -> LevelLayout:
        """A copy whose tensors live on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("masks", "self_codes", "self_relation", "pixel_codes", "text_codes",
                         "cross_relation", "self_size", "cross_size")
        }
        return LevelLayout(grid=self.grid, **moved)


def level_layout(
    masks: torch.Tensor,
    grid: tuple[int, int],
    *,
    rules: PresetRules,
    spans: Sequence[tuple[int, int] | None],
    text_length: int = 77,
    downsample: Literal["nearest", "area"] = "nearest",
    float16: bool = False,
) -> LevelLayout:
    """Build the :class:`LevelLayout` of one grid from pixel masks.

    :param masks: bool ``(F, K, H, W)`` pixel masks, region k ↔ ``spans[k]``.
    :param grid: the layer's ``(h, w)``.
    :param rules: the preset's rules.
    :param spans: per region, its ``(start, stop)`` token positions in the global prompt or ``None``
        (no text tokens: the region only takes part in self-attention).
    :param float16: round the size terms as the official code (:func:`size_factor`).
    """
    if len(spans) != masks.shape[1]:
        raise ValueError(f"{len(spans)} token spans for {masks.shape[1]} masks")
    frames, k = masks.shape[:2]
    small = downsample_masks(masks, grid, downsample).reshape(frames, k, -1)
    per_token = small.permute(0, 2, 1)  # (F, N, K)
    self_codes, _, self_relation = relation_codes(region_bits(per_token, background_region=rules.background_region))
    pixel_codes, text_codes, cross_relation = relation_codes(
        region_bits(per_token), token_bits(spans, text_length, owner=rules.token_owner)
    )
    return LevelLayout(
        grid=(int(grid[0]), int(grid[1])),
        masks=small,
        self_codes=self_codes,
        self_relation=self_relation,
        pixel_codes=pixel_codes,
        text_codes=text_codes,
        cross_relation=cross_relation,
        self_size=size_factor(small, rules.self_size, float16=float16),
        cross_size=size_factor(small, rules.cross_size, float16=float16),
    )
