"""ControlNet annotators: canny through controlnet-aux, precomputed frames, weight checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stmod.backbones.annotators import (CannyAnnotator, CannyOptions, DepthAnnotator, FramesAnnotator, FramesOptions,
                                        OpenposeAnnotator, OpenposeOptions, WeightsOptions)
from stmod.core.errors import CheckpointError, InputError
from stmod.core.types import EditSpec, LayoutRequest, VideoSource
from stmod.core.io.video import FrameTransform


def _request(frames: np.ndarray, tmp_path: Path, indices=(0, 1), source_size=None, transform=None) -> LayoutRequest:
    spec = EditSpec(video=VideoSource(path="clip.mp4"), prompt="p", base_dir=tmp_path)
    return LayoutRequest(spec=spec, frame_indices=indices, source_size=source_size or frames.shape[1:3],
                         transform=transform, frames=frames)


def test_canny_matches_cv2_reference(tmp_path: Path) -> None:
    """At the frames' own size (edit sizes are multiples of 64), canny equals cv2.Canny, as 3 channels."""
    rng = np.random.default_rng(0)
    frames = np.zeros((2, 64, 128, 3), np.uint8)
    frames[:, 16:48, 20:70] = rng.integers(100, 255, size=3)
    frames[1, 30:40, 10:90] = 30
    out = CannyAnnotator(CannyOptions(low_threshold=50, high_threshold=150)).annotate(_request(frames, tmp_path))
    assert out.shape == frames.shape and out.dtype == np.uint8
    for frame, edges in zip(frames, out):
        assert np.array_equal(edges[..., 0], cv2.Canny(frame, 50, 150))
        assert np.array_equal(edges[..., 0], edges[..., 2])


def test_canny_threshold_order_validated() -> None:
    """high < low is refused."""
    with pytest.raises(ValueError, match="high_threshold"):
        CannyAnnotator(CannyOptions(low_threshold=200, high_threshold=100))


def test_frames_annotator_selects_and_transforms(tmp_path: Path) -> None:
    """Precomputed control images follow the frame selection and the frames' scale-and-crop."""
    folder = tmp_path / "control"
    folder.mkdir()
    images = [np.full((48, 80, 3), 10 * i, np.uint8) for i in range(6)]
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:05d}.png"), image)
    transform = FrameTransform(source_height=48, source_width=80, height=64, width=64)
    request = _request(np.zeros((2, 64, 64, 3), np.uint8), tmp_path, indices=(1, 4), source_size=(48, 80),
                       transform=transform)
    annotator = FramesAnnotator(FramesOptions(dir="control"))
    annotator.check(request.spec)
    out = annotator.annotate(request)
    assert out.shape == (2, 64, 64, 3)
    assert (out[0] == 10).all() and (out[1] == 40).all()


def test_frames_annotator_errors(tmp_path: Path) -> None:
    """Missing folder, empty folder, too few images and a size mismatch are named."""
    spec = EditSpec(video=VideoSource(path="clip.mp4"), prompt="p", base_dir=tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        FramesAnnotator(FramesOptions(dir="nope")).check(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        FramesAnnotator(FramesOptions(dir="empty")).check(spec)
    (tmp_path / "few").mkdir()
    cv2.imwrite(str(tmp_path / "few" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    request = _request(np.zeros((2, 8, 8, 3), np.uint8), tmp_path, indices=(0, 3))
    with pytest.raises(InputError, match="has 1 images but the selection needs source frame 3"):
        FramesAnnotator(FramesOptions(dir="few")).annotate(request)
    request = _request(np.zeros((1, 16, 16, 3), np.uint8), tmp_path, indices=(0,), source_size=(16, 16))
    with pytest.raises(InputError, match="images are 8x8, the video is 16x16"):
        FramesAnnotator(FramesOptions(dir="few")).annotate(request)


@pytest.mark.parametrize(("cls", "options", "filenames"), [
    (DepthAnnotator, {}, ("dpt_hybrid-midas-501f0c75.pt",)),
    (OpenposeAnnotator, {}, ("body_pose_model.pth",)),  # hands and faces are not drawn: their models not needed
    (OpenposeAnnotator, {"hand": True}, ("body_pose_model.pth", "hand_pose_model.pth")),
    (OpenposeAnnotator, {"hand": True, "face": True}, ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
])
def test_weights_annotators_name_missing_files(tmp_path: Path, cls, options: dict, filenames: tuple[str, ...],
                                               monkeypatch) -> None:
    """Depth/openpose without their weights name every missing file and where it was looked for, before
    loading anything; openpose asks for the hand and face models only when it draws them."""
    spec = EditSpec(video=VideoSource(path="clip.mp4"), prompt="p", base_dir=tmp_path)
    make = OpenposeOptions if cls is OpenposeAnnotator else WeightsOptions
    (tmp_path / "ann").mkdir()
    with pytest.raises(CheckpointError) as error:
        cls(make(weights=str(tmp_path / "ann"), **options)).check(spec)
    said = str(error.value)
    for filename in ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth", "dpt_hybrid-midas-501f0c75.pt"):
        assert (f"{tmp_path / 'ann' / filename}" in said) == (filename in filenames), said
    assert f"put it in {tmp_path / 'ann'}" in said
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="looked for it at: the HF cache of lllyasviel/Annotators; pass weights"):
        cls(make(**options)).check(spec)
    for filename in filenames:
        (tmp_path / "ann" / filename).write_bytes(b"")
    cls(make(weights=str(tmp_path / "ann"), **options)).check(spec)  # present: passes the check


def test_weights_are_looked_for_in_order_per_file(tmp_path: Path, monkeypatch) -> None:
    """Each file comes from the first location holding it (folders relative to the job's folder, hub ids
    from the HF cache); a file in none is missing with every place looked at, in order."""
    from huggingface_hub import try_to_load_from_cache

    from stmod.backbones.annotators import find_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for folder, names in (("first", ("a.pt",)), ("second", ("a.pt", "b.pt"))):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    assert try_to_load_from_cache("someone/weights", "c.pt") is None
    lookup = find_weights(("a.pt", "b.pt", "c.pt"), ("./first", "someone/weights", str(tmp_path / "second")), tmp_path)
    assert lookup.found == {"a.pt": str(tmp_path / "first" / "a.pt"), "b.pt": str(tmp_path / "second" / "b.pt")}
    assert lookup.missing == {"c.pt": (str(tmp_path / "first" / "c.pt"), "the HF cache of someone/weights",
                                       str(tmp_path / "second" / "c.pt"))}
    assert lookup.folders == (tmp_path / "first", tmp_path / "second")


@pytest.mark.parametrize(("hand", "face"), [(False, False), (True, False), (True, True)])
def test_openpose_hand_and_face_reach_the_detector(tmp_path: Path, hand: bool, face: bool) -> None:
    """``hand`` / ``face`` (the official configs' keys) are what controlnet-aux is asked to draw."""
    from stmod.backbones.annotators import OpenposeOptions

    calls = []

    def detector(frame, **kwargs):
        calls.append(kwargs)
        return np.zeros(frame.shape, np.uint8)

    annotator = OpenposeAnnotator(OpenposeOptions(hand=hand, face=face))
    annotator._detector = detector  # stands in for the loaded OpenposeDetector (no weights here)
    out = annotator.annotate(_request(np.zeros((2, 16, 16, 3), np.uint8), tmp_path, indices=(0, 1)))
    assert out.shape == (2, 16, 16, 3)
    assert [(c["include_hand"], c["include_face"]) for c in calls] == [(hand, face)] * 2
