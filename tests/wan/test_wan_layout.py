"""Masks through Wan's VAE time compression and patch grid: float64 reference, and codes that follow a mask."""

from __future__ import annotations

import pytest
import torch

from stmod.backbones.wan.layout import (compress_masks_in_time, latent_frame_count, latent_frame_groups,
                                        nearest_valid_frame_counts)
from stmod.core.st_layout.modulator import ModulationPlan
from stmod.core.st_layout.state import EngineState
from stmod.core.st_layout.modulator import EngineOptions
from stmod.core.types import LayoutMasks, ModulationConfig


def test_frame_counts_and_groups() -> None:
    assert [latent_frame_count(f) for f in (1, 5, 9, 81, 6, 0)] == [1, 2, 3, 21, None, None]
    assert nearest_valid_frame_counts(6) == (5, 9) and nearest_valid_frame_counts(16) == (13, 17)
    assert [list(g) for g in latent_frame_groups(9)] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(ValueError):
        latent_frame_groups(8)


def test_time_compression_equals_float64_reference() -> None:
    """Each latent frame is the union of its group (frame 0 alone, then fours): a float64 max over the group."""
    generator = torch.Generator().manual_seed(3)
    masks = torch.rand(13, 3, 8, 10, generator=generator, dtype=torch.float64) > 0.8
    reference = torch.stack([masks[list(group)].double().amax(dim=0) for group in latent_frame_groups(13)])
    out = compress_masks_in_time(masks)
    assert out.dtype == torch.bool and out.shape == (4, 3, 8, 10)
    assert torch.equal(out.double(), reference)


def test_time_compression_of_no_regions_keeps_the_frame_count() -> None:
    """A job without regions (a reconstruction) has ``(F, 0, H, W)`` masks: no reshape ambiguity."""
    assert compress_masks_in_time(torch.zeros(9, 0, 16, 16, dtype=torch.bool)).shape == (3, 0, 16, 16)


def _codes(pixel: torch.Tensor) -> torch.Tensor:
    """Self-attention codes per latent token ``(f, N)`` of masks ``(F, 2, H, W)`` at Wan's token grid."""
    latent = LayoutMasks(masks=compress_masks_in_time(pixel), names=("a", "b"))
    height, width = pixel.shape[-2:]
    plan = ModulationPlan(masks=latent, num_frames=latent.num_frames, latent_size=(height // 8, width // 8),
                          config=ModulationConfig(preset="paper"), text_length=512)
    state = EngineState(EngineOptions())
    state.prepare(plan, record=False)
    tokens = (height // 16) * (width // 16)  # VAE 8× and the 1×2×2 patch
    return state.level(tokens, latent.num_frames, torch.device("cpu")).self_codes


def test_codes_move_with_the_mask_by_one_latent_cell() -> None:
    """A mask moved by 16 px moves its codes by one token; moved by 4 frames, by one latent frame."""
    masks = torch.zeros(9, 2, 64, 64, dtype=torch.bool)
    masks[:, 1] = True
    masks[5:, 0, 16:32, 16:32], masks[5:, 1, 16:32, 16:32] = True, False
    base = _codes(masks).view(3, 4, 4)
    right = torch.roll(masks, shifts=16, dims=3)
    assert torch.equal(_codes(right).view(3, 4, 4), torch.roll(base, shifts=1, dims=2))
    later = torch.zeros_like(masks)
    later[:, 1] = True
    later[1:, 0, 16:32, 16:32], later[1:, 1, 16:32, 16:32] = True, False  # from frame 1: latent frame 1 on
    moved = _codes(later).view(3, 4, 4)
    assert torch.equal(moved[1], base[2]) and torch.equal(moved[0], base[0])
    assert not torch.equal(moved[1], base[1])
