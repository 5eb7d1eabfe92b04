"""Built-in ControlNet annotators: ``canny``, ``depth``, ``openpose`` (controlnet-aux) and ``frames``.

controlnet-aux is imported lazily (it takes seconds and needs torchvision): install it with
``pip install 'stmod[aux]'``. ``depth`` and ``openpose`` need annotator weights: a folder holding the
files (``dpt_hybrid-midas-501f0c75.pt``; ``body_pose_model.pth``) or a hub id already in the HF cache.
``frames`` reads precomputed control images from a folder instead (one image per source frame).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from attrs import field, frozen, validators

from stmod.backbones.sd15 import hub_offline
from stmod.core.errors import CheckpointError, InputError, MissingDependencyError
from stmod.core.types import EditSpec, LayoutRequest, number

__all__ = ["CannyOptions", "CannyAnnotator", "canny_maps", "WeightsOptions", "DepthAnnotator", "OpenposeOptions",
           "OpenposeAnnotator", "FramesOptions", "FramesAnnotator"]

ANNOTATOR_REPO = "lllyasviel/Annotators"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _import_aux(component: str):
    try:
        with warnings.catch_warnings():  # timm/controlnet-aux deprecation chatter on import, not ours to fix
            warnings.simplefilter("ignore")
            import controlnet_aux
    except ImportError as exc:
        raise MissingDependencyError(component, ["controlnet-aux", "torchvision"], extra="aux") from exc
    return controlnet_aux


def _fit(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Detector output (any size, 1 or 3 channels) → ``uint8 (height, width, 3)``."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return image.astype(np.uint8)


@frozen(kw_only=True)
class CannyOptions:
    """Options of the ``canny`` annotator (cv2.Canny thresholds)."""

    low_threshold: int = number(100, low=0, high=10_000)
    high_threshold: int = number(200, low=0, high=10_000)

    def __attrs_post_init__(self) -> None:  # here, not in the annotator: a job error, found by check
        if self.high_threshold < self.low_threshold:
            raise ValueError(f"high_threshold {self.high_threshold} must not be below low_threshold "
                             f"{self.low_threshold}")


class CannyAnnotator:
    """Canny edges through controlnet-aux's ``CannyDetector`` at the frames' own resolution."""

    def __init__(self, options: CannyOptions) -> None:
        self.options = options

    def check(self, spec: EditSpec) -> None:
        _import_aux("canny annotator")

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        return canny_maps(np.asarray(request.frames), self.options)


def canny_maps(frames: np.ndarray, options: CannyOptions | None = None) -> np.ndarray:
    """Canny edge maps uint8 ``(F, H, W, 3)`` of uint8 ``frames (F, H, W, 3)``, as the ``canny`` annotator
    computes them (the ``shapes`` model's ControlNet is trained on exactly these)."""
    options = options or CannyOptions()
    detector = _import_aux("canny annotator").CannyDetector()
    height, width = frames.shape[1:3]
    resolution = min(height, width)
    return np.stack([
        _fit(detector(frame, options.low_threshold, options.high_threshold,
                      detect_resolution=resolution, image_resolution=resolution, output_type="np"),
             height, width)
        for frame in frames
    ])


@frozen(kw_only=True)
class WeightsOptions:
    """Options of annotators that need weights."""

    #: Folder with the annotator files, or a hub id present in the HF cache.
    weights: str = ANNOTATOR_REPO
    #: Resolution the detector runs at (short side).
    detect_resolution: int = number(512, low=64, high=8192)


class _WeightsAnnotator:
    component = ""
    files: tuple[str, ...] = ()

    def __init__(self, options: WeightsOptions) -> None:
        self.options = options
        self._detector = None

    def check(self, spec: EditSpec) -> None:
        _import_aux(f"{self.component} annotator")
        location = Path(self.options.weights).expanduser()
        if location.is_dir() or self.options.weights.startswith((".", "/", "~")):
            missing = [f for f in self.files if not (location / f).exists()]
            if missing:
                raise CheckpointError(str(location), f"{self.component} annotator weights missing: {', '.join(missing)}"
                                                     f" (copy them from the {ANNOTATOR_REPO} hub repository)")
        elif hub_offline():
            from huggingface_hub import try_to_load_from_cache

            missing = [f for f in self.files if not isinstance(try_to_load_from_cache(self.options.weights, f), str)]
            if missing:
                raise CheckpointError(self.options.weights, f"{self.component} annotator weights {', '.join(missing)} "
                                                            "are not in the HF cache and HF_HUB_OFFLINE=1; pass "
                                                            "weights: <folder holding them>")

    def _load(self):
        raise NotImplementedError

    def _drawing(self) -> dict[str, object]:
        """Extra keyword arguments of the detector call (what to draw)."""
        return {}

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        if self._detector is None:
            self._detector = self._load()
        frames = np.asarray(request.frames)
        height, width = frames.shape[1:3]
        return np.stack([
            _fit(self._detector(frame, detect_resolution=self.options.detect_resolution,
                                image_resolution=min(height, width), output_type="np", **self._drawing()),
                 height, width)
            for frame in frames
        ])


class DepthAnnotator(_WeightsAnnotator):
    """MiDaS (DPT-hybrid) depth through controlnet-aux."""

    component = "depth"
    files = ("dpt_hybrid-midas-501f0c75.pt",)

    def _load(self):
        return _import_aux("depth annotator").MidasDetector.from_pretrained(self.options.weights)


@frozen(kw_only=True)
class OpenposeOptions(WeightsOptions):
    """Options of the ``openpose`` annotator: besides the body, draw hand and face keypoints (the official
    configs' ``hand`` / ``face``)."""

    hand: bool = field(default=False, validator=validators.instance_of(bool))
    face: bool = field(default=False, validator=validators.instance_of(bool))


class OpenposeAnnotator(_WeightsAnnotator):
    """OpenPose body (and optionally hand and face) keypoints through controlnet-aux."""

    component = "openpose"
    # controlnet-aux's OpenposeDetector.from_pretrained loads all three models, whatever is drawn
    files = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")

    def _drawing(self) -> dict[str, object]:
        return {"include_hand": self.options.hand, "include_face": self.options.face}

    def _load(self):
        return _import_aux("openpose annotator").OpenposeDetector.from_pretrained(self.options.weights)


@frozen(kw_only=True)
class FramesOptions:
    """Options of the ``frames`` annotator."""

    #: Folder of precomputed control images, one per source frame (sorted by name).
    dir: Path = field(converter=Path)


class FramesAnnotator:
    """Precomputed control images: selected and resized/cropped exactly like the video frames."""

    def __init__(self, options: FramesOptions) -> None:
        self.options = options

    def _folder(self, spec: EditSpec) -> Path:
        folder = self.options.dir.expanduser()
        return folder if folder.is_absolute() else spec.base_dir / folder

    def _files(self, spec: EditSpec) -> list[Path]:
        folder = self._folder(spec)
        if not folder.is_dir():
            raise InputError("control.dir", str(folder), "no such folder of control images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise InputError("control.dir", str(folder), "holds no images (.png/.jpg/.webp/.bmp)")
        return files

    def check(self, spec: EditSpec) -> None:
        self._files(spec)

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        files = self._files(request.spec)
        need = max(request.frame_indices) + 1
        if len(files) < need:
            raise InputError("control.dir", str(self._folder(request.spec)),
                             f"has {len(files)} images but the selection needs source frame {need - 1}")
        images = [cv2.cvtColor(cv2.imread(str(files[i]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                  for i in request.frame_indices]
        stack = np.stack(images)
        if stack.shape[1:3] != tuple(request.source_size):
            raise InputError("control.dir", str(files[0]), f"images are {stack.shape[2]}x{stack.shape[1]}, "
                                                          f"the video is {request.source_size[1]}x{request.source_size[0]}")
        return request.transform.frames(stack)
