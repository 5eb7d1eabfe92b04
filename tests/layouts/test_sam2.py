"""The ``sam2`` layout provider: glue tested with a stand-in predictor; a random SAM 2 if the package is there."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stmod.core.errors import CheckpointError, ConfigError, LayoutError, MissingDependencyError
from stmod.layouts.sam2 import Sam2LayoutProvider, Sam2Options
from stmod.testing import fresh_plugin_manager
from stmod.core.io.video import plan_clip

PROMPTS = {"red": {2: {"points": [[20, 22], [100, 60]], "labels": [1, 0]}}, "blue": {4: {"box": [60, 56, 100, 80]}}}


class StandInPredictor:
    """SAM 2's video-predictor API without a model: an object's mask is its box, or 8×8 pixels around its first
    object point, in every frame; logits are +10 inside and -10 outside. Records what it was given."""

    def __init__(self) -> None:
        self.added: list[dict[str, Any]] = []
        self.passes: list[tuple[bool, list[int]]] = []

    def init_state(self, video_path: str) -> dict[str, Any]:
        files = sorted(Path(video_path).glob("*.jpg"))
        with Image.open(files[0]) as first:
            width, height = first.size
        return {"frames": len(files), "size": (height, width), "objects": {}}

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.added.append({"frame": frame_idx, "obj": obj_id, "points": points, "labels": labels, "box": box})
        if box is not None:
            rect = box
        else:
            x, y = points[list(labels).index(1)]
            rect = (x - 4, y - 4, x + 4, y + 4)
        state["objects"].setdefault(obj_id, (frame_idx, rect))

    def propagate_in_video(self, state, start_frame_idx=None, max_frame_num_to_track=None, reverse=False):
        first = min(frame for frame, _ in state["objects"].values())
        order = list(range(first, -1, -1) if reverse else range(first, state["frames"]))
        self.passes.append((reverse, order))
        height, width = state["size"]
        rows, cols = np.mgrid[0:height, 0:width] + 0.5
        ids = sorted(state["objects"])
        for frame in order:
            logits = []
            for obj in ids:
                x0, y0, x1, y1 = state["objects"][obj][1]
                logits.append(np.where((cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1), 10.0, -10.0))
            yield frame, ids, torch.tensor(np.stack(logits)[:, None], dtype=torch.bfloat16)


@pytest.fixture
def checkpoint(scene) -> Path:
    path = scene.root / "sam2.pt"
    path.write_bytes(b"not read by the stand-in")
    return path


def _provider(predictor: StandInPredictor | None, **options: Any) -> Sam2LayoutProvider:
    opts = Sam2Options(**{"checkpoint": "sam2.pt", "prompts": PROMPTS, **options})
    factory = None if predictor is None else (lambda config, ckpt, device, overrides: predictor)
    return Sam2LayoutProvider(opts, predictor_factory=factory)


def test_glue_maps_prompts_and_collects_masks(scene, make_spec, request_for, checkpoint: Path) -> None:
    """Source coordinates go through scale-and-crop, regions become object ids 1..K, tracking runs forward from
    the first prompted frame and back to frame 0, and logits above the threshold become the masks."""
    predictor = StandInPredictor()
    provider = _provider(predictor)
    spec = make_spec()  # 160x96 source → 128x64: scale 0.8 (77 rows), 6 rows cropped at the top
    provider.check(spec, spec.region_names, plan_clip(spec.video))
    masks = provider.layout(request_for(spec), spec.region_names)
    assert masks.names == ("red", "blue") and masks.masks.shape == (6, 2, 64, 128)
    red, blue = predictor.added
    assert (red["obj"], red["frame"], blue["obj"], blue["frame"]) == (1, 2, 2, 4)
    scale_y = 77 / 96
    assert np.allclose(red["points"], [[16, 22 * scale_y - 6], [80, 60 * scale_y - 6]])
    assert list(red["labels"]) == [1, 0]
    assert red["box"] is None and np.allclose(blue["box"], [48, 56 * scale_y - 6, 80, 80 * scale_y - 6])
    assert predictor.passes == [(False, [2, 3, 4, 5]), (True, [2, 1, 0])]
    expected = np.zeros((64, 128), bool)
    expected[round(56 * scale_y - 6):round(80 * scale_y - 6), 48:80] = True
    assert all(np.array_equal(masks.masks[f, 1].numpy(), expected) for f in range(6))
    assert masks.masks[:, 0].sum(dim=(1, 2)).tolist() == [64] * 6


def test_normalized_units_and_threshold(scene, make_spec, request_for, checkpoint: Path) -> None:
    predictor = StandInPredictor()
    prompts = {"red": {0: {"box": [0.0, 0.0, 0.5, 0.5]}}, "blue": {0: {"points": [[0.5, 0.5]]}}}
    spec = make_spec()
    masks = _provider(predictor, prompts=prompts, units="normalized").layout(request_for(spec), spec.region_names)
    assert np.allclose(predictor.added[0]["box"], [0, 0, 64, 77 / 2 - 6])
    assert np.allclose(predictor.added[1]["points"], [[64, 77 / 2 - 6]])
    assert predictor.passes == [(False, [0, 1, 2, 3, 4, 5])]  # prompts on frame 0: no backward pass
    everywhere = _provider(StandInPredictor(), prompts=prompts, units="normalized", threshold=-20.0)
    assert everywhere.layout(request_for(spec), spec.region_names).masks.all()
    assert masks.masks[:, 0].any()


def test_prompt_errors(scene, make_spec, request_for, checkpoint: Path) -> None:
    spec = make_spec(every=2)  # selects source frames 0, 2, 4
    with pytest.raises(LayoutError, match=r"region 'red': prompt frame 3 is not a frame the job selects \(source "
                                          r"frames 0, 2, 4\)"):
        prompts = {**PROMPTS, "red": {3: {"points": [[20, 22]]}}}
        _provider(StandInPredictor(), prompts=prompts).check(spec, ("red", "blue"), plan_clip(spec.video))
    with pytest.raises(LayoutError, match="region 'blue' has no prompts in layout 'sam2'"):
        _provider(StandInPredictor(), prompts={"red": PROMPTS["red"]}).check(spec, ("red", "blue"), plan_clip(spec.video))
    with pytest.raises(LayoutError, match=r"region 'red' frame 2: point \[1.0, 2.0\] lies outside the centre crop"):
        _provider(StandInPredictor(), prompts={**PROMPTS, "red": {2: {"points": [[1, 2]]}}}).layout(
            request_for(spec), ("red", "blue"))
    registry = fresh_plugin_manager().registry
    bad = [({"red": {0: {"points": [[1, 2]], "labels": [2]}}}, "labels must be one 1 .object. or 0"),
           ({"red": {0: {"box": [5, 5, 1, 1]}}}, "x0 < x1"),
           ({"red": {0: {"clicks": [[1, 2]]}}}, "must be a mapping with points"),
           ({"red": {-1: {"points": [[1, 2]]}}}, "must be a source frame index")]
    for prompts, message in bad:
        with pytest.raises(ConfigError, match=message):
            registry.create("layout", "sam2", {"checkpoint": "x.pt", "prompts": prompts})


def test_missing_checkpoint(scene, make_spec) -> None:
    spec = make_spec()
    with pytest.raises(CheckpointError, match=r"sam2.pt: SAM 2 checkpoint not found .*download_ckpts.sh"):
        _provider(StandInPredictor()).check(spec, spec.region_names, plan_clip(spec.video))


def test_missing_package(scene, make_spec, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the sam2 package: check says which extra to install, and so does building the predictor."""
    monkeypatch.setitem(sys.modules, "sam2", None)
    spec = make_spec()
    with pytest.raises(MissingDependencyError, match=r"layout 'sam2' needs sam2.*pip install 'stmod\[sam2\]'"):
        _provider(None).check(spec, spec.region_names, plan_clip(spec.video))
    from stmod.layouts.sam2 import build_sam2_predictor

    with pytest.raises(MissingDependencyError, match="stmod.sam2"):
        build_sam2_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint, torch.device("cpu"))


needs_sam2 = pytest.mark.skipif(
    importlib.util.find_spec("sam2") is None or importlib.util.find_spec("torchvision") is None,
    reason="the optional sam2 package (stmod[sam2]) is not installed")


@needs_sam2
def test_config_name_checked(scene, make_spec, checkpoint: Path) -> None:
    spec = make_spec()
    with pytest.raises(LayoutError, match=r"config 'sam2.1_hiera_q.yaml' is not a config .*sam2.1_hiera_t"):
        _provider(None, config="sam2.1_hiera_q.yaml").check(spec, spec.region_names, plan_clip(spec.video))
    _provider(None).check(spec, spec.region_names, plan_clip(spec.video))  # the default config exists; weights are not read
    with pytest.raises(CheckpointError, match="cannot be loaded into SAM 2 config"):
        _provider(None).layout(_request(make_spec, frames=6), spec.region_names)


def _request(make_spec, frames: int):
    from stmod.core.io.video import load_video
    from stmod.core.types import LayoutRequest

    spec = make_spec(frames=frames)
    clip = load_video(spec.video)
    return LayoutRequest(spec=spec, frame_indices=clip.indices, source_size=clip.source_size,
                         transform=clip.transform, frames=clip.frames)


@needs_sam2
def test_random_sam2_model_on_cpu(scene, make_spec, tmp_path: Path) -> None:
    """The real package path: a randomly initialised SAM 2 (its own tiny config, shrunk input size) saved as a
    checkpoint, loaded by the provider, tracking two regions over two frames on the CPU."""
    from sam2.build_sam import build_sam2_video_predictor

    overrides = ["++model.image_size=32"]  # tiny input: the CPU runs SAM 2 in bfloat16 (slow)
    torch.manual_seed(0)
    model = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
                                       hydra_overrides_extra=overrides)
    torch.save({"model": model.state_dict()}, tmp_path / "random-sam2.pt")
    del model
    prompts = {"red": {0: {"points": [[20, 22]]}}, "blue": {0: {"box": [120, 56, 140, 80]}}}
    provider = Sam2LayoutProvider(Sam2Options(checkpoint=tmp_path / "random-sam2.pt", prompts=prompts, device="cpu",
                                              overrides=overrides, threshold=-1e4))
    request = _request(make_spec, frames=2)
    provider.check(request.spec, ("red", "blue"))
    masks = provider.layout(request, ("red", "blue"))
    assert masks.names == ("red", "blue") and masks.masks.shape == (2, 2, 64, 128) and masks.masks.all()
