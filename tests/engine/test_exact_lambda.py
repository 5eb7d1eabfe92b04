"""Exact λ: the ``videograin`` preset rounds the size term and λ to float16 where the official code does.

The reference is ``official_lambda`` in ``conftest.py``: the official formula re-derived in float64
with every float16/float32 rounding of the official run spelled out (plain Python rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmod.core.st_layout.labels import layer_grid
from stmod.core.st_layout.modulator import STLayoutModulator
from stmod.core.st_layout.state import StepInfo
from stmod.core.types import ModulationConfig

from .conftest import official_lambda, round_bits
from .test_processors import MASK_SPANS, inputs, layer, plan_for, run_engine

TIMESTEPS = [981, 961, 721, 701]  # the first steps of 50-step DDIM and two late ones inside the window


def test_rounding_primitive_matches_numpy() -> None:
    """The reference's plain-Python rounding is IEEE round-to-nearest-even (checked against NumPy casts)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=2000), rng.uniform(-1e-6, 1e-6, 200), [2049.0, 2051.0, 0.5 + 2**-12]])
    for kind, dtype in (("float16", np.float16), ("float32", np.float32)):
        assert [round_bits(float(v), kind) for v in values] == values.astype(dtype).astype(np.float64).tolist()


def _strengths(masks: torch.Tensor, latent: tuple[int, int], level: int, config: ModulationConfig,
               kind: str, timestep: int) -> torch.Tensor:
    """λ per token of one layer as the engine computes it, ``(F, N)`` float32."""
    modulator = STLayoutModulator()
    modulator.prepare(plan_for(masks, latent, config))
    state = modulator._state
    grid = (latent[0] // 2**level, latent[1] // 2**level)
    layout = state.level(grid[0] * grid[1], masks.shape[0], torch.device("cpu"))
    assert layout.grid == layer_grid(grid[0] * grid[1], latent)
    step = StepInfo(phase="denoise", step_index=0, timestep=timestep)
    return state.token_strengths(step, kind, layout)


@pytest.mark.parametrize("timestep", TIMESTEPS)
@pytest.mark.parametrize(("frames", "latent", "level"), [(3, (8, 8), 1), (2, (8, 12), 1), (5, (16, 16), 2),
                                                          (3, (64, 64), 1)])
@pytest.mark.parametrize("kind", ["self", "cross"])
def test_lambda_equals_official_rounding(dense, make_masks, kind: str, frames: int, latent: tuple[int, int],
                                         level: int, timestep: int) -> None:
    """λ of every token equals the float64 re-derivation of the official float16 arithmetic (≤ 1e-6).

    Odd frame counts make ``f²·N`` no power of two (the float32 reciprocal then rounds); at the 32×32
    grid region ``a`` covers all tokens but one, so counts are odd and above 2048, where float16 stores
    only every second integer.
    """
    masks = make_masks(frames, (latent[0] * 8, latent[1] * 8), seed=frames)
    if latent == (64, 64):
        masks[:, 0] = True
        masks[0, 0, 0, 0] = False  # the top-left sample of token (0, 0) of frame 0
    grid = (latent[0] // 2**level, latent[1] // 2**level)
    counts, denominator = dense.size_counts(dense.masks_on(masks, grid), kind)
    scale = 0.3 if kind == "self" else 1.0
    expected = official_lambda(counts, denominator, scale, timestep).reshape(frames, -1)
    got = _strengths(masks, latent, level, ModulationConfig(), kind, timestep)
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() <= 1e-6
    plain = dense.xi(timestep) * scale * (dense.self_size(dense.masks_on(masks, grid), "videograin").reshape(frames, -1)
                                          if kind == "self" else dense.cross_size(dense.masks_on(masks, grid),
                                                                                  "videograin"))
    off = _strengths(masks, latent, level, ModulationConfig(exact_lambda=False), kind, timestep)
    torch.testing.assert_close(off.double(), plain, rtol=1e-6, atol=1e-7)  # off: the float32 formula, as before
    assert (off.double() - expected).abs().max().item() > 1e-5  # and the rounding is what the first check sees


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_processor_matches_official_attention(dense, make_masks, cross: bool) -> None:
    """With exact λ the whole layer equals the float64 official attention to float32 precision."""
    frames, latent = 3, (8, 8)
    masks = make_masks(frames, (64, 64), seed=7)
    hidden, text = inputs(2 * frames, 16, cross, seed=2)
    attn = layer(cross)
    step = dict(phase="denoise", step_index=1, timestep=961, branches=("uncond", "cond"))
    exact, plain = ModulationConfig(), ModulationConfig(exact_lambda=False)
    out, _ = run_engine(attn, hidden, text, plan_for(masks, latent, exact), **step)
    ref = dense.processor(attn, hidden, text, masks=masks, spans=MASK_SPANS, latent=latent, config=exact, **step)
    scale = ref.abs().max().item()
    assert (out.double() - ref).abs().max().item() <= 1e-6 * scale
    off, _ = run_engine(attn, hidden, text, plan_for(masks, latent, plain), **step)
    assert (off.double() - ref).abs().max().item() > 1e-6 * scale  # the check sees the rounding


def test_exact_lambda_is_the_videograin_presets() -> None:
    """Default: on for ``videograin``, off for ``paper``; asking for it with ``paper`` is an error."""
    for config, expected in ((ModulationConfig(), True), (ModulationConfig(preset="paper"), False),
                             (ModulationConfig(exact_lambda=False), False)):
        modulator = STLayoutModulator()
        modulator.prepare(plan_for(torch.zeros(1, 3, 8, 8, dtype=torch.bool), (8, 8), config))
        assert modulator._state.exact_lambda is expected
    with pytest.raises(ValueError, match="exact_lambda .* needs preset 'videograin'"):
        ModulationConfig(preset="paper", exact_lambda=True)


def test_exact_lambda_job_key(tmp_path) -> None:
    """``modulation: {exact_lambda: false}`` in a job reaches the config; a non-bool is named."""
    from stmod.core.config import job_from_mapping
    from stmod.core.errors import ConfigError

    job = {"video": {"path": "clip.mp4"}, "prompt": "a cat", "modulation": {"exact_lambda": False}}
    assert job_from_mapping(job, base_dir=tmp_path).modulation.exact_lambda is False
    with pytest.raises(ConfigError, match="exact_lambda"):
        job_from_mapping({**job, "modulation": {"exact_lambda": "often"}}, base_dir=tmp_path)


def _official_self_attention(attn, hidden: torch.Tensor, layouts: torch.Tensor, grid: tuple[int, int],
                             timestep: int) -> torch.Tensor:
    """The official sliced self-attention of the unconditional half, transcribed op for op in float32.

    ``_prepare_attention_layout`` builds the float16 maps; ``ST_Layout_Attn_ControlEdit.forward`` modulates
    each head's ``(f·N)²`` scores. ``treg`` is a float32 CUDA tensor that the CUDA kernel reads as float16;
    on the CPU that cast is written out.
    """
    import math

    import torch.nn.functional as F

    frames, (h, w) = layouts.shape[0], grid
    layouts = F.interpolate(layouts.to(torch.float16), (h, w), mode="nearest")
    layouts_s = layouts.reshape(frames, -1, 1, h * w).permute(1, 2, 0, 3).reshape(-1, 1, frames * h * w)
    sreg = (layouts_s * layouts_s.view(layouts_s.size(0), -1, 1)).sum(0).unsqueeze(0).to(torch.float16)
    reg_sizes = 1 - 1. * sreg.sum(-1, keepdim=True) / ((h * frames) * (w * frames))
    treg = torch.pow((torch.tensor(timestep) - 1) / 1000, 5).to(torch.float16)
    x = hidden[:frames]  # the unconditional branch
    q, k, v = (proj(x) for proj in (attn.to_q, attn.to_k, attn.to_v))
    d = q.shape[-1] // attn.heads
    out = []
    for head in range(attn.heads):
        qh, kh, vh = (t[..., head * d:(head + 1) * d].reshape(frames * h * w, d) for t in (q, k, v))
        sim = (qh @ kh.T * (1 / math.sqrt(d))).unsqueeze(0).unsqueeze(1)
        min_value, max_value = sim.min(-1)[0].unsqueeze(-1), sim.max(-1)[0].unsqueeze(-1)
        sim = sim + (sreg > 0) * reg_sizes * 0.3 * treg * (max_value - sim)
        sim = sim - ~(sreg > 0) * reg_sizes * 0.3 * treg * (sim - min_value)
        out.append((sim.softmax(-1) @ vh)[0, 0].reshape(frames, h * w, d))
    return attn.to_out[0](torch.cat(out, -1))


@pytest.mark.parametrize("timestep", [981, 841])
def test_matches_a_literal_transcription_of_the_official_code(make_masks, timestep: int) -> None:
    """The ``videograin`` self-attention equals the official code's own expressions in float32 (≤ 1e-6)."""
    frames, latent, grid = 2, (16, 16), (8, 8)  # f²·N a power of two: CPU division = CUDA's reciprocal
    layouts = make_masks(frames, latent, seed=5)  # masks at latent size, as the official layouts are
    attn = layer(False)
    hidden, _ = inputs(2 * frames, grid[0] * grid[1], False, seed=3)
    step = dict(phase="denoise", step_index=0, timestep=timestep, branches=("uncond", "cond"))
    out, _ = run_engine(attn, hidden, None, plan_for(layouts, latent, ModulationConfig()), **step)
    with torch.no_grad():
        official = _official_self_attention(attn, hidden, layouts, grid, timestep)
    assert (out[:frames] - official).abs().max().item() <= 1e-6 * official.abs().max().item()
    off, _ = run_engine(attn, hidden, None, plan_for(layouts, latent, ModulationConfig(exact_lambda=False)), **step)
    assert (off[:frames] - official).abs().max().item() > 1e-6 * official.abs().max().item()
