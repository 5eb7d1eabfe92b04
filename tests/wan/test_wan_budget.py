"""``check``'s memory and time prediction for ``wan`` (``stmod.core.budget.dit``): the transformer's parameters
against diffusers' own module, tokens through the causal VAE, activations by hand, and the 1.3B and 14B models
at 81 frames 480×832 (``docs/wan.md`` has the table these print)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import yaml

from stmod.backbones.wan.tiny import TINY_WAN_TRANSFORMER
from stmod.core.budget.constants import CUDA
from stmod.core.budget.dit import (ATTENTION_ELEMENTS, DIT_TEXT_TOKENS, dit_cost, dit_params, dit_shape,
                                   dit_tokens, latent_frames, wan_vae_shape)
from stmod.core.budget.dit_estimate import modulated_bytes
from stmod.core.budget.estimate import estimate
from stmod.core.budget.formulas import Focus
from stmod.core.budget.job import JobShape, ModelFootprint, focus_of
from stmod.core.budget.sizes import Component, read_component
from stmod.core.types import ModulationConfig
from stmod.testing import run_cli

#: Wan 2.1's text-to-video transformer configs (diffusers' keys), the real models' VAE and umT5-XXL sizes.
WAN_1_3B = dict(patch_size=[1, 2, 2], num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
WAN_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
           "temperal_downsample": [False, True, True]}
VAE_PARAMS, UMT5_XXL_PARAMS = 126_892_531, 5_680_910_336  # counted from diffusers' / transformers' modules
GIB = 2**30


def _module_params(config: dict) -> int:
    import torch
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):  # shapes only: no memory, no time
        model = WanTransformer3DModel(**config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config", [TINY_WAN_TRANSFORMER, WAN_1_3B, WAN_14B], ids=["tiny", "1.3B", "14B"])
def test_transformer_parameters_equal_diffusers_module(config: dict) -> None:
    assert dit_params(dit_shape(config)) == _module_params(config)


def test_the_named_sizes() -> None:
    """The 14B is 14.3 B parameters (within 5 %); the "1.3B" is 1.42 B — its name rounds down (9 % off 1.3e9)."""
    small, large = dit_params(dit_shape(WAN_1_3B)), dit_params(dit_shape(WAN_14B))
    assert small == 1_418_996_800 and abs(small - 1.3e9) / 1.3e9 < 0.10
    assert large == 14_288_491_584 and abs(large - 14e9) / 14e9 < 0.05


def test_tokens_through_the_causal_vae_and_the_patch() -> None:
    """81 frames → 21 latent frames of 30 × 52 tokens at 480×832: 32 760 tokens."""
    shape = dit_shape(WAN_1_3B)
    assert latent_frames(81, 4) == 21 and latent_frames(1, 4) == 1 and latent_frames(17, 4) == 5
    assert dit_tokens(480, 832, shape) == 30 * 52
    assert JobShape(frames=81, height=480, width=832, steps=50, time_ratio=4).latent_frames == 21


def test_block_peak_and_flops_by_hand() -> None:
    """One layer, D = 4 (2 heads of 2), ffn 8, 2 latent frames of 3 tokens: peaks and FLOPs counted by hand."""
    shape = dit_shape({**WAN_1_3B, "num_attention_heads": 2, "attention_head_dim": 2, "ffn_dim": 8, "num_layers": 1,
                       "text_dim": 6, "in_channels": 1, "out_channels": 1})
    full = Focus(key_frames=2.0, joined=True)
    cost = dit_cost(shape, 2, 3, full)
    length, text = 6, DIT_TEXT_TOKENS
    attention_peak = ATTENTION_ELEMENTS * 4 * length  # 14 D per token
    cross_peak = 7 * 4 * length + 2 * 2 * text * 4  # text keys/values copied per latent frame
    ffn_peak = (2 * 8 + 2 * 4) * length
    assert cost.peak == max(attention_peak, cross_peak, ffn_peak) == cross_peak
    dense = 2 * (6 * 16 + 2 * 4 * 8) * length + 2 * 2 * 16 * text + 2 * text * (6 * 4 + 16) + 2 * length * 4 * 4 * 2
    assert cost.dense == dense
    assert cost.attention == 4 * length * 6 * 4 + 4 * length * text * 4  # each query: 2 frames × 3 keys, 512 texts
    assert cost.attention_work == cost.attention * 32  # head dim 2: SDPA's rate falls (64 / 2)


def _footprint(config: dict, **changes) -> ModelFootprint:
    models = ModelFootprint(device="cuda", dtype_bytes=2, denoiser="transformer", time_ratio=4, vae_dtype_bytes=4,
                            vae_tile=256, kernel="triton",
                            unet=Component(params=dit_params(dit_shape(config)), file_bytes=0, config=config),
                            vae=Component(params=VAE_PARAMS, file_bytes=0, config=WAN_VAE),
                            text_encoder=Component(params=UMT5_XXL_PARAMS, file_bytes=0, config={}))
    return attrs.evolve(models, **changes)


def _job(frames: int = 81, **window) -> JobShape:
    config = ModulationConfig(temporal="window" if window else "full", **window)
    job = JobShape(frames=frames, height=480, width=832, steps=50, modulated_steps=15, codes=4, time_ratio=4)
    return attrs.evolve(job, focus=focus_of(config, job.latent_frames))


@pytest.mark.parametrize(("config", "low", "high"), [(WAN_1_3B, 14, 24), (WAN_14B, 40, 60)], ids=["1.3B", "14B"])
def test_81_frames_480p_are_predicted_sensibly(config: dict, low: float, high: float) -> None:
    """bf16 on a GPU: the weights (transformer and umT5-XXL in bf16, the VAE in float32) stay resident; the
    denoising activations of two CFG branches of 32 760 tokens are gigabytes, not the terabytes a dense
    32 760² map would take; the VAE's chunk (an assumption) may be the larger moment."""
    found = estimate(_job(), _footprint(config))
    parts = {p.name: p.bytes for p in found.peak_phase.parts}
    resident = sum(v for k, v in parts.items() if k.startswith("weights"))
    assert resident == 2 * dit_params(dit_shape(config)) + 4 * VAE_PARAMS + 2 * UMT5_XXL_PARAMS, parts
    assert low < found.peak_bytes / GIB < high, found.peak_bytes / GIB
    denoise = next(p for p in found.phases if p.name == "denoising")
    activations = next(p.bytes for p in denoise.parts if p.name.startswith("transformer act"))
    shape = dit_shape(config)
    dense_map = 2 * shape.heads * 32760**2 * 2  # what never exists: one layer's scores, both branches
    assert 1 * GIB < activations < dense_map / 10
    assert 0.5 < denoise.seconds / 50 < 60  # seconds per step on the assumed rates (docs/wan.md)


def test_larger_model_and_longer_clip_cost_more_and_windows_less() -> None:
    small, large = estimate(_job(), _footprint(WAN_1_3B)), estimate(_job(), _footprint(WAN_14B))
    assert large.peak_bytes > small.peak_bytes and large.seconds > 5 * small.seconds
    short = estimate(_job(frames=33), _footprint(WAN_1_3B))
    assert short.peak_bytes < small.peak_bytes and short.seconds < small.seconds
    windowed = estimate(_job(window_frames=6, window_overlap=2, anchor_frames=1), _footprint(WAN_1_3B))
    assert windowed.seconds < small.seconds and windowed.peak_bytes <= small.peak_bytes
    assert _job().focus.key_frames == 21  # full attention over latent frames, not the 81 clip frames


def test_modulated_kernel_bytes_are_the_calls_tokens_not_a_dense_map() -> None:
    """The two-pass kernel on the cond branch at 32 760 tokens holds its budget-bounded blocks (256 MB) plus rows."""
    job, models = _job(), _footprint(WAN_1_3B, kernel="two-pass")
    extra = modulated_bytes(job, models, dit_shape(WAN_1_3B), 21, 30 * 52)
    assert 2 * 32760 * 1536 * 2 < extra < job.budget_bytes * 3 + 2 * 32760 * 1536 * 2


def test_footprint_of_the_tiny_folder_and_check_prints_the_prediction(tmp_path: Path, make_clip, tiny_wan: Path,
                                                                       wan_backbone) -> None:
    """The tiny folder's transformer has as many parameters in its safetensors as the config formula says, and
    ``stmod-run check`` prints a prediction for a ``wan`` job."""
    transformer = read_component(tiny_wan / "transformer")
    assert transformer.params == dit_params(dit_shape(transformer.config))
    assert wan_vae_shape(read_component(tiny_wan / "vae").config).time_ratio == 4
    models = wan_backbone.footprint(_spec(tmp_path, make_clip, tiny_wan), device="cpu")
    assert models.denoiser == "transformer" and models.time_ratio == 4 and models.dtype_bytes == 4
    result = run_cli(["check", str(tmp_path / "job.yaml"), "--verbose"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 0, result.stderr
    assert "predicted peak memory (RSS)" in result.stdout and "weights: transformer" in result.stdout, result.stdout


def _spec(tmp_path: Path, make_clip, tiny_wan: Path):
    from stmod.core.config import load_job

    make_clip(tmp_path / "clip.mp4", frames=5, size=(64, 64))
    job = {"video": {"path": "clip.mp4", "frames": 5, "size": [64, 64]}, "prompt": "a red cat",
           "regions": {"cat": "red cat"}, "layout": {"name": "boxes", "boxes": {"cat": {0: [0, 0, 32, 64]}}},
           "backbone": {"name": "wan", "model": str(tiny_wan), "device": "cpu"}, "steps": 2, "output": "out"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return load_job(tmp_path / "job.yaml")


def test_cuda_rates_are_still_assumptions() -> None:
    assert not CUDA.measured  # until bench/gpu.sh's wan row has run on a GPU


def test_fewer_frames_suggested_for_wan_are_counts_its_vae_takes() -> None:
    """On a GPU too small for 81 frames of the 14B, the suggested frame count is 1 + 4k (check would refuse others)."""
    from stmod.core.budget.fit import suggestions

    found = suggestions(_job(), _footprint(WAN_14B), ModulationConfig(), 50 * GIB)
    frames = [s for s in found if s.change.startswith("video.frames")]
    assert frames, [s.change for s in found]
    count = int(frames[0].change.split(":")[1].split("(")[0])
    assert (count - 1) % 4 == 0 and count < 81
