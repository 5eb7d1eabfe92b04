"""Built-in blenders against plain float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from stmod import BlendContext
from stmod.plugins.blenders import BlendOptions, LatentBlend, NoBlend, VideoGrainBlend, feather
from stmod.testing import fresh_plugin_manager


class _Schedule:
    """A noise schedule whose forward noising is ``√(1 − t/100)·x0 + √(t/100)·ε``."""

    @staticmethod
    def add_noise(x0, noise, t):
        return math.sqrt(1 - t / 100) * x0 + math.sqrt(t / 100) * noise


def _context(seed: int = 0) -> BlendContext:
    g = torch.Generator().manual_seed(seed)
    f, h, w = 3, 6, 5
    mask = (torch.rand(f, 1, h, w, generator=g) > 0.5).float()
    trajectory = {t: torch.randn(f, 4, h, w, generator=g) for t in (0, 20, 40)}
    return BlendContext(mask=mask, trajectory=trajectory, source_latents=trajectory[0], schedule=_Schedule(),
                        generator=torch.Generator().manual_seed(seed + 1))


def test_none_returns_latents_unchanged() -> None:
    """`none` is the identity."""
    z = torch.randn(3, 4, 6, 5)
    assert NoBlend().blend(z, step_index=0, timestep=40, next_timestep=20, context=_context()) is z


def test_latent_blend_matches_reference() -> None:
    """`latent`: (1 − M)·z̃_t + M·z_t, with z̃_t the trajectory at the latents' new level."""
    ctx = _context()
    z = torch.randn(3, 4, 6, 5)
    out = LatentBlend(BlendOptions()).blend(z, step_index=0, timestep=40, next_timestep=20, context=ctx)
    m, src = ctx.mask.double(), ctx.trajectory[20].double()
    expected = (1 - m) * src + m * z.double()
    assert torch.allclose(out.double(), expected, atol=1e-6)
    outside = ctx.mask.expand_as(z) == 0
    assert torch.equal(out[outside], ctx.trajectory[20][outside])
    assert torch.equal(out[~outside], z[~outside])


def test_latent_blend_missing_level_is_clear() -> None:
    """A schedule mismatch names the missing timestep."""
    with pytest.raises(KeyError, match="no latent at timestep 30"):
        LatentBlend(BlendOptions()).blend(torch.zeros(3, 4, 6, 5) + 1, step_index=0, timestep=50,
                                          next_timestep=30, context=_context())


def test_videograin_blend_matches_reference() -> None:
    """`videograin`: M·z + (1 − M)·add_noise(x0, ε, t_current), ε drawn from the given generator."""
    ctx = _context(3)
    z = torch.randn(3, 4, 6, 5)
    out = VideoGrainBlend(BlendOptions()).blend(z, step_index=2, timestep=40, next_timestep=20, context=ctx)
    eps = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(4)).double()
    x0, m = ctx.source_latents.double(), ctx.mask.double()
    noised = math.sqrt(1 - 0.4) * x0 + math.sqrt(0.4) * eps
    assert torch.allclose(out.double(), m * z.double() + (1 - m) * noised, atol=1e-5)


def test_feather_reference_and_identity() -> None:
    """Feathering is a separable Gaussian with replicate padding; sigma 0 is the identity."""
    mask = (torch.rand(2, 1, 9, 11) > 0.5).float()
    assert feather(mask, 0.0) is mask
    sigma = 1.3
    out = feather(mask, sigma).double()
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    padded = torch.nn.functional.pad(mask.double(), (radius,) * 4, mode="replicate")[:, 0]
    expected = torch.zeros_like(mask.double()[:, 0])
    for i in range(2 * radius + 1):
        for j in range(2 * radius + 1):
            expected += k[i] * k[j] * padded[:, i:i + 9, j:j + 11]
    assert torch.allclose(out[:, 0], expected, atol=1e-6)


def test_soft_edge_softens_only_near_the_edge() -> None:
    """With soft_edge, pixels far inside/outside the mask are unchanged; edge pixels mix."""
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1
    z, src = torch.ones(1, 4, 16, 16), torch.zeros(1, 4, 16, 16)
    ctx = BlendContext(mask=mask, trajectory={0: src}, source_latents=src, schedule=_Schedule(),
                       generator=torch.Generator())
    out = LatentBlend(BlendOptions(soft_edge=1.0)).blend(z, step_index=0, timestep=1, next_timestep=0, context=ctx)
    assert torch.allclose(out[..., 0], torch.ones(1, 4, 16)) and torch.allclose(out[..., 15], torch.zeros(1, 4, 16))
    assert 0.0 < out[0, 0, 0, 7] < 1.0 and 0.0 < out[0, 0, 0, 8] < 1.0


def test_blenders_registered_with_options() -> None:
    """The built-in plugin registers all three; options are validated."""
    registry = fresh_plugin_manager().registry
    assert isinstance(registry.create("blender", "latent", {"soft_edge": 2}), LatentBlend)
    with pytest.raises(Exception, match="soft_edge"):
        registry.create("blender", "latent", {"soft_edge": -1})
