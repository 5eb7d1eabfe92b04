"""Built-in ControlNet annotators: ``canny``, ``depth``, ``openpose`` (controlnet-aux) and ``frames``.

controlnet-aux is imported lazily (it takes seconds and needs torchvision): install it with
``pip install 'stmod[aux]'``. ``depth`` and ``openpose`` need annotator weights
(``dpt_hybrid-midas-501f0c75.pt``; ``body_pose_model.pth``, plus ``hand_pose_model.pth`` / ``facenet.pth``
only when hands / faces are drawn), looked for per file in the ``weights`` locations in order: folders,
and hub ids whose files are in the HF cache (or downloaded when the hub is reachable).
``frames`` reads precomputed control images from a folder instead (one image per source frame).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
from attrs import field, frozen, validators

from stmod.backbones.sd15 import hub_offline
from stmod.core.errors import CheckpointError, InputError, MissingDependencyError, MissingFilesError
from stmod.core.types import EditSpec, LayoutRequest, number

__all__ = ["CannyOptions", "CannyAnnotator", "canny_maps", "WeightsOptions", "WeightsLookup", "find_weights",
           "missing_weights", "DepthAnnotator", "OpenposeOptions", "OpenposeAnnotator", "FramesOptions",
           "FramesAnnotator"]

ANNOTATOR_REPO = "lllyasviel/Annotators"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _import_aux(component: str) -> ModuleType:
    try:
        with warnings.catch_warnings():  # timm/controlnet-aux deprecation chatter on import, not ours to fix
            warnings.simplefilter("ignore")
            import controlnet_aux
    except ImportError as exc:
        raise MissingDependencyError(component, ["controlnet-aux", "torchvision"], extra="aux") from exc
    return controlnet_aux


def _read_bgr(path: Path) -> np.ndarray:
    """``cv2.imread`` in colour; an unreadable image is an :class:`InputError` naming it (cv2 returns None)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("control.dir", str(path), "cannot be read as an image")
    return image


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


def _locations(value: object) -> tuple[str, ...]:
    """``weights``: one location or a list of them, each a non-empty string."""
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, (str, Path)) and str(v).strip()
                                                                    for v in items):
        raise ValueError(f"weights must be a folder or hub id, or a non-empty list of them, got {value!r}")
    return tuple(str(v) for v in items)


@frozen(kw_only=True)
class WeightsOptions:
    """Options of annotators that need weights."""

    #: Where the annotator files are: a folder (relative: to the job's folder), a hub id (its files read
    #: from the HF cache, or downloaded when the hub is reachable), or a list of them, looked in per file
    #: in this order.
    weights: tuple[str, ...] = field(default=(ANNOTATOR_REPO,), converter=_locations)
    #: Resolution the detector runs at (short side).
    detect_resolution: int = number(512, low=64, high=8192)


def _is_folder(location: str, base_dir: Path) -> bool:
    """A folder rather than a hub id: it looks like a path, or it exists (relative to the job's folder)."""
    return location.startswith((".", "/", "~")) or (base_dir / location).exists() or Path(location).expanduser().exists()


@frozen(kw_only=True)
class WeightsLookup:
    """Where each annotator file was found (:func:`find_weights`).

    :ivar found: file name → a local file, or ``hub:<id>`` for a file to download from that hub id.
    :ivar missing: file name → the places looked in, in order (a folder's file path, or "the HF cache of <id>").
    :ivar folders: the folders among the locations, resolved (where a missing file can be put).
    """

    found: dict[str, str]
    missing: dict[str, tuple[str, ...]]
    folders: tuple[Path, ...]


def find_weights(files: tuple[str, ...], locations: tuple[str, ...], base_dir: Path) -> WeightsLookup:
    """Look for each of ``files`` in ``locations`` in order: a folder holds it, or a hub id has it in the
    HF cache; a file in neither may be downloaded from the first hub id unless ``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import try_to_load_from_cache

    folders = tuple((base_dir / Path(loc).expanduser()) for loc in locations if _is_folder(loc, base_dir))
    hubs = [loc for loc in locations if not _is_folder(loc, base_dir)]
    found: dict[str, str] = {}
    missing: dict[str, tuple[str, ...]] = {}
    for name in files:
        looked: list[str] = []
        for location in locations:
            if _is_folder(location, base_dir):
                candidate = base_dir / Path(location).expanduser() / name
                looked.append(str(candidate))
                hit = str(candidate) if candidate.is_file() else None
            else:
                looked.append(f"the HF cache of {location}")
                cached = try_to_load_from_cache(location, name)
                hit = cached if isinstance(cached, str) else None
            if hit is not None:
                found[name] = hit
                break
        else:
            if hubs and not hub_offline():
                found[name] = f"hub:{hubs[0]}"
            else:
                missing[name] = tuple(looked)
    return WeightsLookup(found=found, missing=missing, folders=folders)


def _local_file(found: str, name: str) -> str:
    """A file :func:`find_weights` found, downloaded first when it lives on the hub only."""
    if not found.startswith("hub:"):
        return found
    from huggingface_hub import hf_hub_download

    return hf_hub_download(found[len("hub:"):], name)


class _WeightsAnnotator:
    component = ""

    def __init__(self, options: WeightsOptions) -> None:
        self.options = options
        self._detector: Callable[..., Any] | None = None  # a controlnet-aux detector, once loaded

    def needed_files(self) -> tuple[str, ...]:
        """The weight files this annotator loads with its options."""
        raise NotImplementedError

    def lookup(self, spec: EditSpec) -> WeightsLookup:
        """Where each needed file is, for the job ``spec`` (relative folders: its folder)."""
        return find_weights(self.needed_files(), self.options.weights, spec.base_dir)

    def check(self, spec: EditSpec) -> None:
        _import_aux(f"{self.component} annotator")
        MissingFilesError.raise_any(missing_weights(self.component, self.lookup(spec)))

    def _load(self, paths: dict[str, str]) -> Callable[..., Any]:
        """The detector, from a local file per needed file."""
        raise NotImplementedError

    def _drawing(self) -> dict[str, object]:
        """Extra keyword arguments of the detector call (what to draw)."""
        return {}

    def annotate(self, request: LayoutRequest) -> np.ndarray:
        if self._detector is None:
            lookup = self.lookup(request.spec)
            MissingFilesError.raise_any(missing_weights(self.component, lookup))
            self._detector = self._load({name: _local_file(where, name) for name, where in lookup.found.items()})
        detector = self._detector
        frames = np.asarray(request.frames)
        height, width = frames.shape[1:3]
        return np.stack([
            _fit(detector(frame, detect_resolution=self.options.detect_resolution,
                          image_resolution=min(height, width), output_type="np", **self._drawing()),
                 height, width)
            for frame in frames
        ])


def missing_weights(component: str, lookup: WeightsLookup) -> list[CheckpointError]:
    """One error per missing file, saying where it was looked for and where to put it."""
    fix = f"put it in {lookup.folders[0]}" if lookup.folders else "pass weights: <folder holding it>"
    offline = " (HF_HUB_OFFLINE=1: nothing is downloaded)" if hub_offline() else ""
    return [CheckpointError(name, f"{component} annotator weights not found{offline}; looked for it at: "
                                  f"{', '.join(places)}; {fix} (a file of the {ANNOTATOR_REPO} hub repository)",
                            kind="annotator")
            for name, places in lookup.missing.items()]


class DepthAnnotator(_WeightsAnnotator):
    """MiDaS (DPT-hybrid) depth through controlnet-aux."""

    component = "depth"

    def needed_files(self) -> tuple[str, ...]:
        return ("dpt_hybrid-midas-501f0c75.pt",)

    def _load(self, paths: dict[str, str]) -> Callable[..., Any]:
        # Adapted from controlnet-aux 0.0.10 midas/__init__.py MidasDetector.from_pretrained (a file, not a folder)
        aux = _import_aux("depth annotator")
        from controlnet_aux.midas.api import MiDaSInference

        return aux.MidasDetector(MiDaSInference(model_type="dpt_hybrid", model_path=paths[self.needed_files()[0]]))


@frozen(kw_only=True)
class OpenposeOptions(WeightsOptions):
    """Options of the ``openpose`` annotator: besides the body, draw hand and face keypoints (the official
    configs' ``hand`` / ``face``)."""

    hand: bool = field(default=False, validator=validators.instance_of(bool))
    face: bool = field(default=False, validator=validators.instance_of(bool))


class OpenposeAnnotator(_WeightsAnnotator):
    """OpenPose body (and, when drawn, hand and face) keypoints through controlnet-aux."""

    component = "openpose"
    options: OpenposeOptions

    def needed_files(self) -> tuple[str, ...]:
        """The body model, and the hand and face models only when they are drawn."""
        return ("body_pose_model.pth", *(("hand_pose_model.pth",) if self.options.hand else ()),
                *(("facenet.pth",) if self.options.face else ()))

    def _drawing(self) -> dict[str, object]:
        return {"include_hand": self.options.hand, "include_face": self.options.face}

    def _load(self, paths: dict[str, str]) -> Callable[..., Any]:
        # Adapted from controlnet-aux 0.0.10 open_pose/__init__.py OpenposeDetector.from_pretrained, which
        # loads all three models; the detector calls the hand and face models only when asked to draw them
        aux = _import_aux("openpose annotator")
        from controlnet_aux.open_pose.body import Body
        from controlnet_aux.open_pose.face import Face
        from controlnet_aux.open_pose.hand import Hand

        hand = Hand(paths["hand_pose_model.pth"]) if self.options.hand else None
        face = Face(paths["facenet.pth"]) if self.options.face else None
        return aux.OpenposeDetector(Body(paths["body_pose_model.pth"]), hand, face)


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
        images = [cv2.cvtColor(_read_bgr(files[i]), cv2.COLOR_BGR2RGB) for i in request.frame_indices]
        stack = np.stack(images)
        if stack.shape[1:3] != tuple(request.source_size):
            raise InputError("control.dir", str(files[0]), f"images are {stack.shape[2]}x{stack.shape[1]}, "
                                                          f"the video is {request.source_size[1]}x{request.source_size[0]}")
        return request.transform.frames(stack)
