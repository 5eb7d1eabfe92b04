"""The ``pnp`` extension: where it records, how steps pair, exact reproduction, the store, the editor."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from stmod.backbones.tiny import TINY_UNET
from stmod.core.errors import InputError
from stmod.core.sampling import NoiseSchedule, ddim_timesteps, denoise, invert
from stmod.core.types import ExtensionInput
from stmod.plugins.extensions.pnp import PnPExtension, PnPOptions, paired_inversion_step
from stmod.plugins.extensions.pnp_places import find_places, place_bytes, sd15_step_bytes

FRAMES, LATENT = 2, (8, 8)

SD15_PLACES = [  # the official code's list (ddim_spatial_temporal.py, use_pnp)
    "up_blocks.1.resnets.0.conv2", "up_blocks.1.resnets.1.conv2",
    *(f"up_blocks.1.attentions.{j}.transformer_blocks.0.attn1.to_{p}" for j in (1, 2) for p in "qk"),
    "up_blocks.2.resnets.0.conv2",
    *(f"up_blocks.2.attentions.{j}.transformer_blocks.0.attn1.to_{p}" for j in (0, 1, 2) for p in "qk"),
    *(f"up_blocks.3.attentions.0.transformer_blocks.0.attn1.to_{p}" for p in "qk"),
]


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval()


def _pnp(steps: int, store=None, frames: int = FRAMES, **options) -> PnPExtension:
    pnp = PnPExtension(PnPOptions(**options))
    spec = types.SimpleNamespace(steps=steps)
    pnp.check(spec)
    pnp.prepare(ExtensionInput(spec=spec, frames=np.zeros((frames, 64, 64, 3), np.uint8), latent_size=LATENT,
                               num_frames=frames, store=store, device=torch.device("cpu"), dtype=torch.float32))
    return pnp


def _schedule() -> NoiseSchedule:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return NoiseSchedule(alphas_cumprod=alphas, clean_alpha=float(alphas[0]), steps_offset=1)


def _predict(unet, pnp: PnPExtension, text: torch.Tensor, phase: str, steps: int):
    """A UNet call as the editor makes one: ``pnp.step`` first; the denoising as one CFG-free branch."""
    def predict(x: torch.Tensor, t: int, k: int) -> torch.Tensor:
        # phase "invert" replays a *denoising* pass as the recording pass: step k records for step steps-1-k
        index = steps - 1 - k if phase == "invert" else k
        pnp.step(phase=phase, step_index=index, timestep=t, branches=("cond",))
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=text).sample

    return predict


def test_places_are_the_official_ones_on_sd15_and_follow_levels_on_tiny() -> None:
    with torch.device("meta"):  # SD 1.5's UNet shape without its memory
        sd15 = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    places = find_places(sd15)
    assert [p.name for p in places] == SD15_PLACES
    assert all(p.module is sd15.get_submodule(p.name) for p in places)
    assert place_bytes(sd15, places, latent_size=(64, 64), frames=16, element_size=2) == sd15_step_bytes()
    assert sd15_step_bytes(branches=2) == 587_202_560  # the official 0.59 GB per step at 16 frames
    unet = _unet()
    assert all(p.module is unet.get_submodule(p.name) for p in find_places(unet))
    tiny = [p.name for p in find_places(unet)]
    assert tiny == ["up_blocks.0.resnets.0.conv2", "up_blocks.0.resnets.1.conv2", "up_blocks.1.resnets.0.conv2",
                    *(f"up_blocks.1.attentions.{j}.transformer_blocks.0.attn1.to_{p}" for j in (0, 1, 2) for p in "qk"),
                    *(f"up_blocks.2.attentions.0.transformer_blocks.0.attn1.to_{p}" for p in "qk")]


def test_resnet_branch_is_conv2_output_before_the_skip_add() -> None:
    """Replacing ``conv2``'s output by ``b`` makes the block return ``(shortcut(x) + b) / scale``."""
    block = _unet().up_blocks[1].resnets[0]
    x, temb = torch.randn(2, block.in_channels, 4, 4), torch.randn(2, 128)
    branch = torch.randn(2, block.out_channels, 4, 4)
    handle = block.conv2.register_forward_hook(lambda m, a, out: branch)
    with torch.no_grad():
        out = block(x, temb)
    handle.remove()
    torch.testing.assert_close(out, (block.conv_shortcut(x) + branch) / block.output_scale_factor, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [3, 50])
def test_denoising_step_i_gets_the_inversion_call_at_its_timestep_on_the_official_latent(steps) -> None:
    """stmod's inversion call paired with denoising step ``i`` runs at the same timestep on the latent one
    level below — the latent the official code records from (at 50 steps: t = 981 − 20i on x_{961−20i})."""
    schedule, timesteps, calls = _schedule(), ddim_timesteps(steps), []

    def predict(x, t, k):
        calls.append((k, t, x.clone()))
        return torch.full_like(x, 0.1 * k)

    trajectory = invert(torch.randn(1, 4, 2, 2), predict, schedule, timesteps)
    levels = [*timesteps[1:], 0]  # the level below each denoising timestep (0: clean)
    for i, t in enumerate(timesteps):
        k, called_at, seen = calls[paired_inversion_step(i, steps)]
        assert (k, called_at) == (paired_inversion_step(i, steps), t)
        assert torch.equal(seen, trajectory[levels[i]])
    if steps == 50:
        assert [calls[paired_inversion_step(i, 50)][1] for i in (0, 1, 48)] == [981, 961, 21]
        assert levels[:2] == [961, 941]  # the official paired call's input latent x_{961-20i}


@pytest.mark.parametrize("inject_step", [2, 3])
def test_injecting_features_recorded_from_the_same_run_reproduces_it_exactly(inject_step) -> None:
    """Record a denoising pass, denoise again injecting its features: bitwise the same latents; injection is
    on exactly for steps < inject_step, and the hooks are gone after."""
    unet, steps = _unet(), 3
    text, x = torch.randn(FRAMES, 77, 32, generator=torch.Generator().manual_seed(1)), torch.randn(FRAMES, 4, *LATENT)
    pnp = _pnp(steps, inject_step=inject_step, precision="float32")
    schedule, timesteps = _schedule(), ddim_timesteps(steps)
    with pnp.install(unet, role="unet"):
        plain = denoise(x, _predict(unet, pnp, text, "invert", steps), schedule, timesteps)
        again = denoise(x, _predict(unet, pnp, text, "denoise", steps), schedule, timesteps)
    assert pnp.recorded == list(range(inject_step)) and pnp.injected == list(range(inject_step))
    assert torch.equal(plain, again)
    assert not any(p.module._forward_hooks for p in find_places(unet))


def test_one_recorded_branch_goes_into_every_cfg_branch_frames_inner() -> None:
    """The record of the conditional branch, injected into an ``(uncond, cond)`` batch of the same inputs,
    gives each half exactly the recorded call's ε (so frames stay in order within each branch)."""
    unet, steps = _unet(), 1
    g = torch.Generator().manual_seed(4)
    text, x = torch.randn(FRAMES, 77, 32, generator=g), torch.randn(FRAMES, 4, *LATENT, generator=g)
    pnp, t = _pnp(steps, inject_step=1, precision="float32"), ddim_timesteps(steps)[0]
    with pnp.install(unet, role="unet"), torch.no_grad():
        pnp.step(phase="invert", step_index=0, timestep=t, branches=("cond",))
        recorded = unet(x, t, encoder_hidden_states=text).sample
        pnp.step(phase="denoise", step_index=0, timestep=t, branches=("uncond", "cond"))
        both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([text, text])).sample
    torch.testing.assert_close(both, torch.cat([recorded, recorded]), rtol=1e-5, atol=1e-6)  # batch-size rounding only


def test_injection_replaces_the_outputs_only_for_steps_below_inject_step() -> None:
    """Features recorded from other latents: in injected steps the places output them (what ST-Layout's
    processor reads through ``attn.to_q``/``to_k``), later steps compute their own; the result changes."""
    unet, steps = _unet(), 3
    text = torch.randn(FRAMES, 77, 32, generator=torch.Generator().manual_seed(1))
    source, edit = (torch.randn(FRAMES, 4, *LATENT, generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    pnp, schedule, timesteps = _pnp(steps, inject_step=1, precision="float32"), _schedule(), ddim_timesteps(steps)
    spy_name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    seen: list[torch.Tensor] = []
    with pnp.install(unet, role="unet"):
        spy = dict((p.name, p.module) for p in find_places(unet))[spy_name].register_forward_hook(
            lambda m, a, out: seen.append(out.clone()))  # after pnp's hook: sees what the attention gets
        denoise(source, _predict(unet, pnp, text, "invert", steps), schedule, timesteps)
        recorded, seen[:] = list(seen), []
        injected = denoise(edit, _predict(unet, pnp, text, "denoise", steps), schedule, timesteps)
        spy.remove()
    own = denoise(edit, _predict(unet, _pnp(steps, inject_step=0), text, "denoise", steps), schedule, timesteps)
    assert pnp.injected == [0]
    assert torch.equal(seen[0], recorded[0])  # step 0: the source's q
    assert not torch.equal(seen[1], recorded[1])  # step 1: its own
    assert not torch.equal(injected, own)


def test_records_are_float16_files_loaded_per_step_and_mismatched_clips_are_refused(tmp_path) -> None:
    unet, steps = _unet(), 2
    text, x = torch.randn(FRAMES, 77, 32), torch.randn(FRAMES, 4, *LATENT)
    pnp, schedule, timesteps = _pnp(steps, store=tmp_path, inject_step=2), _schedule(), ddim_timesteps(steps)
    assert pnp.needs_inversion()
    with pnp.install(unet, role="unet"):
        denoise(x, _predict(unet, pnp, text, "invert", steps), schedule, timesteps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000.pt", "step-001.pt"]
    fresh = _pnp(steps, store=tmp_path, inject_step=2)
    assert not fresh.needs_inversion()
    timestep, features = fresh._store.load(1)
    assert timestep == timesteps[1] and {f.dtype for f in features.values()} == {torch.float16}
    more = _pnp(steps, store=tmp_path, frames=FRAMES + 1, inject_step=2)  # another clip length, same store
    with more.install(unet, role="unet"), pytest.raises(InputError, match="frames or size differ"):
        _predict(unet, more, text.repeat(2, 1, 1)[:3], "denoise", steps)(torch.randn(3, 4, *LATENT), timesteps[0], 0)
    (tmp_path / "step-001.pt").write_bytes(b"damaged")
    with pytest.raises(InputError, match="delete that file"):
        _pnp(steps, store=tmp_path, inject_step=2).step(phase="denoise", step_index=1, timestep=timesteps[1],
                                                         branches=("cond",))


def test_the_ram_budget_refuses_clearly_without_a_store() -> None:
    unet = _unet()
    pnp = _pnp(3, inject_step=3, ram_budget_mb=1.0)  # 23 kB per frame and step at 8² in float16
    with pnp.install(unet, role="unet"):
        pass
    pnp = _pnp(3, store=None, frames=64, inject_step=3, ram_budget_mb=1.0)
    with pytest.raises(InputError, match=r"ram_budget_mb=1\.0: the 3 injected steps' features need"):
        with pnp.install(unet, role="unet"):
            pass
    assert not any(p.module._forward_hooks for p in find_places(unet))


def _edit(job, tmp_path, *, cache=True, **changes):
    from stmod.core.config import load_job
    from stmod.core.pipeline.cache import InversionCache
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    editor = Editor(fresh_plugin_manager().registry, progress=False,
                    cache=InversionCache(tmp_path / "cache") if cache else False)
    return editor, editor.run(load_job(job, {"overwrite": True, **changes}))


PNP = {"extensions": [{"name": "pnp", "inject_step": 2}]}


def test_edit_with_pnp_differs_reuses_its_store_and_inverts_again_for_a_missing_step(demo_job, tmp_path) -> None:
    job = demo_job(steps=3)  # written once: rewriting the mp4 need not give the same bytes
    _, plain = _edit(job, tmp_path)
    editor, first = _edit(job, tmp_path, **PNP)
    assert not np.array_equal(plain.frames, first.frames)
    store = tmp_path / "cache" / f"{first.run['inversion']['key']}.d" / "pnp"
    assert sorted(p.name for p in store.glob("step-*.pt")) == ["step-000.pt", "step-001.pt"]
    _, second = _edit(job, tmp_path, **PNP)
    assert second.run["inversion"]["cached"] is True and np.array_equal(second.frames, first.frames)
    (store / "step-001.pt").unlink()
    _, third = _edit(job, tmp_path, **PNP)
    assert third.run["inversion"]["cached"] is False and (store / "step-001.pt").is_file()
    assert np.array_equal(third.frames, first.frames)
    unet = next(iter(editor._backbones.values())).unet
    assert not any(p.module._forward_hooks for p in find_places(unet))


def test_edit_without_a_cache_keeps_the_records_in_memory(demo_job, tmp_path) -> None:
    job = demo_job(steps=3)
    _, cached = _edit(job, tmp_path, **PNP)
    _, memory = _edit(job, tmp_path, cache=False, **PNP)
    assert np.array_equal(memory.frames, cached.frames)  # float16 on disk or in RAM: the same records
