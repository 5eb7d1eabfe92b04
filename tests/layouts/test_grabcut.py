"""The ``grabcut`` layout provider: tracking on the shapes world, clicks, the job file, and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from stmod.backbones.shapes import world
from stmod.core.config import load_job
from stmod.core.errors import ConfigError, LayoutError
from stmod.core.io.video import write_frames
from stmod.core.pipeline.editor import Editor
from stmod.layouts.grabcut import GrabcutLayoutProvider, GrabcutOptions, KeyPrompt, grabcut_box, track_region, warp_mask
from stmod.plugins.manager import make_plugin_manager
from stmod.core.io.video import plan_clip


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _box(mask: np.ndarray, pad: float = 3) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return cols[0] - pad, rows[0] - pad, cols[-1] + 1 + pad, rows[-1] + 1 + pad


def test_one_box_tracks_moving_and_occluded_objects() -> None:
    """From one box on frame 0, every frame's mask matches the truth (IoU >= 0.8, mean >= 0.9), also while a
    square passes in front of the disc."""
    scene = world.Scene(background="sand", seed=2, things=(
        world.Thing(shape="disc", colour="green", size=0.34, start=(0.4, 0.5), velocity=(0.004, 0.0)),
        world.Thing(shape="square", colour="purple", size=0.24, start=(0.86, 0.55), velocity=(-0.04, 0.0))))
    clip, bodies, parts = world.render_clip(scene, 14, (112, 96))
    truth = bodies | parts
    for k in range(2):
        masks = track_region(clip, {0: KeyPrompt(box=_box(truth[0, k]))})
        scores = [_iou(m, t) for m, t in zip(masks, truth[:, k])]
        assert min(scores) >= 0.8 and np.mean(scores) >= 0.9, (k, np.round(scores, 2))
    again = track_region(clip, {0: KeyPrompt(box=_box(truth[0, 0]))})
    assert np.array_equal(again, track_region(clip, {0: KeyPrompt(box=_box(truth[0, 0]))}))  # deterministic


def test_clicks_separate_two_objects_in_one_box() -> None:
    """A box around two touching squares takes both; a background click on one leaves the other."""
    yy, xx = np.mgrid[0:80, 0:80]
    image = np.stack([60 + xx % 16, 90 + yy % 16, np.full_like(xx, 50)], -1).astype(np.uint8)
    red, blue = (yy >= 20) & (yy < 50) & (xx >= 15) & (xx < 40), (yy >= 20) & (yy < 50) & (xx >= 40) & (xx < 65)
    image[red], image[blue] = (220, 30, 30), (30, 70, 230)
    both = grabcut_box(image, KeyPrompt(box=(10, 15, 70, 55)))
    assert _iou(both, red | blue) > 0.9
    one = grabcut_box(image, KeyPrompt(box=(10, 15, 70, 55), points=((27, 35), (52, 35)), labels=(1, 0)))
    assert _iou(one, red) > 0.9


def test_warp_mask_follows_the_flow() -> None:
    """A constant flow of (-3, -2) (each target pixel comes from 3 left, 2 up in the source) moves the mask by (3, 2)."""
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    flow = np.zeros((20, 20, 2), np.float32)
    flow[..., 0], flow[..., 1] = -3, -2
    moved = warp_mask(mask, flow)
    assert moved[7:12, 8:13].all() and moved.sum() == 25


def test_job_file_through_the_editor(tmp_path) -> None:
    """A job file with ``layout: grabcut`` (source pixels on a 160x96 source, scaled and cropped to 128x64)
    gives masks close to the transformed truth through Editor.layout, composed with the job's overlap rule."""
    scene = world.Scene(background="grass", seed=1, things=(
        world.Thing(shape="square", colour="red", size=0.4, start=(0.25, 0.45), velocity=(0.02, 0.01)),
        world.Thing(shape="disc", colour="blue", size=0.45, start=(0.72, 0.55), velocity=(-0.015, 0.0))))
    clip, bodies, parts = world.render_clip(scene, 6, (160, 96))
    write_frames(tmp_path / "clip", clip)
    truth = bodies | parts
    boxes = {name: [round(float(v), 1) for v in _box(truth[f, k])] for k, (name, f) in enumerate((("red", 0), ("blue", 5)))}
    (tmp_path / "job.yaml").write_text(
        "video: {path: clip, size: [128, 64]}\n"
        "prompt: a red square and a blue disc\n"
        "regions: {red: red square, blue: blue disc}\n"
        "layout:\n"
        "  name: grabcut\n"
        f"  prompts: {{red: {{0: {{box: {boxes['red']}}}}}, blue: {{5: {{box: {boxes['blue']}, points: [[110, 50]]}}}}}}\n"
        "backbone: tiny\n"
        "output: out\n")
    spec = load_job(tmp_path / "job.yaml")
    result = Editor(make_plugin_manager(load_entrypoints=False).registry, progress=False, cache=False).layout(spec)
    masks = result.layout.masks.numpy()
    assert result.layout.names == ("red", "blue") and masks.shape == (6, 2, 64, 128)
    for k, name in enumerate(("red", "blue")):
        scores = [_iou(m, t) for m, t in zip(masks[:, k], result.clip.transform(truth[:, k]))]
        assert min(scores) > 0.85, (name, np.round(scores, 2))


def test_option_errors() -> None:
    """A keyframe without a box and a bad frame key fail when the options are parsed, naming what to fix."""
    registry = make_plugin_manager(load_entrypoints=False).registry
    with pytest.raises(ConfigError, match=r"region 'car' frame 3 has clicks but no box; add box: \[x0, y0, x1, y1\]"):
        registry.create("layout", "grabcut", {"prompts": {"car": {3: {"points": [[4, 5]]}}}})
    with pytest.raises(ConfigError, match=r"frame 'one' must be a source frame index"):
        registry.create("layout", "grabcut", {"prompts": {"car": {"one": {"box": [1, 1, 5, 5]}}}})
    with pytest.raises(ConfigError, match=r"box \[5.0, 1.0, 2.0, 5.0\] must be \[x0, y0, x1, y1\] with x0 < x1"):
        registry.create("layout", "grabcut", {"prompts": {"car": {0: {"box": [5, 1, 2, 5]}}}})


def test_check_errors(make_spec) -> None:
    """Unselected keyframes, boxes past the frame or outside the crop, and regions without prompts."""
    spec = make_spec(regions=("red",), every=2)

    def check(prompts: dict, regions: tuple[str, ...] = ("red",)) -> None:
        GrabcutLayoutProvider(GrabcutOptions(prompts=prompts)).check(spec, list(regions), plan_clip(spec.video))

    with pytest.raises(LayoutError, match=r"prompt frame 1 is not a frame the job selects \(source frames 0, 2, 4\)"):
        check({"red": {1: {"box": [0, 0, 30, 30]}}})
    with pytest.raises(LayoutError, match=r"box \[100.0, 0.0, 170.0, 20.0\] reaches past the 160x96 source frame"):
        check({"red": {0: {"box": [100, 0, 170, 20]}}})
    with pytest.raises(LayoutError, match=r"lies outside the centre crop to 128x64"):
        check({"red": {0: {"box": [0, 0, 160, 3]}}})
    with pytest.raises(LayoutError, match=r"region 'red' has no prompts in layout 'grabcut'.*draw a box"):
        check({"blue": {0: {"box": [0, 0, 30, 30]}}}, ("red", "blue"))
