"""The engine on a tiny SD-shaped UNet and ControlNet: install/restore, a whole forward, registration."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from stmod.core.st_layout.modulator import EngineOptions, ModulationPlan, STLayoutModulator
from stmod.core.protocols import Modulator
from stmod.core.types import LayoutMasks, ModulationConfig, Region

FRAMES, LATENT = 4, (8, 12)


def _small_unet(*, layers_per_block: int, seed: int) -> UNet2DConditionModel:
    """A random two-level UNet: attention at the lower level only."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=layers_per_block, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ).eval()


@pytest.fixture(scope="module")
def models() -> tuple[UNet2DConditionModel, ControlNetModel]:
    """A tiny random UNet (12 attention processors) and a ControlNet made from it."""
    unet = _small_unet(layers_per_block=2, seed=0)
    return unet, ControlNetModel.from_unet(unet).eval()


@pytest.fixture
def modulator(make_masks, tokenizer) -> STLayoutModulator:
    """A prepared modulator: two regions with prompts, a third mask without one."""
    masks = LayoutMasks(masks=make_masks(FRAMES, (64, 96)), names=("cat", "dog", "tree"))
    plan = ModulationPlan.from_prompts(
        masks=masks, regions=[Region(name="cat", prompt="red cat"), Region(name="dog", prompt="dog")],
        prompt="a red cat and a dog in the park", tokenizer=tokenizer, latent_size=LATENT,
        config=ModulationConfig(),
    )
    modulator = STLayoutModulator(EngineOptions(record_attention=True))
    modulator.prepare(plan)
    return modulator


def call_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2 * FRAMES, 4, *LATENT, generator=g)
    text = torch.randn(2 * FRAMES, 77, 32, generator=g)
    return latents, text


def test_modulator_satisfies_protocol(modulator: STLayoutModulator) -> None:
    """STLayoutModulator is a Modulator."""
    assert isinstance(modulator, Modulator)


def test_install_and_restore(models, modulator: STLayoutModulator) -> None:
    """Processors are swapped inside the block and the original objects are back afterwards, even on error."""
    for model, role in zip(models, ("unet", "controlnet")):
        before = model.attn_processors
        with pytest.raises(RuntimeError, match="boom"), modulator.install(model, role=role):
            inside = model.attn_processors
            assert inside.keys() == before.keys()
            assert all(inside[n] is not before[n] for n in before)
            raise RuntimeError("boom")
        after = model.attn_processors
        assert all(after[n] is before[n] for n in before)


def test_unknown_role_is_rejected(models, modulator: STLayoutModulator) -> None:
    """Only 'unet' and 'controlnet' roles exist."""
    with pytest.raises(ValueError, match="role"), modulator.install(models[0], role="vae"):
        pass


def test_whole_unet_forward_with_cfg(models, modulator: STLayoutModulator, caplog) -> None:
    """A 4-frame CFG batch (8 samples, non-square latents) runs through UNet and ControlNet with the engine."""
    unet, controlnet = models
    latents, text = call_inputs()
    control = torch.rand(2 * FRAMES, 3, LATENT[0] * 8, LATENT[1] * 8)
    with torch.no_grad():
        stock = unet(latents, 981, text).sample
        stock_control = controlnet(latents, 981, text, controlnet_cond=control, return_dict=False)
        on = modulator.call_kwargs(phase="denoise", step_index=0, timestep=981)
        off = modulator.call_kwargs(phase="denoise", step_index=20, timestep=581)
        installed = (modulator.install(unet), modulator.install(controlnet, role="controlnet"))
        with caplog.at_level(logging.WARNING), installed[0], installed[1]:
            down, mid = controlnet(latents, 981, text, controlnet_cond=control, cross_attention_kwargs=on,
                                   return_dict=False)
            modulated = unet(latents, 981, text, cross_attention_kwargs=on, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
            plain = unet(latents, 981, text, cross_attention_kwargs=off, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
            no_info = unet(latents, 981, text).sample
    assert "not expected" not in caplog.text
    assert modulated.shape == latents.shape and torch.isfinite(modulated).all()
    assert not torch.allclose(modulated, plain, atol=1e-4)
    assert torch.equal(no_info, stock)  # no step info: stock behaviour
    torch.testing.assert_close(down[0], stock_control[0][0])  # the ControlNet stays plain and per frame
    torch.testing.assert_close(mid, stock_control[1])
    fractions = modulator.recorder.summary()
    assert set(fractions) == {"cat", "dog"}
    assert all(f["modulated"] > f["plain"] for f in fractions.values())


def test_registered_as_plugin() -> None:
    """The built-in plugin registers 'st-layout' with validated options."""
    from stmod.plugins import modulators
    from stmod.plugins.manager import PluginRecord, StmodPluginManager

    pm = StmodPluginManager()
    pm.add_plugin(modulators, PluginRecord(name="stmod.modulators", module=modulators.__name__, builtin=True))
    product = pm.registry.create("modulator", "st-layout", {"budget_mb": 64, "modulate_controlnet": True})
    assert isinstance(product, STLayoutModulator)
    assert product.options == EngineOptions(budget_mb=64.0, modulate_controlnet=True)


def test_controlnet_condition_embedded_once_per_images_tensor() -> None:
    """The conditioning CNN runs once for the same images tensor; a new or changed tensor is re-embedded."""
    from stmod.backbones.sd15 import embed_condition_once

    unet = _small_unet(layers_per_block=1, seed=1)
    stock = ControlNetModel.from_unet(unet).eval()
    net = embed_condition_once(ControlNetModel.from_unet(unet).eval())
    net.load_state_dict(stock.state_dict())
    calls = []
    net.controlnet_cond_embedding.conv_in.register_forward_hook(lambda *_: calls.append(1))
    latents, text = call_inputs()
    control = torch.rand(2 * FRAMES, 3, 8 * LATENT[0], 8 * LATENT[1])
    with torch.no_grad():
        expected = stock(latents, 981, text, controlnet_cond=control, return_dict=False)
        for t in (981, 961):
            got = net(latents, t, text, controlnet_cond=control, return_dict=False)
        assert len(calls) == 1
        got = net(latents, 981, text, controlnet_cond=control, return_dict=False)
        torch.testing.assert_close(got[1], expected[1])
        for a, b in zip(got[0], expected[0]):
            torch.testing.assert_close(a, b)
        control.mul_(0.5)  # changed in place: embedded again
        net(latents, 981, text, controlnet_cond=control, return_dict=False)
        net(latents, 981, text, controlnet_cond=control.clone(), return_dict=False)
    assert len(calls) == 3
