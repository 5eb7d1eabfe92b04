"""The ``boxes`` layout provider: interpolation, rasterisation, the frame transform, and its errors."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from stmod.core.errors import ConfigError, LayoutError
from stmod.core.types import VideoSource
from stmod.core.io.video import write_frames
from stmod.layouts.boxes import BoxesOptions, BoxLayoutProvider, interpolate_box, rasterise_box
from stmod.plugins.manager import make_plugin_manager
from stmod.core.io.video import plan_clip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _box_mask(x0: float, y0: float, x1: float, y1: float, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), bool)
    out[round(y0):round(y1), round(x0):round(x1)] = True
    return out


@pytest.fixture
def square_spec(scene, tmp_path, make_spec):
    """A spec on a 128x64 clip (edit size = source size, so masks are compared directly)."""
    write_frames(tmp_path / "small", scene.frames[:, :64, :128])
    return attrs.evolve(make_spec(regions=("car", "man")), video=VideoSource(path=tmp_path / "small", size=(128, 64)))


def test_interpolate_linear_and_held() -> None:
    """Linear between keyframes, exact at keyframes, held before the first and after the last."""
    keys = {2: (0.0, 0.0, 10.0, 10.0), 6: (40.0, 20.0, 50.0, 30.0)}
    assert interpolate_box(keys, 2) == (0.0, 0.0, 10.0, 10.0)
    assert interpolate_box(keys, 4) == (20.0, 10.0, 30.0, 20.0)
    assert interpolate_box(keys, 0) == keys[2] and interpolate_box(keys, 9) == keys[6]


def test_rasterise_pixel_box_exact() -> None:
    """An integer pixel box covers exactly columns x0..x1-1 and rows y0..y1-1."""
    mask = rasterise_box((3, 2, 7, 5), 8, 10)
    assert mask.sum() == 4 * 3 and mask[2:5, 3:7].all()


def test_exact_at_keyframes_and_iou_between(square_spec, request_for) -> None:
    """Keyframe masks are exact; in between, linear motion gives IoU >= 0.95 against the true box."""
    start, end = (5, 8, 29, 40), (95, 17, 119, 49)
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: start, 5: end}}))
    provider.check(square_spec, ["car"], plan_clip(square_spec.video))
    masks = provider.layout(request_for(square_spec), ["car"]).masks[:, 0].numpy()
    assert np.array_equal(masks[0], _box_mask(*start, 64, 128))
    assert np.array_equal(masks[5], _box_mask(*end, 64, 128))
    for i in range(1, 5):
        a = i / 5
        truth = _box_mask(*((1 - a) * s + a * e for s, e in zip(start, end)), 64, 128)
        assert _iou(masks[i], truth) >= 0.95


def test_normalized_equals_pixels(square_spec, request_for) -> None:
    """Normalised boxes give the same masks as the equivalent pixel boxes."""
    pixels = BoxLayoutProvider(BoxesOptions(boxes={"man": {1: (32, 16, 96, 48)}}))
    normal = BoxLayoutProvider(BoxesOptions(boxes={"man": {1: (0.25, 0.25, 0.75, 0.75)}}, units="normalized"))
    request = request_for(square_spec)
    assert np.array_equal(pixels.layout(request, ["man"]).masks, normal.layout(request, ["man"]).masks)


def test_boxes_follow_the_frame_transform(scene, make_spec, request_for) -> None:
    """On a non-square source the box is transformed like the frames: the red square stays inside."""
    truth = {i: (8 + 16 * i, 10, 32 + 16 * i, 34) for i in range(6)}  # the scene's red square
    spec = make_spec(regions=("red",), every=2)
    request = request_for(spec)
    masks = BoxLayoutProvider(BoxesOptions(boxes={"red": truth})).layout(request, ["red"]).masks[:, 0].numpy()
    assert np.array_equal(masks, request.transform(scene.masks["red"][[0, 2, 4]]))
    red = (request.frames[..., 0] > 180) & (request.frames[..., 2] < 80)
    assert _iou(red, masks) > 0.9


def test_inverted_and_out_of_range_boxes() -> None:
    """Inverted boxes and normalised values past 1 fail when the options are parsed."""
    registry = make_plugin_manager(load_entrypoints=False).registry
    with pytest.raises(ConfigError, match=r"region 'car' frame 3: \[50, 0, 10, 20\] is inverted"):
        registry.create("layout", "boxes", {"boxes": {"car": {3: [50, 0, 10, 20]}}})
    with pytest.raises(ConfigError, match=r"outside \[0, 1\] \(units: normalized\)"):
        registry.create("layout", "boxes", {"boxes": {"car": {0: [0.1, 0.1, 1.5, 0.5]}}, "units": "normalized"})
    with pytest.raises(ConfigError, match=r"keyframe 'one' must be a source frame index"):
        registry.create("layout", "boxes", {"boxes": {"car": {"one": [1, 1, 5, 5]}}})


def test_pixel_box_past_frame(square_spec) -> None:
    """A pixel box reaching past the source frame names the region, frame and size."""
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: (100, 0, 140, 20)}}))
    with pytest.raises(LayoutError, match=r"region 'car' frame 0: box .* reaches past the 128x64 source frame"):
        provider.check(square_spec, ["car"], plan_clip(square_spec.video))


def test_region_without_boxes_and_unknown_region(square_spec) -> None:
    """A region with no boxes lists the boxed regions; boxes for a non-region are an error."""
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: (0, 0, 8, 8)}}))
    with pytest.raises(LayoutError, match=r"region 'man' has no boxes .*given for: car") as info:
        provider.check(square_spec, ["car", "man"], plan_clip(square_spec.video))
    assert info.value.region == "man"
    stray = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: (0, 0, 8, 8)}, "cat": {0: (0, 0, 8, 8)}}))
    with pytest.raises(LayoutError, match=r"boxes for 'cat', which is not a region of the job"):
        stray.check(square_spec, ["car"], plan_clip(square_spec.video))


def test_keyframe_past_clip_end(square_spec) -> None:
    """A keyframe beyond the last source frame is reported with the clip length."""
    provider = BoxLayoutProvider(BoxesOptions(boxes={"car": {0: (0, 0, 8, 8), 40: (8, 8, 16, 16)}}))
    with pytest.raises(LayoutError, match=r"keyframe 40 is past the last source frame \(the clip has 6 frames\)"):
        provider.check(square_spec, ["car"], plan_clip(square_spec.video))


def test_box_outside_crop(make_spec) -> None:
    """A box only in the cropped-away border is an error."""
    provider = BoxLayoutProvider(BoxesOptions(boxes={"red": {0: (0, 0, 160, 3)}}))
    with pytest.raises(LayoutError, match=r"outside the centre crop to 128x64"):
        provider.check(spec := make_spec(regions=("red",)), ["red"], plan_clip(spec.video))


def test_a_region_can_be_absent_on_keyframes() -> None:
    """``null`` hides the region from that keyframe to the next: an object entering or leaving mid-clip."""
    from stmod.layouts.boxes import BoxesOptions, interpolate_box

    options = BoxesOptions(boxes={"car": {0: None, 4: [0, 0, 10, 10], 8: [10, 0, 20, 10], 10: "absent"}})
    keys = options.boxes["car"]
    assert [interpolate_box(keys, f) for f in (0, 3)] == [None, None]          # enters at frame 4
    assert interpolate_box(keys, 4) == (0.0, 0.0, 10.0, 10.0)
    assert interpolate_box(keys, 6) == (5.0, 0.0, 15.0, 10.0)                  # moves between two boxes
    assert interpolate_box(keys, 9) == (10.0, 0.0, 20.0, 10.0)                 # held up to the absence
    assert [interpolate_box(keys, f) for f in (10, 30)] == [None, None]        # gone from frame 10 on
    with pytest.raises(ValueError, match="absent on every keyframe"):
        BoxesOptions(boxes={"car": {0: None}})
