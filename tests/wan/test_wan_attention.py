"""ST-Layout on the tiny Wan transformer: stock at strength 0, a float64 dense reference, clean removal."""

from __future__ import annotations

import copy

import torch

from stmod.backbones.wan.attention import CallContext, WanLayoutProcessor, apply_rotary
from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator
from stmod.core.st_layout.processor import STLayoutProcessor
from stmod.core.st_layout.state import EngineState, StepInfo
from stmod.core.tokens import find_token_spans
from stmod.core.types import LayoutMasks, ModulationConfig, ModulationInput, Region

FRAMES, SIZE = 5, 32  # 5 frames → 2 latent frames of 4×4 latents → 2×2 tokens each


def _masks() -> LayoutMasks:
    masks = torch.zeros(FRAMES, 2, SIZE, SIZE, dtype=torch.bool)
    masks[:, 0, :, :16], masks[:, 1, :, 16:] = True, True
    return LayoutMasks(masks=masks, names=("cat", "dog"))


def _prepared(backbone, config: ModulationConfig) -> STLayoutModulator:
    regions = (Region(name="cat", prompt="red cat"), Region(name="dog", prompt="blue dog"))
    prompt = "a red cat and a blue dog"
    spans = find_token_spans(backbone.load_tokenizer(), prompt, [r.prompt for r in regions])
    modulator = STLayoutModulator(EngineOptions())
    modulator.prepare(ModulationInput(masks=backbone.latent_masks(_masks()), num_frames=2, latent_size=(4, 4),
                                      regions=regions, spans=spans, config=config.resolved(4), prompt=prompt,
                                      text_length=backbone.text_length))
    return modulator


def _velocity(backbone, modulator: STLayoutModulator | None) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 16, 4, 4, generator=generator)  # 2 CFG branches × 2 latent frames
    backbone.latent_frames = 2
    text = backbone.encode_text(["", "a red cat and a blue dog"]).repeat_interleave(2, dim=0)
    if modulator is None:
        return backbone.predict_noise(latents, 900, text)
    kwargs = modulator.call_kwargs(phase="denoise", step_index=0, timestep=900)
    with modulator.install(backbone.attention_models()["unet"], role="unet"):
        return backbone.predict_noise(latents, 900, text, cross_attention_kwargs=kwargs)


def test_strength_zero_is_stock_wan_attention(wan_backbone) -> None:
    """Both processors (attn1 space-time, attn2 text) through the engine at strength 0 give stock Wan's velocity;
    with strength the velocity changes (so the comparison can fail)."""
    stock = _velocity(wan_backbone, None)
    zero = _velocity(wan_backbone, _prepared(wan_backbone, ModulationConfig(self_strength=0.0, cross_strength=0.0)))
    assert torch.allclose(zero, stock, atol=1e-5, rtol=1e-5)
    strong = _velocity(wan_backbone, _prepared(wan_backbone, ModulationConfig(preset="paper", self_strength=1.0)))
    assert (strong - stock).abs().max() > 1e-3


def test_processors_restored_after_the_edit(wan_backbone) -> None:
    before = dict(wan_backbone.transformer.attn_processors)
    modulator = _prepared(wan_backbone, ModulationConfig())
    with modulator.install(wan_backbone.attention_models()["unet"], role="unet"):
        inside = wan_backbone.transformer.attn_processors
        assert all(isinstance(p, WanLayoutProcessor) for p in inside.values()) and len(inside) == len(before)
    after = wan_backbone.transformer.attn_processors
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)


def test_modulated_attn1_equals_float64_dense_reference(wan_backbone) -> None:
    """The Wan processor's modulated space-time self-attention equals the method's formula on dense float64 maps."""
    attn = copy.deepcopy(wan_backbone.transformer.blocks[0].attn1).double()
    modulator = _prepared(wan_backbone, ModulationConfig(preset="paper", self_strength=0.8))
    state: EngineState = modulator._state
    step = StepInfo(phase="denoise", step_index=0, timestep=900, branches=("cond",))
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 8, attn.to_q.in_features, generator=generator, dtype=torch.float64)
    rope = wan_backbone.transformer.rope(torch.zeros(1, 16, 2, 4, 4))
    rope = tuple(r.double() for r in rope)
    context = CallContext()
    with context.calling(step, frames=2):
        out = WanLayoutProcessor(STLayoutProcessor(state), context)(attn, hidden, rotary_emb=rope)

    with torch.no_grad():
        q, k, v = attn.norm_q(attn.to_q(hidden)), attn.norm_k(attn.to_k(hidden)), attn.to_v(hidden)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        q, k, v = (x[0].transpose(0, 1) for x in (q, k, v))  # (H, L, d)
        layout = state.level(4, 2, torch.device("cpu"))
        codes = layout.self_codes.reshape(-1)
        relation = layout.self_relation[codes[:, None], codes[None, :]].double()
        lam = state.token_strengths(step, "self", layout).reshape(-1, 1).double()
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        mx, mn = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
        s = s + relation * lam * (mx - s) - (1 - relation) * lam * (s - mn)
        dense = (s.softmax(-1) @ v).transpose(0, 1).reshape(1, 8, -1)
        reference = attn.to_out[1](attn.to_out[0](dense))
    assert lam.abs().max() > 0.1 and not torch.all(relation == 1)
    # the engine keeps row extrema and λ in float32 by design (kernels.py): agreement to float32 precision
    assert torch.allclose(out, reference, atol=1e-6, rtol=1e-6)


def test_modulated_attn2_equals_float64_dense_reference(wan_backbone) -> None:
    """The Wan processor's modulated cross-attention to the 512 text positions equals the formula, dense, float64."""
    attn = copy.deepcopy(wan_backbone.transformer.blocks[0].attn2).double()
    modulator = _prepared(wan_backbone, ModulationConfig(preset="paper"))
    state: EngineState = modulator._state
    step = StepInfo(phase="denoise", step_index=0, timestep=900, branches=("cond",))
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 8, attn.to_q.in_features, generator=generator, dtype=torch.float64)
    text = torch.randn(1, 512, attn.to_k.in_features, generator=generator, dtype=torch.float64)
    context = CallContext()
    with context.calling(step, frames=2):
        out = WanLayoutProcessor(STLayoutProcessor(state), context)(attn, hidden, text)

    with torch.no_grad():
        q, k, v = attn.norm_q(attn.to_q(hidden)), attn.norm_k(attn.to_k(text)), attn.to_v(text)
        q, k, v = (x.unflatten(2, (attn.heads, -1))[0].transpose(0, 1) for x in (q, k, v))  # (H, L, d)
        layout = state.level(4, 2, torch.device("cpu"))
        relation = layout.cross_relation[layout.pixel_codes.reshape(-1)[:, None], layout.text_codes[None, :]].double()
        lam = state.token_strengths(step, "cross", layout).reshape(-1, 1).double()
        s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        mx, mn = s.amax(-1, keepdim=True), s.amin(-1, keepdim=True)
        s = s + relation * lam * (mx - s) - (1 - relation) * lam * (s - mn)
        reference = attn.to_out[1](attn.to_out[0]((s.softmax(-1) @ v).transpose(0, 1).reshape(1, 8, -1)))
    assert lam.abs().max() > 0.1 and relation.sum() > 0
    assert torch.allclose(out, reference, atol=1e-6, rtol=1e-6)
