"""Value objects: validation and derived properties."""

from __future__ import annotations

import attrs
import pytest
import torch

from stmod.core.types import EditSpec, LayoutMasks, ModulationConfig, Region, VideoSource


def _masks(f: int = 2, k: int = 2, h: int = 4, w: int = 6) -> torch.Tensor:
    return torch.rand(f, k, h, w) > 0.5


def test_layout_masks_validates_dtype_shape_and_names() -> None:
    """Masks must be bool (F, K, H, W) with one unique valid name per region."""
    with pytest.raises(ValueError, match="bool tensor"):
        LayoutMasks(masks=_masks().float(), names=("a", "b"))
    with pytest.raises(ValueError, match="bool tensor"):
        LayoutMasks(masks=_masks()[0], names=("a", "b"))
    with pytest.raises(ValueError, match="2 masks"):
        LayoutMasks(masks=_masks(), names=("a",))
    with pytest.raises(ValueError, match="unique"):
        LayoutMasks(masks=_masks(), names=("a", "a"))


def test_layout_masks_select_union_and_equality() -> None:
    """select() reorders by name, union() ORs regions, equality compares contents."""
    m = _masks(3, 3, 5, 7)
    layout = LayoutMasks(masks=m, names=("x", "y", "z"))
    picked = layout.select(["z", "x"])
    assert picked.names == ("z", "x") and torch.equal(picked.masks[:, 0], m[:, 2])
    assert torch.equal(layout.union(), m.any(1))
    assert layout == LayoutMasks(masks=m.clone(), names=("x", "y", "z"))
    assert layout != LayoutMasks(masks=~m, names=("x", "y", "z"))
    assert layout.num_frames == 3 and layout.size == (5, 7)
    with pytest.raises(KeyError, match="no mask for region"):
        layout.select(["w"])


def test_video_source_indices() -> None:
    """Frame i is start + i*every, at most `frames` of them."""
    assert VideoSource(path="a", start=2, every=3, frames=3).indices(20) == [2, 5, 8]
    assert VideoSource(path="a", start=2, every=3).indices(9) == [2, 5, 8]
    assert VideoSource(path="a", start=10).indices(5) == []


def test_modulation_window() -> None:
    """The window is [start_step, end_step)."""
    cfg = ModulationConfig(start_step=2, end_step=4)
    assert [cfg.active(i) for i in range(6)] == [False, False, True, True, False, False]


def test_values_are_frozen() -> None:
    """Values cannot be mutated; evolve() derives variants."""
    region = Region(name="cat", prompt="red cat")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        region.prompt = "dog"  # type: ignore[misc]
    assert attrs.evolve(region, prompt="dog").prompt == "dog"


def test_edit_spec_region_lookup() -> None:
    """EditSpec.region(name) finds a region; a missing one is a KeyError."""
    spec = EditSpec(video=VideoSource(path="a.mp4"), prompt="p", regions=[Region(name="a", prompt="x")])
    assert spec.region("a").prompt == "x"
    with pytest.raises(KeyError):
        spec.region("b")
