"""Fixtures for the ST-Layout engine tests, and the literal float64 dense implementation of the method.

``DenseReference`` is written straight from the equations (``docs/method.md`` §1) and the official
code's behaviour (the ``videograin`` preset, ``docs/method.md`` §2), with full (F·N)×(F·N) matrices, Python loops over heads and
frames, and no code shared with the engine. The engine must match it to fp32 precision.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from stmod.core.types import OFFICIAL_END_STEP, ModulationConfig

OFFICIAL_XI = [0.9039, 0.8154, 0.7339, 0.6591, 0.5905, 0.5277, 0.4704, 0.4182, 0.3707, 0.3277, 0.2887, 0.2536,
               0.2219, 0.1935, 0.1681]


def round_bits(x: float, kind: str) -> float:
    """``x`` rounded to the nearest ``"float16"`` or ``"float32"`` (ties to even), in plain Python float64."""
    bits, lowest = {"float16": (11, -14), "float32": (24, -126)}[kind]
    if x == 0 or not math.isfinite(x):
        return x
    _, e = math.frexp(x)  # x = m·2^e with 0.5 ≤ |m| < 1: the leading bit is 2^(e−1)
    quantum = max(e - 1, lowest) - (bits - 1)  # subnormals keep the smallest normal's quantum
    return math.ldexp(round(math.ldexp(x, -quantum)), quantum)  # round(): half to even


def official_lambda(size_counts: torch.Tensor, denominator: int, scale: float, timestep: float,
                    exponent: float = 5.0) -> torch.Tensor:
    """The official λ re-derived in float64 with every float16/float32 rounding of the official run.

    ``reg = 1 − 1.*Σ/D`` on a float16 map (the sum stored as float16; CUDA divides by a Python number as a
    float32 multiply by its float32 reciprocal), then ``reg·c·treg`` left to right (``reg·c`` stored as
    float16; ``treg`` a float32 power that the kernel reads as float16; the product stored as float16).
    """
    h, f = (lambda v: round_bits(v, "float16")), (lambda v: round_bits(v, "float32"))
    inverse = f(1.0 / denominator)
    treg = h(f(max(f((timestep - 1.0) / 1000.0), 0.0) ** exponent))
    c = f(scale)
    out = []
    for n in size_counts.flatten().tolist():
        reg = h(1.0 - h(f(h(n) * inverse)))
        out.append(h(f(h(f(reg * c)) * treg)))
    return torch.tensor(out, dtype=torch.float64).reshape(size_counts.shape)


class DenseReference:
    """The method, literally, in float64. Masks are bool ``(F, K, H, W)`` pixel masks."""

    @staticmethod
    def xi(timestep: float, exponent: float = 5.0) -> float:
        return ((timestep - 1) / 1000) ** exponent

    @staticmethod
    def masks_on(masks: torch.Tensor, grid: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
        """Bool ``(F, K, N)``: the official ``F.interpolate(mode='nearest')`` (or area ≥ 0.5)."""
        small = F.interpolate(masks.double(), size=grid, mode=mode)
        small = small > 0.5 if mode == "nearest" else small >= 0.5
        return small.reshape(masks.shape[0], masks.shape[1], -1)

    @staticmethod
    def self_positive(m: torch.Tensor, preset: str) -> torch.Tensor:
        """Dense ``(F·N, F·N)`` R: query and key share a region (paper: background is a region)."""
        frames, k, n = m.shape
        flat = m.permute(1, 0, 2).reshape(k, frames * n).double()  # region × token, frame-major
        if preset == "paper":
            flat = torch.cat([flat, 1 - flat.amax(0, keepdim=True)], 0)
        return sum(flat[s][:, None] * flat[s][None, :] for s in range(flat.shape[0])) > 0

    @staticmethod
    def self_size(m: torch.Tensor, preset: str) -> torch.Tensor:
        """``1 − S`` per token, ``(F·N,)``."""
        frames, k, n = m.shape
        md = m.double()
        out = torch.zeros(frames * n, dtype=torch.float64)
        for f in range(frames):
            for x in range(n):
                if preset == "videograin":  # official: Σ_s m_s[x]·|m_s|_video / (f²·N)
                    s = sum(md[f, r, x] * md[:, r].sum() for r in range(k)) / (frames * frames * n)
                else:  # smallest region containing x, background its own region, over the video
                    areas = [md[:, r].sum() for r in range(k) if m[f, r, x]]
                    if not areas:
                        areas = [(~m.any(1)).double().sum()]
                    s = min(areas) / (frames * n)
                out[f * n + x] = 1 - s
        return out

    @staticmethod
    def size_counts(m: torch.Tensor, kind: str) -> tuple[torch.Tensor, int]:
        """The official size term's numerators (flattened like :meth:`self_size` / :meth:`cross_size`)
        and denominator: ``Σ_s m_s[x]·|m_s|`` over the video (self, ``f²·N``) or the frame (cross, ``N``)."""
        frames, k, n = m.shape
        md = m.double()
        if kind == "self":
            counts = [sum(md[f, r, x] * md[:, r].sum() for r in range(k)) for f in range(frames) for x in range(n)]
            return torch.tensor(counts, dtype=torch.float64), frames * frames * n
        counts = [[sum(md[f, r, x] * md[f, r].sum() for r in range(k)) for x in range(n)] for f in range(frames)]
        return torch.tensor(counts, dtype=torch.float64), n

    @staticmethod
    def cross_positive(m: torch.Tensor, spans: list[Any], preset: str, length: int = 77) -> torch.Tensor:
        """Dense ``(F, N, T)`` R for cross-attention; tokens in no local-prompt span are negative."""
        frames, k, n = m.shape
        if preset == "videograin":  # pww_maps[:, :, j:j+wlen] = layouts[:, i] (later spans overwrite)
            pww = torch.zeros(frames, length, n, dtype=torch.float64)
            for r, span in enumerate(spans):
                if span is not None:
                    pww[:, span[0]:span[1]] = m[:, r, None, :].double()
            return (pww > 0).permute(0, 2, 1)
        out = torch.zeros(frames, n, length, dtype=torch.bool)
        for r, span in enumerate(spans):
            if span is not None:
                out[:, :, span[0]:span[1]] |= m[:, r, :, None]
        return out

    @staticmethod
    def cross_size(m: torch.Tensor, preset: str) -> torch.Tensor:
        """``1 − S`` per pixel, ``(F, N)``, per frame."""
        frames, k, n = m.shape
        md = m.double()
        out = torch.zeros(frames, n, dtype=torch.float64)
        for f in range(frames):
            for x in range(n):
                if preset == "videograin":  # Σ_s m_s[x]·|m_s|_frame / N
                    s = sum(md[f, r, x] * md[f, r].sum() for r in range(k)) / n
                else:
                    areas = [md[f, r].sum() for r in range(k) if m[f, r, x]]
                    if not areas:
                        areas = [(~m[f].any(0)).double().sum()]
                    s = min(areas) / n
                out[f, x] = 1 - s
        return out

    @staticmethod
    def attend(s: torch.Tensor, positive: torch.Tensor, lam: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
        """``softmax(s + R·λ(mx − s) − (1 − R)·λ(s − mn))·V`` for one head; ``s (Lq, Lk)``."""
        if isinstance(lam, float):
            lam = torch.full((s.shape[0],), lam, dtype=torch.float64)
        mx = s.max(dim=1, keepdim=True).values
        mn = s.min(dim=1, keepdim=True).values
        r = positive.double()
        lam = lam[:, None]
        s2 = s + r * lam * (mx - s) - (1 - r) * lam * (s - mn)
        return torch.softmax(s2, dim=1) @ v

    @staticmethod
    def windows(frames: int, config: ModulationConfig) -> list[tuple[set[int], list[int]]]:
        """The ``window`` focus spelled out: windows of ``window_frames`` every ``window_frames −
        window_overlap`` frames, the last one moved to end at the clip's end, each also keyed by
        the first ``anchor_frames`` frames."""
        length, hop = config.window_frames, config.window_frames - config.window_overlap
        if length >= frames:
            return [(set(range(frames)), list(range(frames)))]
        starts, s = [], 0
        while s + length <= frames:
            starts.append(s)
            s += hop
        if starts[-1] + length != frames:
            starts.append(frames - length)
        anchors = set(range(min(config.anchor_frames, frames)))
        return [(set(range(s, s + length)), sorted(anchors | set(range(s, s + length)))) for s in starts]

    @classmethod
    def processor(
        cls,
        attn: Any,
        hidden: torch.Tensor,
        text: torch.Tensor | None,
        *,
        masks: torch.Tensor,
        spans: list[Any],
        latent: tuple[int, int],
        config: ModulationConfig,
        phase: str,
        step_index: int,
        timestep: float,
        branches: tuple[str, ...],
    ) -> torch.Tensor:
        """A whole attention layer (projections included) with the method applied, ``(B·F, N, C)``."""
        preset = config.preset
        x = hidden.double()
        ctx = x if text is None else text.double()
        q = x @ attn.to_q.weight.double().T
        k = ctx @ attn.to_k.weight.double().T
        v = ctx @ attn.to_v.weight.double().T
        rows, n, _ = x.shape
        heads = attn.heads
        d = q.shape[-1] // heads
        nb = len(branches)
        frames = rows // nb
        grid = next((latent[0] // 2**r, latent[1] // 2**r) for r in range(8)
                    if (latent[0] // 2**r) * (latent[1] // 2**r) == n)
        m = cls.masks_on(masks, grid, config.mask_downsample)
        end = OFFICIAL_END_STEP if config.end_step is None else config.end_step  # unresolved: the official 15
        in_window = phase == "denoise" and config.start_step <= step_index < end
        finest = n > (latent[0] // 2) * (latent[1] // 2)
        layer_on = not (preset == "videograin" and finest)
        xi = cls.xi(timestep, config.time_exponent)
        out = torch.zeros(rows, n, heads * d, dtype=torch.float64)
        if text is None:
            positive, size = cls.self_positive(m, preset), cls.self_size(m, preset)
        else:
            positive, size = cls.cross_positive(m, spans, preset, ctx.shape[1]), cls.cross_size(m, preset)
        exact = config.exact_lambda if config.exact_lambda is not None else preset == "videograin"
        scale = config.self_strength if text is None else config.cross_strength
        lam_on = (official_lambda(*cls.size_counts(m, "self" if text is None else "cross"), scale, timestep,
                                  config.time_exponent) if exact else xi * scale * size)  # λ where modulated
        for b, branch in enumerate(branches):
            for h in range(heads):
                hs = slice(h * d, (h + 1) * d)
                if text is None:
                    on = in_window and config.modulate_self and layer_on and branch == (
                        "uncond" if preset == "videograin" else "cond")
                    qv = q[b * frames:(b + 1) * frames, :, hs].reshape(frames * n, d)
                    kv = k[b * frames:(b + 1) * frames, :, hs].reshape(frames * n, d)
                    vv = v[b * frames:(b + 1) * frames, :, hs].reshape(frames * n, d)
                    lam = lam_on if on else torch.zeros(frames * n, dtype=torch.float64)
                    res = torch.zeros(frames * n, d, dtype=torch.float64)
                    for f in range(frames):
                        rows_f = slice(f * n, (f + 1) * n)
                        if config.temporal == "full":
                            key_sets = [list(range(frames * n))]
                        elif config.temporal == "per-frame":
                            key_sets = [list(range(f * n, (f + 1) * n))]
                        elif config.temporal == "window":  # the mean over the windows holding frame f
                            key_sets = [[i * n + j for i in key_frames for j in range(n)]
                                        for query_frames, key_frames in cls.windows(frames, config) if f in query_frames]
                        else:  # sparse-causal: frame 0 ‖ frame i − 1
                            prev = max(f - 1, 0)
                            key_sets = [list(range(0, n)) + list(range(prev * n, (prev + 1) * n))]
                        for keys in key_sets:
                            s = qv[rows_f] @ kv[keys].T / math.sqrt(d)
                            res[rows_f] += cls.attend(s, positive[rows_f][:, keys], lam[rows_f], vv[keys]) / len(key_sets)
                    out[b * frames:(b + 1) * frames, :, hs] = res.reshape(frames, n, d)
                else:
                    on = in_window and config.modulate_cross and layer_on and branch == "cond"
                    for f in range(frames):
                        r = b * frames + f
                        s = q[r, :, hs] @ k[r, :, hs].T / math.sqrt(d)
                        lam = lam_on[f] if on else 0.0
                        out[r, :, hs] = cls.attend(s, positive[f], lam, v[r, :, hs])
        return out @ attn.to_out[0].weight.double().T + attn.to_out[0].bias.double()


@pytest.fixture
def dense() -> type[DenseReference]:
    """The literal float64 implementation of the method."""
    return DenseReference


@pytest.fixture
def official_xi() -> list[float]:
    """ξ(t) of the official code for denoising steps 0..14 (``((t − 1)/1000)^5``, ``docs/method.md`` §1)."""
    return OFFICIAL_XI


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny offline CLIP tokenizer (one token per test word)."""
    from transformers import CLIPTokenizer

    from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer

    folder: Path = tmp_path_factory.mktemp("tokenizer")
    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder))


def random_masks(frames: int, size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """Bool ``(F, 3, H, W)``: two overlapping moving rectangles and a speckle region; some pixels in none."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    m = torch.zeros(frames, 3, h, w, dtype=torch.bool)
    for f in range(frames):
        m[f, 0, : h // 2 + 2 * f, : w // 2] = True
        m[f, 1, h // 4 : 3 * h // 4, w // 3 + f : w - 2] = True  # overlaps region 0
        m[f, 2] = torch.rand(h, w, generator=g) < 0.15
    m[:, 2, -h // 8 :, :] = False  # bottom rows: some pixels are in no region at all
    m[:, 1, -h // 8 :, :] = False
    m[:, 0, -h // 8 :, :] = False
    return m


@pytest.fixture
def make_masks():
    """``make_masks(frames, (H, W), seed=0)`` → bool ``(F, 3, H, W)`` test masks (see ``random_masks``)."""
    return random_masks
