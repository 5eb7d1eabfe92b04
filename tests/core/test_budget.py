"""The memory and time estimate (``stmod.core.budget``): formulas against hand counts and torch's own
FLOP counter, safetensors headers, monotonicity, ``window`` against ``full``, and the fitting changes."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from stmod.core.budget import attention as budget_attention
from stmod.core.budget.estimate import estimate
from stmod.core.budget.fit import fits, suggestions
from stmod.core.budget.formulas import (PER_FRAME, Block, Focus, block_cost, self_attention_elements, tokens,
                                        unet_cost, vae_cost)
from stmod.core.budget.job import JobShape, ModelFootprint, focus_of
from stmod.core.budget.sizes import Component, read_component, safetensors_params, unet_shape, vae_shape
from stmod.core.types import ModulationConfig

#: SD 1.5's UNet and VAE configs (the keys the estimate reads), and its parameter counts.
SD15_UNET = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": 8,
             "cross_attention_dim": 768, "in_channels": 4,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD15_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "latent_channels": 4,
            "sample_size": 512}


def sd15_models(**changes) -> ModelFootprint:
    models = ModelFootprint(device="cuda", dtype_bytes=2, unet=Component(params=859_520_964, file_bytes=0, config=SD15_UNET),
                            vae=Component(params=83_653_863, file_bytes=0, config=SD15_VAE),
                            text_encoder=Component(params=123_060_480, file_bytes=0, config={}),
                            controlnets=(Component(params=361_278_632, file_bytes=0, config=SD15_UNET),))
    return attrs.evolve(models, **changes)


def sd15_job(frames: int = 16, size: int = 512, temporal: str = "full", **window) -> JobShape:
    config = ModulationConfig(temporal=temporal, **window)
    return JobShape(frames=frames, height=size, width=size, steps=50, focus=focus_of(config, frames),
                    modulated_steps=15, codes=4)


def test_tokens_rounds_odd_grids_up() -> None:
    """Each halving of an odd grid rounds up (diffusers pads), so 5×5 is 3×3 one level down."""
    assert tokens(5, 5, 1) == 9 and tokens(64, 32, 2) == 16 * 8


def test_resnet_and_transformer_blocks_by_hand() -> None:
    """Peak elements and FLOPs of one resnet and one transformer, counted by hand."""
    shape = unet_shape({**SD15_UNET, "cross_attention_dim": 8})
    resnet = block_cost(Block("resnet", 0, 8, 16), shape, 2, 2, PER_FRAME)
    # peak (8 + 2·16 + 16)·4 tokens; two 3×3 convs 8→16, 16→16 and a 1×1 shortcut 8→16, 2 FLOPs per MAC
    assert resnet.peak == 224 and resnet.dense == 18 * (8 * 16 + 16 * 16) * 4 + 2 * 8 * 16 * 4
    full = Focus(key_frames=3.0, joined=True)
    block = block_cost(Block("transformer", 0, 4, 4), shape, 2, 2, full)
    assert block.dense == 40 * 16 * 4 + 4 * 8 * 4 * 77  # 10 C×C linears per token, text k/v once per item
    assert block.attention == 4 * 4 * (4 * 3) * 4 + 4 * 4 * 77 * 4  # self over 3 frames, cross over 77 tokens
    assert block.peak == 19 * 4 * 4  # the feed-forward: 19C per token beats full attention's 11C
    assert self_attention_elements(4, full) == 11 * 4
    assert self_attention_elements(4, PER_FRAME) == 8 * 4


def test_modulated_call_bytes_by_hand() -> None:
    """Row-extrema buffer, widened q̃/k̃/ṽ for one head group, gathered rows and output: 800 + 1120 + 640."""
    found = budget_attention.modulated_call_bytes(batch=1, heads=2, channels=8, queries=10, keys=10, codes=3, item=4,
                                                  budget=1000, device="cpu")
    assert found == 800 + 1120 + 640
    triton = budget_attention.modulated_call_bytes(batch=1, heads=2, channels=8, queries=10, keys=10, codes=3,
                                                   item=4, budget=1000, device="cuda", kernel="triton")
    assert triton == 10 * 8 * 4


def test_cpu_block_matches_the_kernel() -> None:
    from stmod.core.st_layout import kernels

    assert budget_attention.CPU_BLOCK_BYTES == kernels.CPU_BLOCK_BYTES


def test_window_focus_by_hand() -> None:
    """8 frames, windows of 4 without overlap, 1 anchor: keys {0..3} and {0, 4..7}: (16 + 20) / 8 key frames."""
    focus = focus_of(ModulationConfig(temporal="window", window_frames=4, window_overlap=0, anchor_frames=1), 8)
    assert focus == Focus(key_frames=36 / 8, joined=True, query_share=0.5, key_share=5 / 8)
    covering = focus_of(ModulationConfig(temporal="window", window_frames=16, window_overlap=4), 8)
    assert covering == focus_of(ModulationConfig(temporal="full"), 8)


@pytest.mark.parametrize("decoder", [False, True])
def test_flops_match_torch_flop_counter(decoder: bool) -> None:
    """The UNet and VAE walks count the FLOPs torch's FlopCounterMode counts on the models (meta tensors)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet_config = {**SD15_UNET, "block_out_channels": [32, 64, 64], "attention_head_dim": 4, "cross_attention_dim": 32,
                   "norm_num_groups": 32, "down_block_types": ["CrossAttnDownBlock2D"] * 2 + ["DownBlock2D"],
                   "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 2}
    vae_config = {"block_out_channels": [32, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32,
                  "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        with FlopCounterMode(display=False) as counted_unet:
            unet(torch.zeros(1, 4, 12, 12), torch.tensor(5), encoder_hidden_states=torch.zeros(1, 77, 32))
        with FlopCounterMode(display=False) as counted_vae:
            vae.decode(torch.zeros(1, 4, 12, 12)) if decoder else vae.encode(torch.zeros(1, 3, 24, 24))
    cost = unet_cost(unet_shape(dict(unet.config)), 12, 12, PER_FRAME)
    assert cost.dense + cost.attention == pytest.approx(counted_unet.get_total_flops(), rel=0.01)
    vae_found = vae_cost(vae_shape(dict(vae.config)), 24, 24, decoder=decoder)
    assert vae_found.dense + vae_found.attention == pytest.approx(counted_vae.get_total_flops(), rel=0.01)


def test_safetensors_header_gives_parameters_without_reading_weights(tmp_path: Path) -> None:
    """Parameters come from the header; a file that is not safetensors is an error, a folder without
    config.json is unknown (None), and a .bin folder has unknown parameters."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "unet").mkdir()
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)},
              str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "unet" / "config.json").write_text(json.dumps(SD15_UNET))
    assert safetensors_params(tmp_path / "unet" / "diffusion_pytorch_model.safetensors") == 17
    found = read_component(tmp_path / "unet")
    assert found.params == 17 and found.config["layers_per_block"] == 2
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a safetensors header"):
        safetensors_params(tmp_path / "bad.safetensors")
    assert read_component(tmp_path / "nothing") is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    (tmp_path / "old" / "diffusion_pytorch_model.bin").write_bytes(b"x" * 10)
    assert read_component(tmp_path / "old") == Component(params=None, file_bytes=10, config={})


def test_unknown_component_makes_the_peak_unknown() -> None:
    """A component the backbone cannot read is an unknown part, never a guess."""
    found = estimate(sd15_job(), sd15_models(unet=None))
    assert found.peak_bytes is None and found.seconds is None
    assert any(p.bytes is None for p in found.phases[2].parts)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_peak_and_time_grow_with_frames_and_size(device: str) -> None:
    models = sd15_models(device=device, dtype_bytes=4 if device == "cpu" else 2)
    by_frames = [estimate(sd15_job(frames=f), models) for f in (2, 8, 16, 32)]
    by_size = [estimate(sd15_job(size=s), models) for s in (256, 384, 512, 768)]
    for series in (by_frames, by_size):
        assert all(a.peak_bytes < b.peak_bytes and a.seconds < b.seconds for a, b in zip(series, series[1:]))


def test_window_costs_less_than_full_at_many_frames() -> None:
    """At 64 frames the windows' attention working set and time are well under full space-time attention's."""
    full = estimate(sd15_job(frames=64), sd15_models())
    window = estimate(sd15_job(frames=64, temporal="window", window_frames=16, window_overlap=4), sd15_models())
    assert dict(window.attention)[0] < dict(full.attention)[0]
    assert window.peak_bytes <= full.peak_bytes
    assert window.phases[3].seconds < full.phases[3].seconds / 2  # denoising: linear against quadratic


def test_cpu_offload_keeps_one_model_on_the_gpu() -> None:
    plain, offloaded = estimate(sd15_job(), sd15_models()), estimate(sd15_job(), sd15_models(cpu_offload=True))
    weights = [p for p in offloaded.phases[3].parts if p.name.startswith("weights")]
    assert len(weights) == 1 and weights[0].bytes == 859_520_964 * 2
    assert offloaded.peak_bytes < plain.peak_bytes and offloaded.seconds > plain.seconds


def test_suggestions_fit_and_the_largest_frame_count_is_found() -> None:
    """Every suggestion's own estimate fits; the frame count suggested is the largest that fits."""
    job, models = sd15_job(frames=64), sd15_models()
    modulation = ModulationConfig()
    free = 0.8 * estimate(job, models).peak_bytes
    found = suggestions(job, models, modulation, free)
    assert found and all(fits(s.estimate, free) for s in found)
    frames = next(s for s in found if s.change.startswith("video.frames"))
    count = int(frames.change.split()[1])
    assert not fits(estimate(job.with_frames(count + 1, modulation), models), free)
    assert suggestions(job, models, modulation, 1.0) == []  # one byte: nothing fits


def test_the_estimate_imports_no_torch() -> None:
    """``stmod.core.budget`` is arithmetic on configs: importing it loads neither torch nor numpy."""
    import subprocess
    import sys

    code = ("import sys, stmod.core.budget.estimate, stmod.core.budget.fit, stmod.core.budget.report; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize(("end_step", "steps", "modulated"), [(None, 20, 6), (None, 50, 15), (4, 20, 4), (40, 20, 20)])
def test_modulated_steps_follow_the_window(end_step, steps, modulated) -> None:
    """An unset ``end_step`` is 30 % of the steps (the job's window), an explicit one is kept, capped by the steps."""
    from stmod.core.budget.job import job_shape
    from stmod.core.types import EditSpec, VideoSource

    spec = EditSpec(video=VideoSource(path=Path("clip.mp4"), frames=4), prompt="a cat", steps=steps,
                    modulation=ModulationConfig(end_step=end_step))
    assert job_shape(spec).modulated_steps == modulated


def test_direct_inversion_adds_one_guided_pass_without_modulation() -> None:
    """``inversion: direct`` runs the steps once more, guided, unmodulated: a phase between inversion and
    denoising that costs what denoising costs without its modulated kernel, and the same peak."""
    plain = estimate(sd15_job(), sd15_models())
    direct = estimate(attrs.evolve(sd15_job(), direct_inversion=True), sd15_models())
    names = [p.name for p in direct.phases]
    assert names == ["load", "encode", "inversion", "direct inversion", "denoising", "decoding"]
    assert [p.name for p in plain.phases] == [n for n in names if n != "direct inversion"]
    extra, unmodulated = direct.phases[3], estimate(attrs.evolve(sd15_job(), modulated_steps=0), sd15_models())
    assert extra.seconds == pytest.approx(unmodulated.phases[3].seconds)
    assert extra.peak_bytes == pytest.approx(unmodulated.phases[3].peak_bytes)
    assert direct.seconds == pytest.approx(plain.seconds + extra.seconds)


def test_guidance_interval_shortens_the_predicted_denoising_not_its_peak() -> None:
    """Steps outside ``guidance_interval`` run one branch: denoising is predicted to take the guided steps'
    time plus half of it for the rest (the peak stays the two-branch one); guidance 1 runs one branch always."""
    from stmod.core.budget.job import job_shape
    from stmod.core.types import EditSpec, VideoSource

    spec = EditSpec(video=VideoSource(path=Path("clip.mp4"), frames=4), prompt="a cat", steps=20)
    shape = job_shape(attrs.evolve(spec, guidance_interval=(0.0, 0.5)))
    assert (shape.branches, shape.guided_steps, shape.mean_branches) == (2, 10, 1.5)
    assert job_shape(spec).mean_branches == 2.0
    assert job_shape(attrs.evolve(spec, guidance=1.0)).branches == 1
    full, half = (estimate(attrs.evolve(sd15_job(), modulated_steps=0, guided_steps=g), sd15_models())
                  for g in (None, 25))
    one = estimate(attrs.evolve(sd15_job(), modulated_steps=0, branches=1), sd15_models())
    d = lambda e: e.phases[3]  # noqa: E731 (denoising)
    assert d(full).peak_bytes == d(half).peak_bytes > d(one).peak_bytes
    assert d(one).seconds < d(half).seconds < d(full).seconds
