"""The ``freeu`` extension is diffusers' FreeU, on for the ``with`` block and cleanly off after it."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from stmod.backbones.tiny import TINY_UNET
from stmod.core.protocols import PreparesFromClip
from stmod.plugins.extensions.freeu import FreeUExtension, FreeUOptions

OFFICIAL = {"b1": 1.2, "b2": 1.5, "s1": 1.0, "s2": 1.0}


def _unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_UNET).eval()


def _run(unet: UNet2DConditionModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, 981, encoder_hidden_states=text).sample


def _freeu_state(unet: UNet2DConditionModel) -> list[tuple[object, ...]]:
    return [tuple(getattr(block, key, None) for key in OFFICIAL) for block in unet.up_blocks]


@pytest.mark.parametrize("options", [FreeUOptions(), FreeUOptions(b1=1.1, b2=1.3, s1=0.9, s2=0.2)])
def test_equals_diffusers_freeu_and_is_removed_on_exit(options: FreeUOptions) -> None:
    """Inside the block the UNet computes exactly what the UNet after ``enable_freeu`` computes; after it,
    exactly what it computed before (and FreeU does change the output, so the check can see it)."""
    unet = _unet()
    reference = copy.deepcopy(unet)
    reference.enable_freeu(b1=options.b1, b2=options.b2, s1=options.s1, s2=options.s2)
    plain = _run(unet)
    with FreeUExtension(options).install(unet, role="unet"):
        inside = _run(unet)
    assert torch.equal(inside, _run(reference))
    assert not torch.allclose(inside, plain, atol=1e-4)
    assert torch.equal(_run(unet), plain)
    assert _freeu_state(unet) == [(None,) * 4] * len(unet.up_blocks)


def test_defaults_are_the_official_values_and_key_the_inversion() -> None:
    assert FreeUExtension().inversion_settings() == OFFICIAL
    assert not isinstance(FreeUExtension(), PreparesFromClip)  # nothing to prepare: a cached inversion is enough


def test_keeps_a_freeu_the_unet_had_and_leaves_the_controlnet_alone() -> None:
    unet = _unet()
    unet.enable_freeu(b1=1.05, b2=1.1, s1=0.95, s2=0.9)
    before = _freeu_state(unet)
    with FreeUExtension().install(unet, role="unet"):
        assert _freeu_state(unet)[0] == (1.2, 1.5, 1.0, 1.0)
    assert _freeu_state(unet) == before
    other = _unet()
    with FreeUExtension().install(other, role="controlnet"):
        assert _freeu_state(other) == [(None,) * 4] * len(other.up_blocks)
    with pytest.raises(TypeError, match="FreeU needs a diffusers UNet"):
        with FreeUExtension().install(torch.nn.Linear(2, 2), role="unet"):
            pass


def test_freeu_acts_on_the_inversion_and_the_denoising(demo_job, tmp_path, monkeypatch) -> None:
    """Through the editor, FreeU is on for both loops (enable_freeu twice), keys the inversion cache, and
    changes the edit; off again after it."""
    import numpy as np

    from stmod.core.config import load_job
    from stmod.core.pipeline.cache import InversionCache
    from stmod.core.pipeline.editor import Editor
    from stmod.testing import fresh_plugin_manager

    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))
    plain = editor.run(load_job(demo_job()))
    enabled = []
    real = UNet2DConditionModel.enable_freeu
    monkeypatch.setattr(UNet2DConditionModel, "enable_freeu",
                        lambda self, **kw: (enabled.append(kw), real(self, **kw))[1])
    spec = load_job(demo_job(extensions=["freeu"], overwrite=True))
    with_freeu = editor.run(spec)
    assert enabled == [{"b1": 1.2, "b2": 1.5, "s1": 1.0, "s2": 1.0}] * 2  # inversion, then denoising
    assert with_freeu.run["inversion"]["cached"] is False  # FreeU changes the inversion: another cache entry
    assert not np.array_equal(with_freeu.frames, plain.frames)
    unet = editor._backbones[next(iter(editor._backbones))].unet
    assert _freeu_state(unet) == [(None,) * 4] * len(unet.up_blocks)
