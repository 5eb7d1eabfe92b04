"""Video in and out: probe, read, select and transform frames; write mp4 (H.264), GIF and PNG folders.

Reading accepts a video file (mp4/mov/webm/mkv/avi, decoded by PyAV), a GIF (Pillow, frames composited)
or a folder of frames (png/jpg/bmp/webp/tif, in natural order: ``frame2`` before ``frame10``). Frames
come back as ``uint8 (F, H, W, 3)`` RGB, already turned upright when the file carries a rotation.

Geometry: :class:`FrameTransform` scales a source to *cover* the edit size and centre-crops it. Frames
are resampled bilinearly with antialiasing, masks with nearest-exact sampling; both use half-pixel
centres, so a mask stays aligned with its frame whatever the aspect ratio.

Writing is atomic: everything goes to a hidden temporary name in the target's folder and is moved into
place with :func:`os.replace`, so a failure never leaves a partial file and never damages an older one
(:func:`~stmod.core.io.ownership.atomic_path`, which also says which folders may be replaced).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import av
import numpy as np
import torch
import torch.nn.functional as F
from attrs import frozen
from PIL import Image, ImageSequence

from stmod.core.errors import InputError
from stmod.core.io.images import image_rgb, regular_file_problem, require_regular_file
from stmod.core.io.ownership import atomic_folder, atomic_path
from stmod.core.types import VideoSource

if TYPE_CHECKING:
    from av.video.stream import VideoStream

__all__ = [
    "IMAGE_SUFFIXES", "FOLDER_FPS", "VideoInfo", "ClipPlan", "plan_clip", "SourceClip", "FrameTransform", "natural_key",
    "IMAGE_ERRORS", "open_image", "list_frame_files", "probe_video", "read_video", "select_frames", "load_video",
    "sound_track_note",    "atomic_path", "write_video", "write_mp4", "write_gif", "write_frames", "write_lossless",
]

log = logging.getLogger(__name__)

#: Image files that count as frames in a frames folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
#: Frame rate assumed for a folder of frames, which stores none.
FOLDER_FPS = 8.0
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
#: What Pillow raises for unreadable or broken files, and for a header declaring more pixels than its
#: limit (a decompression bomb: refused before the pixels are decoded; see :func:`open_image`).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)
_IMAGE_ERRORS = IMAGE_ERRORS
_CHUNK = 8  # frames resized per torch call: bounds float32 memory for long, large clips


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders digit runs by value: ``f2.png`` < ``f10.png``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t)


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@frozen(kw_only=True)
class VideoInfo:
    """What :func:`probe_video` learns cheaply: frame count, upright size in pixels and frame rate."""

    path: Path
    kind: Literal["video", "gif", "frames"]
    frames: int
    height: int
    width: int
    fps: float
    #: the file has a sound track (stmod edits frames only: its outputs are silent)
    audio: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the source frames."""
        return self.height, self.width


def list_frame_files(folder: Path, *, argument: str = "video.path") -> list[Path]:
    """Image files of a frames folder in natural order (hidden files and other suffixes are skipped)."""
    files = [p for p in Path(folder).iterdir()
             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()]
    if not files:
        raise InputError(argument, str(folder), f"the folder holds no frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=lambda p: natural_key(p.name))


def open_image(path: Path | str) -> Image.Image:
    """``Image.open`` (header only) that refuses a header declaring more pixels than Pillow's limit
    instead of decoding it (Pillow only warns below twice its limit): raises one of :data:`IMAGE_ERRORS`."""
    require_regular_file(path)  # a FIFO or device named like an image would block the read
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _image_size(path: Path, argument: str) -> tuple[int, int]:
    """``(height, width)`` from the image header only."""
    try:
        with open_image(path) as img:
            return img.height, img.width
    except _IMAGE_ERRORS as exc:
        raise InputError(argument, str(path), f"cannot be read as an image ({_short(exc)})") from exc


@contextmanager
def _open_av(path: Path, argument: str) -> Iterator[Any]:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(argument, str(path), f"cannot be read as a video ({_short(exc)})") from exc
    try:
        if not container.streams.video:
            raise InputError(argument, str(path), "has no video stream")
        yield container
    finally:
        container.close()


def _upright(frame: Any) -> np.ndarray:
    """RGB array of a PyAV frame, rotated as its display matrix says (phone videos)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4  # the matrix rotates counter-clockwise
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def _decode(path: Path, argument: str, stop: int | None) -> Iterator[np.ndarray]:
    """Upright RGB frames of a video file in presentation order, up to index ``stop`` (inclusive)."""
    with _open_av(path, argument) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(container.decode(stream)):
                yield _upright(frame)
                if stop is not None and i >= stop:
                    return
        except av.FFmpegError as exc:
            raise InputError(argument, str(path), f"cannot be decoded ({_short(exc)})") from exc


def probe_video(path: Path | str, *, argument: str = "video.path") -> VideoInfo:
    """Frame count, size and fps of a clip, decoding at most one frame.

    :raises InputError: naming ``argument`` for a missing, unreadable or empty clip.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(argument, str(path), "no such file or folder")
    problem = regular_file_problem(path)
    if problem is not None:  # before any open: reading a FIFO or a device blocks
        raise InputError(argument, str(path), problem)
    if path.is_dir():
        files = list_frame_files(path, argument=argument)
        height, width = _image_size(files[0], argument)
        return VideoInfo(path=path, kind="frames", frames=len(files), height=height, width=width, fps=FOLDER_FPS)
    if path.suffix.lower() == ".gif":
        try:
            with open_image(path) as img:
                # Pillow's GIF image (what open() returns for one) has n_frames; its base Image type does not
                count, duration = img.n_frames, img.info.get("duration") or 0  # type: ignore[attr-defined]
                return VideoInfo(path=path, kind="gif", frames=count, height=img.height, width=img.width,
                                 fps=1000.0 / duration if duration else FOLDER_FPS)
        except _IMAGE_ERRORS as exc:
            raise InputError(argument, str(path), f"cannot be read as a GIF ({_short(exc)})") from exc
    with _open_av(path, argument) as container:
        stream = container.streams.video[0]
        audio = bool(container.streams.audio)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        count = stream.frames
        if count <= 0:  # webm and some mkv store no count: count packets, which needs no decoding
            count = sum(1 for packet in container.demux(stream) if packet.size)
    first = next(_decode(path, argument, stop=0), None)
    if first is None or count <= 0:
        raise InputError(argument, str(path), "holds no video frames")
    return VideoInfo(path=path, kind="video", frames=count, height=first.shape[0], width=first.shape[1],
                     fps=float(rate) if rate else FOLDER_FPS, audio=audio)


def _folder_frames(info: VideoInfo, wanted: set[int], argument: str) -> Iterator[tuple[int, np.ndarray]]:
    for i, file in enumerate(list_frame_files(info.path, argument=argument)):
        if i in wanted:
            try:
                with open_image(file) as img:
                    yield i, image_rgb(img)
            except _IMAGE_ERRORS as exc:
                raise InputError(argument, str(file), f"cannot be read as an image ({_short(exc)})") from exc


def _gif_frames(info: VideoInfo, stop: int, argument: str) -> Iterator[tuple[int, np.ndarray]]:
    try:
        with open_image(info.path) as img:
            for i, frame in enumerate(ImageSequence.Iterator(img)):
                yield i, image_rgb(frame)
                if i >= stop:
                    return
    except _IMAGE_ERRORS as exc:
        raise InputError(argument, str(info.path), f"cannot be read as a GIF ({_short(exc)})") from exc


def read_video(
    path: Path | str,
    indices: Sequence[int] | None = None,
    *,
    transform: FrameTransform | None = None,
    argument: str = "video.path",
    info: VideoInfo | None = None,
) -> tuple[np.ndarray, float]:
    """Frames ``indices`` (source frame numbers; all when ``None``) as ``uint8 (F, H, W, 3)`` RGB, and the fps.

    Decoding stops after the last wanted frame. With ``transform`` each frame is scaled and cropped as
    soon as it is decoded, so only edit-sized frames are held. A folder of frames reports
    :data:`FOLDER_FPS`.

    ``info`` is the clip's :func:`probe_video`, when the caller has it already.

    :raises InputError: for a missing or unreadable clip, a frame of another size, or an index past the end.
    """
    info = info or probe_video(path, argument=argument)
    wanted = list(range(info.frames)) if indices is None else [int(i) for i in indices]
    beyond = [i for i in wanted if not 0 <= i < info.frames]
    if beyond or not wanted:
        problem = f"frame {beyond[0]} was asked for" if beyond else "no frames were asked for"
        raise InputError(argument, str(path), f"{problem}; the clip has {info.frames} frames")
    stop, keep, got = max(wanted), set(wanted), {}
    if info.kind == "frames":
        source = _folder_frames(info, keep, argument)
    elif info.kind == "gif":
        source = _gif_frames(info, stop, argument)
    else:
        source = enumerate(_decode(info.path, argument, stop))
    for i, frame in source:
        if i in keep:
            if frame.shape[:2] != info.size:
                raise InputError(argument, str(path), f"frame {i} is {frame.shape[1]}x{frame.shape[0]} but frame 0 is "
                                 f"{info.width}x{info.height} (width x height); all frames must have one size")
            got[i] = transform.frames(frame[None])[0] if transform is not None else frame
    if len(got) < len(keep):
        raise InputError(argument, str(path), f"frame {stop} was asked for but fewer frames could be decoded "
                         f"(the header claims {info.frames})")
    return np.stack([got[i] for i in wanted]), info.fps


def select_frames(source: VideoSource, available: int) -> tuple[int, ...]:
    """Source frame indices the job selects from a clip of ``available`` frames.

    :raises InputError: naming ``video.path`` when the selection is empty or shorter than ``frames``.
    """
    picked = source.indices(available)
    how = f"start={source.start}, every={source.every}"
    if not picked:
        raise InputError("video.path", str(source.path), f"{how} selects no frames: the clip has {available} "
                         f"frames (0 to {available - 1})")
    if source.frames is not None and len(picked) < source.frames:
        raise InputError("video.path", str(source.path), f"frames={source.frames} asked for with {how}, but the clip "
                         f"has {available} frames, so only {len(picked)} can be selected")
    return tuple(picked)


@frozen(kw_only=True)
class FrameTransform:
    """Scale a ``source_height x source_width`` picture to cover ``height x width``, then centre-crop.

    ``frames(x)`` resamples ``uint8 (F, Hs, Ws, 3)`` bilinearly with antialiasing; ``masks(m)`` (also
    ``transform(m)``, the :class:`~stmod.core.types.LayoutRequest` contract) resamples ``(..., Hs, Ws)``
    masks of any dtype, numpy or torch, by nearest-exact sampling. Both use the same half-pixel geometry.
    """

    source_height: int
    source_width: int
    height: int
    width: int

    @classmethod
    def for_source(cls, source: VideoSource, info: VideoInfo) -> FrameTransform:
        """The transform from ``info``'s frames to the edit size ``source.size`` (``(width, height)``)."""
        return cls(source_height=info.height, source_width=info.width, height=source.size[1], width=source.size[0])

    @property
    def resized(self) -> tuple[int, int]:
        """``(height, width)`` after scaling, before the crop (each at least the edit size)."""
        scale = max(self.width / self.source_width, self.height / self.source_height)
        return (max(self.height, round(self.source_height * scale)),
                max(self.width, round(self.source_width * scale)))

    @property
    def offset(self) -> tuple[int, int]:
        """``(top, left)`` of the crop inside the resized picture."""
        rh, rw = self.resized
        return (rh - self.height) // 2, (rw - self.width) // 2

    @property
    def identity(self) -> bool:
        return (self.source_height, self.source_width) == (self.height, self.width)

    def point_to_edit(self, x: float, y: float, *, normalized: bool = False) -> tuple[float, float]:
        """A source pixel position ``(x, y)`` (or fractions of the source size) in edit-frame pixels."""
        if normalized:
            x, y = x * self.source_width, y * self.source_height
        (rh, rw), (top, left) = self.resized, self.offset
        return x * rw / self.source_width - left, y * rh / self.source_height - top

    def _check(self, shape: tuple[int, ...], what: str) -> None:
        if tuple(shape) != (self.source_height, self.source_width):
            raise ValueError(f"{what} are {shape[1]}x{shape[0]} but the transform expects "
                             f"{self.source_width}x{self.source_height} (width x height)")

    def frames(self, frames: np.ndarray) -> np.ndarray:
        """``uint8 (F, Hs, Ws, 3)`` → ``uint8 (F, H, W, 3)``: bilinear, antialiased, centre-cropped."""
        self._check(frames.shape[1:3], "frames")
        if self.identity:
            return frames.copy()
        (rh, rw), (top, left) = self.resized, self.offset
        out = np.empty((frames.shape[0], self.height, self.width, 3), dtype=np.uint8)
        for start in range(0, frames.shape[0], _CHUNK):
            chunk = torch.from_numpy(np.array(frames[start:start + _CHUNK])).permute(0, 3, 1, 2).float()
            big = F.interpolate(chunk, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            crop = big[:, :, top:top + self.height, left:left + self.width]
            out[start:start + _CHUNK] = crop.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out

    def _sample_indices(self) -> tuple[np.ndarray, np.ndarray]:
        (rh, rw), (top, left) = self.resized, self.offset
        rows = np.floor((top + np.arange(self.height) + 0.5) * self.source_height / rh).astype(np.int64)
        cols = np.floor((left + np.arange(self.width) + 0.5) * self.source_width / rw).astype(np.int64)
        return np.minimum(rows, self.source_height - 1), np.minimum(cols, self.source_width - 1)

    def masks(self, masks: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``(..., Hs, Ws)`` masks → ``(..., H, W)``, same type and dtype, nearest-exact sampling."""
        self._check(tuple(masks.shape[-2:]), "masks")
        rows, cols = self._sample_indices()
        if isinstance(masks, torch.Tensor):
            r, c = torch.from_numpy(rows).to(masks.device), torch.from_numpy(cols).to(masks.device)
            return masks.index_select(-2, r).index_select(-1, c)
        return masks[..., rows, :][..., cols]

    __call__ = masks


@frozen(kw_only=True)
class SourceClip:
    """The job's frames, ready to edit, and what layout providers need to follow them.

    ``frames`` is ``uint8 (F, H, W, 3)`` at the edit size; ``indices`` are their source frame numbers;
    ``fps`` is the source rate divided by ``every`` (so the edit lasts as long as the source span).
    """

    frames: np.ndarray
    indices: tuple[int, ...]
    fps: float
    info: VideoInfo
    transform: FrameTransform

    @property
    def source_size(self) -> tuple[int, int]:
        """``(height, width)`` of the source frames (``LayoutRequest.source_size``)."""
        return self.info.size


@frozen(kw_only=True)
class ClipPlan:
    """A job's clip as probed once (:func:`plan_clip`): the source's facts, the frames the job selects
    and how they are scaled and cropped. Checks and the reading of the frames share it."""

    info: VideoInfo
    indices: tuple[int, ...]
    transform: FrameTransform


def plan_clip(source: VideoSource) -> ClipPlan:
    """Probe the clip of a job and select its frames, without decoding any.

    :raises InputError: naming ``video.path`` for every problem with the clip or the selection.
    """
    info = probe_video(source.path)
    transform = FrameTransform.for_source(source, info)
    scale = max(transform.width / info.width, transform.height / info.height)
    if scale > 1.01:  # upscaling invents no detail and costs (scale²)× the time: the user should know
        log.warning("video.size %dx%d upscales the %dx%d source %.1fx; to edit at the source's size pass --size keep "
                    "(or video.size: [%d, %d])", transform.width, transform.height, info.width, info.height, scale,
                    max(64, info.width // 64 * 64), max(64, info.height // 64 * 64))
    return ClipPlan(info=info, indices=tuple(select_frames(source, info.frames)), transform=transform)


def sound_track_note(info: VideoInfo) -> str | None:
    """The line that says a clip's sound track is not edited (``None`` for a clip without one)."""
    if not info.audio:
        return None
    return f"{info.path} has a sound track; stmod edits the frames only, so the edited videos are silent"


def load_video(source: VideoSource, plan: ClipPlan | None = None) -> SourceClip:
    """Read and transform the clip of a job (``plan``: its :func:`plan_clip`, probed now if not given).

    :raises InputError: naming ``video.path`` for every problem with the clip or the selection.
    """
    plan = plan or plan_clip(source)
    info, indices, transform = plan.info, plan.indices, plan.transform
    if info.audio:  # check's and edit's summaries say it once (sound_track_note); every read need not
        log.info(sound_track_note(info))
    frames, fps = read_video(source.path, indices, transform=transform, info=info)
    log.info("read %d frames of %s (%dx%d) -> %dx%d", len(indices), source.path, info.width, info.height,
             transform.width, transform.height)
    return SourceClip(frames=frames, indices=indices, fps=fps / source.every, info=info, transform=transform)


# --------------------------------------------------------------------------------------------- writing


def _checked(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Frames one by one, each checked to be ``uint8 (H, W, 3)`` of one size (a bug otherwise)."""
    first: tuple[int, ...] | None = None
    for i, frame in enumerate(frames):
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frame {i} must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        first = first or frame.shape
        if frame.shape != first:
            raise ValueError(f"frame {i} is {frame.shape}, frame 0 is {first}: all frames must have one size")
        yield frame


def _encode(path: Path, frames: np.ndarray | Iterable[np.ndarray], fps: float, *, fmt: str, codec: str,
            pix_fmt: str, options: dict[str, str], even: bool, metadata: Mapping[str, str] | None = None) -> Path:
    """Encode frames with PyAV into ``path`` atomically; ``even`` pads odd sizes by one edge pixel."""
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format=fmt)
        container.metadata.update(metadata or {})
        try:
            stream: VideoStream | None = None
            for frame in _checked(frames):
                if stream is None:  # codec is a video codec: add_stream makes a VideoStream
                    rate = Fraction(fps).limit_denominator(1001)
                    stream = cast("VideoStream", container.add_stream(codec, rate=rate))
                    height, width = frame.shape[:2]
                    stream.height, stream.width = (height + height % 2, width + width % 2) if even else (height, width)
                    stream.pix_fmt = pix_fmt
                    # PyAV types Stream.options dict[str, object] (its codec context's: dict[str, str]); str values
                    stream.options = options  # type: ignore[assignment]
                pad = ((0, stream.height - frame.shape[0]), (0, stream.width - frame.shape[1]), (0, 0))
                image = np.pad(frame, pad, mode="edge") if any(p[1] for p in pad) else frame
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError("no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return path


def write_mp4(path: Path | str, frames: np.ndarray | Iterable[np.ndarray], fps: float, *, crf: int = 18,
              metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``uint8 (F, H, W, 3)`` RGB frames as H.264 (yuv420p) mp4/mov, atomically.

    Odd sizes are padded by one edge pixel (yuv420p needs even sizes). ``metadata`` are container
    tags (``title``, ``comment``, ...; players and ``ffprobe`` show them). Returns ``path``.
    """
    path = Path(path)
    # bframes=0: with B-frames, the AVX-512 macroblock-tree code of the x264 bundled with PyAV 18.1 reads
    # uninitialised memory for some sizes (e.g. 64 pixels wide), so one set of frames gave different
    # files from one write to the next. Without B-frames it is reproducible; at 512x512 the files are
    # about 2.5% larger, of the same PSNR and encoded as fast.
    return _encode(path, frames, fps, fmt=_CONTAINERS.get(path.suffix.lower(), "mp4"), codec="libx264",
                   pix_fmt="yuv420p", options={"crf": str(crf), "x264-params": "bframes=0"}, even=True,
                   metadata=metadata)


def write_gif(path: Path | str, frames: np.ndarray | Iterable[np.ndarray], fps: float) -> Path:
    """Write frames as a looping GIF with Pillow, atomically.

    GIF stores delays in 1/100 s, so fps other than divisors of 100 come back approximately; Pillow
    merges identical consecutive frames (adding their delays). Returns ``path``.
    """
    path = Path(path)
    images = [Image.fromarray(frame) for frame in _checked(frames)]
    if not images:
        raise ValueError("no frames to write")
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000.0 / fps), loop=0)
    return path


def write_frames(folder: Path | str, frames: np.ndarray | Iterable[np.ndarray], *, pattern: str = "{:05d}.png") -> Path:
    """Write frames as PNG files ``00000.png, 00001.png, ...`` into ``folder``, atomically. Returns ``folder``."""
    folder = Path(folder)
    with atomic_folder(folder, kind="frames") as tmp:
        count = 0
        for i, frame in enumerate(_checked(frames)):
            Image.fromarray(frame).save(tmp / pattern.format(i), format="PNG")
            count = i + 1
        if not count:
            raise ValueError("no frames to write")
    return folder


def write_lossless(path: Path | str, frames: np.ndarray | Iterable[np.ndarray], fps: float) -> Path:
    """Write ``uint8 (F, H, W, 3)`` RGB frames losslessly (FFV1 in Matroska, ``.mkv``), atomically.

    :func:`read_video` gives back exactly the same bytes (what ``stmod-run eval`` relies on); the file
    is a few times smaller than PNG frames and any ffmpeg-based player reads it. Returns ``path``.
    """
    # bgr0: RGB without chroma subsampling, so the round trip is exact
    return _encode(Path(path), frames, fps, fmt="matroska", codec="ffv1", pix_fmt="bgr0", options={}, even=False)


def write_video(path: Path | str, frames: np.ndarray | Iterable[np.ndarray], fps: float) -> Path:
    """Write by suffix: ``.mp4``/``.m4v``/``.mov`` → H.264, ``.mkv`` → lossless FFV1, ``.gif`` → GIF,
    no suffix → PNG folder."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _CONTAINERS:
        return write_mp4(path, frames, fps)
    if suffix == ".mkv":
        return write_lossless(path, frames, fps)
    if suffix == ".gif":
        return write_gif(path, frames, fps)
    if not suffix:
        return write_frames(path, frames)
    raise ValueError(f"cannot write {path.name}: use .mp4, .mov, .mkv, .gif or a folder name without suffix")
