"""Pure modulation math: ξ(t), the score formula, grids, mask down-sampling, labels and size terms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from stmod.core.st_layout.labels import (
    downsample_masks,
    layer_grid,
    level_layout,
    modulated_scores,
    region_bits,
    relation_codes,
    rules_for,
    size_factor,
    time_weight,
    token_bits,
)


def test_time_weight_matches_official_ddim_schedule(official_xi: list[float]) -> None:
    """ξ(t) over the SD-1.5 50-step DDIM schedule equals the official values 0.9039, 0.8154, …"""
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    scheduler.set_timesteps(50)
    timesteps = [int(t) for t in scheduler.timesteps[:15]]
    assert timesteps[:3] == [981, 961, 941]
    assert [round(time_weight(t), 4) for t in timesteps] == official_xi


def test_time_weight_edges() -> None:
    """ξ is 0 at timestep 1 and below, and the exponent is honoured."""
    assert time_weight(1) == 0.0 and time_weight(0) == 0.0
    assert time_weight(501, exponent=1.0) == pytest.approx(0.5)


def test_modulated_scores_moves_positives_up_and_negatives_down() -> None:
    """Positive keys move toward the row max, negatives toward the row min; λ = 0 is the identity."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 7, generator=g)
    positive = torch.rand(5, 7, generator=g) < 0.4
    lam = torch.rand(3, 5, generator=g) * 0.9 + 0.05
    out = modulated_scores(s, positive, lam)
    assert torch.equal(modulated_scores(s, positive, torch.zeros(3, 5)), s)
    assert torch.all((out >= s)[..., positive]) and torch.all((out <= s)[..., ~positive])
    assert torch.all(out <= s.amax(-1, keepdim=True) + 1e-6) and torch.all(out >= s.amin(-1, keepdim=True) - 1e-6)
    assert out.dtype == s.dtype


@pytest.mark.parametrize(
    ("tokens", "latent", "grid"),
    [(4096, (64, 64), (64, 64)), (1024, (64, 64), (32, 32)), (64, (64, 64), (8, 8)),
     (48 * 32, (64, 96), (32, 48)), (24, (8, 12), (4, 6)), (6, (8, 12), (2, 3)), (4, (5, 7), (2, 2))],
)
def test_layer_grid(tokens: int, latent: tuple[int, int], grid: tuple[int, int]) -> None:
    """Each layer's grid follows from its token count and the latent size, square or not."""
    assert layer_grid(tokens, latent) == grid


def test_layer_grid_unknown_token_count() -> None:
    """A token count that no level has is an error naming the latent."""
    with pytest.raises(ValueError, match="64×64"):
        layer_grid(1000, (64, 64))


def test_nearest_downsampling_equals_official_two_stage_resize() -> None:
    """Direct nearest sampling of pixel masks equals cv2 nearest to the latent then torch nearest per level."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 3, 128, 192, generator=g) < 0.5
    latent = np.stack([
        np.stack([cv2.resize(m.numpy().astype(np.uint8), (24, 16), interpolation=cv2.INTER_NEAREST) for m in frame])
        for frame in masks
    ])
    latent = torch.from_numpy(latent).float()
    for grid in ((16, 24), (8, 12), (4, 6), (2, 3)):
        official = torch.nn.functional.interpolate(latent, size=grid, mode="nearest") > 0
        assert torch.equal(downsample_masks(masks, grid), official)


def test_area_downsampling_threshold() -> None:
    """``area`` keeps a token when at least half of its pixels are covered."""
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :1] = True  # 2 of 4 pixels of the top-left block
    masks[0, 0, :1, 2:3] = True  # 1 of 4 pixels of the top-right block
    out = downsample_masks(masks, (2, 2), "area")
    assert out[0, 0].tolist() == [[True, False], [False, False]]


def test_relation_codes_equal_bitset_intersection() -> None:
    """``relation[code_x, code_y]`` is exactly "the bitsets share a region"."""
    g = torch.Generator().manual_seed(1)
    qb = torch.randint(0, 16, (3, 40), generator=g)
    kb = torch.randint(0, 16, (3, 30), generator=g)
    qc, kc, rel = relation_codes(qb, kb)
    expected = (qb[:, :, None] & kb[:, None, :]) != 0
    assert torch.equal(rel[qc[:, :, None], kc[:, None, :]], expected)
    sc, _, srel = relation_codes(qb)
    assert torch.equal(srel[sc[:, :, None], sc[:, None, :]], (qb[:, :, None] & qb[:, None, :]) != 0)


def test_region_bits_background() -> None:
    """Tokens in no region get no bit (videograin) or the background bit (paper)."""
    masks = torch.tensor([[True, False], [False, False], [True, True]])
    assert region_bits(masks).tolist() == [1, 0, 3]
    assert region_bits(masks, background_region=True).tolist() == [1, 4, 3]


def test_token_bits_owner_rules() -> None:
    """Overlapping spans: the last region owns a token (official overwrite) or all regions do (union)."""
    spans = [(1, 3), (2, 4), None]
    assert token_bits(spans, 6, owner="last").tolist() == [0, 1, 2, 2, 0, 0]
    assert token_bits(spans, 6, owner="union").tolist() == [0, 1, 3, 2, 0, 0]


def test_official_size_terms_add_up_on_overlaps() -> None:
    """videograin: self S over f²·N (nearly inert), cross S per frame; overlaps add and can make 1 − S < 0."""
    masks = torch.zeros(2, 2, 4, dtype=torch.bool)
    masks[:, 0, :3] = True
    masks[:, 1, :] = True  # covers everything, overlapping region 0
    cross = size_factor(masks, "frame-sum")
    assert cross[0].tolist() == pytest.approx([1 - 3 / 4 - 1, 1 - 3 / 4 - 1, 1 - 3 / 4 - 1, 0.0])
    own = size_factor(masks, "video/f²N")
    assert own[0, 3].item() == pytest.approx(1 - 8 / (2 * 2 * 4))


def test_paper_size_terms_use_smallest_region_and_background() -> None:
    """paper: the smallest region containing a pixel sets S; pixels in no mask use the background's area."""
    masks = torch.zeros(1, 2, 8, dtype=torch.bool)
    masks[0, 0, :4] = True
    masks[0, 1, 2:3] = True  # inside region 0
    out = size_factor(masks, "smallest/frame")[0]
    assert out.tolist() == pytest.approx([1 - 4 / 8] * 2 + [1 - 1 / 8] + [1 - 4 / 8] * 5)


def test_level_layout_shapes_and_rules() -> None:
    """A level layout holds O(F·N) codes and the preset's relations."""
    masks = torch.zeros(3, 2, 16, 24, dtype=torch.bool)
    masks[:, 0, :8] = True
    masks[:, 1, 8:, :12] = True
    grain = level_layout(masks, (4, 6), rules=rules_for("videograin"), spans=[(1, 2), None])
    paper = level_layout(masks, (4, 6), rules=rules_for("paper"), spans=[(1, 2), None])
    assert grain.self_codes.shape == (3, 24) and grain.self_size.shape == (3, 24)
    assert grain.text_codes.shape == (77,)
    background = grain.self_codes[0, -1]  # bottom-right token: in no mask
    assert not grain.self_relation[background].any()
    assert paper.self_relation[paper.self_codes[0, -1], paper.self_codes[1, -1]]
