"""Box refinement: a box shrinks to the object inside it, found by clustering inversion features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmod.core.errors import LayoutError
from stmod.core.features import FeatureMaps, FeatureRequest, InversionFeatures
from stmod.core.types import EditSpec, LayoutRequest, Region, VideoSource
from stmod.core.io.video import FrameTransform
from stmod.layouts.boxes import BoxesOptions, BoxLayoutProvider
from stmod.layouts.clustering import refine_to_object


def test_refine_to_object_keeps_the_cluster_inside_the_box() -> None:
    """Box ∩ clusters mostly inside it; background clusters that spread beyond the box are dropped."""
    labels = np.zeros((2, 10, 10), np.int64)
    labels[:, 3:6, 3:6] = 1  # the object
    labels[:, :, 8:] = 2  # another background cluster
    box = np.zeros((2, 10, 10), bool)
    box[:, 2:7, 2:7] = True
    refined = refine_to_object(box, labels)
    assert np.array_equal(refined, labels == 1)
    assert not refine_to_object(np.zeros_like(box), labels).any()


def test_refine_without_a_majority_takes_the_best_share() -> None:
    """When no cluster lies mostly inside, the one with the largest inside share is kept."""
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, :, 2:] = 1
    box = np.zeros((1, 4, 4), bool)
    box[0, 0, 1:3] = True  # one pixel of each cluster; cluster 1 is smaller overall? equal: first wins
    refined = refine_to_object(box, labels)
    assert refined.sum() == 1 and refined[0, 0, 1]


def _features(f: int, h: int, w: int, obj: np.ndarray, request: FeatureRequest) -> InversionFeatures:
    """Planted features: object tokens and background tokens have clearly different rows."""
    rng = np.random.default_rng(0)
    rows = rng.random((f, h, w, 8)).astype(np.float32) * 0.05
    rows[..., :4] += np.where(obj[..., None], 1.0, 0.0)
    rows[..., 4:] += np.where(obj[..., None], 0.0, 1.0)
    rows /= rows.sum(-1, keepdims=True)
    maps = FeatureMaps(request=request, grid=(h, w), reference=(0,), self_rows=torch.from_numpy(rows),
                       cross=torch.full((f, h, w, 77), 1 / 77), self_calls=1, cross_calls=1)
    return InversionFeatures(maps=(maps,), levels=(request.level,))


def test_boxes_refine_end_to_end_with_planted_features(tmp_path) -> None:
    """With refine, the region becomes the object's pixels inside the box, in every frame."""
    f, size, cell = 3, 64, 8
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: [8, 8, 48, 48]}}, refine=2))
    assert provider.feature_request == FeatureRequest(level=1)
    obj = np.zeros((f, size // cell, size // cell), bool)
    obj[:, 2:5, 2:5] = True  # 24x24 px object inside the 40x40 px box
    spec = EditSpec(video=VideoSource(path="clip.mp4", size=(size, size)), prompt="a car", regions=[Region(name="car", prompt="car")], base_dir=tmp_path)
    request = LayoutRequest(spec=spec, frame_indices=(0, 1, 2), source_size=(size, size),
                            transform=FrameTransform(source_height=size, source_width=size, height=size, width=size),
                            frames=np.zeros((f, size, size, 3), np.uint8),
                            features=_features(f, size // cell, size // cell, obj, provider.feature_request))
    layout = provider.layout(request, ["car"])
    expected = np.zeros((f, size, size), bool)
    expected[:, 16:40, 16:40] = True
    assert torch.equal(layout.masks[:, 0], torch.from_numpy(expected))


def test_boxes_refine_needs_features_and_valid_count(tmp_path) -> None:
    """refine: 1 is refused; refining without recorded features is a clear error."""
    with pytest.raises(ValueError, match="refine: 1"):
        BoxesOptions(boxes={"car": {0: [0, 0, 8, 8]}}, refine=1)
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: [0, 0, 32, 32]}}, refine=2))
    spec = EditSpec(video=VideoSource(path="clip.mp4", size=(64, 64)), prompt="a car", regions=[Region(name="car", prompt="car")], base_dir=tmp_path)
    request = LayoutRequest(spec=spec, frame_indices=(0,), source_size=(64, 64),
                            transform=FrameTransform(source_height=64, source_width=64, height=64, width=64),
                            frames=np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(LayoutError, match="needs attention features recorded during inversion"):
        provider.layout(request, ["car"])
