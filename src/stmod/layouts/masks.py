"""The ``masks`` layout provider: region masks from PNG files on disk.

Three layouts of files are understood (option ``format``):

``folders`` (default) — SAM-Track / VideoGrain: one sub-folder of ``dir`` per region, named like the
    region (or as the ``folders`` option maps it), holding one binary PNG per frame. A pixel belongs to
    the region when its grey value is above 0 (the official ``_read_mask``).
``webui`` — SAM-Track WebUI output: one folder per region as above (``<region>`` or SAM-Track's
    ``<region>_masks``), holding palette PNGs. They are read as the official
    ``process_webui_mask.py`` does: grey luminance thresholded at 0.5, i.e. every non-black pixel.
``davis`` — DAVIS / multi-object SAM-Track: ``dir`` itself holds one indexed (palette or grey) PNG per
    frame, whose pixel value is an instance id; the ``ids`` option maps ids to region names (several ids
    may map to one region; id 0 is background unless mapped).

**Which file is which frame.** If every PNG name in a folder is an integer (``00012.png``), the number
plus ``index_offset`` is the *absolute source frame index*, exactly as the official code names masks;
otherwise files are taken in natural sort order and file k (counting from 0) is source frame
``k + index_offset``. Only the job's selected frames are read, and they go through the same
scale-and-crop as the frames (``LayoutRequest.transform``), so masks are drawn on the *source* frames
at source size.

**Empty masks.** A region may be empty in some frames (it left the picture); that is logged. A region
empty in *every* selected frame after the crop is a :class:`~stmod.core.errors.LayoutError`.
Regions are matched by name, never by position.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from attrs import field, frozen, validators
from PIL import Image

from stmod.core.errors import LayoutError
from stmod.core.types import EditSpec, LayoutMasks, LayoutRequest, number
from stmod.core.io.images import mask_plane
from stmod.core.io.video import IMAGE_ERRORS, ClipPlan, FrameTransform, natural_key, open_image
from stmod.core.pipeline.compose import empty_layout

__all__ = ["MasksOptions", "MaskFolderProvider", "frame_files"]

log = logging.getLogger(__name__)

MaskFormat = Literal["folders", "webui", "davis"]
_IMAGE_ERRORS = IMAGE_ERRORS  # unreadable, broken, or a header declaring billions of pixels


def _str_map(value: Mapping[Any, Any] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of region name to folder name, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def _id_map(value: Mapping[Any, Any] | None) -> dict[int, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"ids must map instance ids to region names, e.g. {{1: man}}, got {value!r}")
    out = {}
    for key, name in value.items():
        try:
            ident = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"ids: key {key!r} is not an integer instance id") from None
        if not 0 <= ident <= 65535 or isinstance(key, bool):
            raise ValueError(f"ids: instance id {key!r} must be an integer from 0 to 65535")
        out[ident] = str(name)
    return out


@frozen(kw_only=True)
class MasksOptions:
    """Options of the ``masks`` layout provider (relative ``dir`` is taken from the job file's folder)."""

    #: Folder with the masks: region sub-folders (``folders``/``webui``) or per-frame PNGs (``davis``).
    dir: Path = field(converter=Path)
    #: Layout of the files: ``folders``, ``webui`` or ``davis`` (see the module docs).
    format: MaskFormat = field(default="folders", validator=validators.in_(("folders", "webui", "davis")))
    #: ``{region: sub-folder}`` where a folder is not named like its region (``folders``/``webui``).
    folders: Mapping[str, str] = field(factory=dict, converter=_str_map)
    #: ``{instance id: region}`` (``davis`` only; required there).
    ids: Mapping[int, str] = field(factory=dict, converter=_id_map)
    #: Added to a file's number (or sorted position) to get its source frame index.
    index_offset: int = number(0, low=-10**7, high=10**7)

    def __attrs_post_init__(self) -> None:
        if self.format == "davis":
            if self.folders:
                raise ValueError("folders applies to format 'folders' or 'webui'; format 'davis' uses ids")
            if not self.ids:
                raise ValueError("format 'davis' needs ids mapping instance ids to region names, e.g. ids: {1: man}")
        elif self.ids:
            raise ValueError(f"ids applies to format 'davis' only (format is {self.format!r})")


def frame_files(folder: Path, index_offset: int = 0) -> dict[int, Path]:
    """``{source frame index: PNG file}`` of a mask folder, by the naming rule in the module docs.

    :raises LayoutError: when the folder holds no PNG or two files have the same number.
    """
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise LayoutError(f"mask folder {folder} holds no PNG files")
    if all(p.stem.isdigit() for p in files):
        found: dict[int, Path] = {}
        for p in files:
            index = int(p.stem) + index_offset
            if index in found:
                raise LayoutError(f"mask files {found[index].name} and {p.name} in {folder} are both frame {index}")
            found[index] = p
        return found
    return {k + index_offset: p for k, p in enumerate(files)}


def _missing(files: Mapping[int, Path], index: int, offset: int) -> str:
    """What was expected for source frame ``index`` and what the folder has, for error messages."""
    stems = [p.stem for p in files.values()]
    if all(stem.isdigit() for stem in stems):
        expected = f"expected {index - offset:0{len(stems[0])}d}.png"
    else:
        expected = f"expected file number {index - offset + 1} in natural sort order"
    return f"{expected}; it has {len(files)} masks, for source frames between {min(files)} and {max(files)}"


class _Source:
    """Where one region's mask of one frame comes from: a PNG and, for indexed PNGs, which ids count."""

    __slots__ = ("path", "ids")

    def __init__(self, path: Path, ids: tuple[int, ...] | None) -> None:
        self.path, self.ids = path, ids


class MaskFolderProvider:
    """The ``masks`` layout provider (see the module docs for formats and rules)."""

    feature_request = None  # needs no model

    def __init__(self, options: MasksOptions) -> None:
        self.options = options

    # ------------------------------------------------------------------------------------ planning
    def _root(self, spec: EditSpec) -> Path:
        root = self.options.dir if self.options.dir.is_absolute() else spec.base_dir / self.options.dir
        if not root.is_dir():
            raise LayoutError(f"mask folder {root} does not exist (layout 'masks', option dir)")
        return root

    def _check_names(self, spec: EditSpec) -> None:
        named = list(self.options.folders) + list(self.options.ids.values())
        for name in named:
            if name not in spec.region_names:
                raise LayoutError(f"layout 'masks' options name region {name!r}, which is not a region of the job "
                                  f"(regions: {', '.join(spec.region_names) or 'none'})", region=name)

    def _region_folder(self, root: Path, region: str) -> Path:
        name = self.options.folders.get(region, region)
        candidates = [root / name] + ([root / f"{name}_masks"] if self.options.format == "webui" else [])
        for folder in candidates:
            if folder.is_dir():
                return folder
        existing = sorted((p.name for p in root.iterdir() if p.is_dir()), key=natural_key)
        hint = f"; folders in {root}: {', '.join(existing)}" if existing else f"; {root} has no sub-folders"
        raise LayoutError(f"region {region!r} has no mask folder {candidates[0]}{hint}", region=region)

    def _plan(self, spec: EditSpec, regions: Sequence[str], indices: Sequence[int]) -> dict[str, list[_Source]]:
        """``{region: [source of each selected frame]}``; raises on missing folders, files or ids."""
        self._check_names(spec)
        root = self._root(spec)
        plan: dict[str, list[_Source]] = {}
        if self.options.format == "davis":
            files = frame_files(root, self.options.index_offset)
            missing = [i for i in indices if i not in files]
            if missing:
                raise LayoutError(f"no mask for source frame {missing[0]} in {root} "
                                  f"({_missing(files, missing[0], self.options.index_offset)})")
            for region in regions:
                ids = tuple(sorted(i for i, name in self.options.ids.items() if name == region))
                if not ids:
                    raise LayoutError(f"region {region!r} has no instance id in option ids "
                                      f"({dict(self.options.ids)})", region=region)
                plan[region] = [_Source(files[i], ids) for i in indices]
            return plan
        for region in regions:
            folder = self._region_folder(root, region)
            files = frame_files(folder, self.options.index_offset)
            missing = [i for i in indices if i not in files]
            if missing:
                raise LayoutError(f"region {region!r}: no mask for source frame {missing[0]} in {folder} "
                                  f"({_missing(files, missing[0], self.options.index_offset)})", region=region)
            plan[region] = [_Source(files[i], None) for i in indices]
        return plan

    # ------------------------------------------------------------------------------------- reading
    def _open(self, path: Path, region: str, size: tuple[int, int]) -> Image.Image:
        """The PNG at ``path`` (header read), checked against the source size ``(height, width)``."""
        try:
            img = open_image(path)
        except _IMAGE_ERRORS as exc:
            raise LayoutError(f"region {region!r}: {path} cannot be read as a PNG ({exc})", region=region) from exc
        if (img.height, img.width) != tuple(size):
            img.close()
            raise LayoutError(
                f"region {region!r}: {path} is {img.width}x{img.height} but the source frames are {size[1]}x{size[0]} "
                "(width x height); draw masks on the source frames, stmod scales and crops them like the frames",
                region=region)
        if self.options.format == "davis" and img.mode not in ("P", "L", "I", "I;16", "1"):
            img.close()
            raise LayoutError(f"region {region!r}: {path} is a {img.mode} image; DAVIS masks must be indexed "
                              "(palette) or grey PNGs whose pixel value is an instance id", region=region)
        return img

    def _read(self, source: _Source, region: str, size: tuple[int, int], cache: dict[Path, np.ndarray]) -> np.ndarray:
        """Bool ``(H_src, W_src)`` mask of one region in one frame (indexed files are cached: regions share them)."""
        raw = cache.get(source.path)
        if raw is None:
            img = self._open(source.path, region, size)
            try:
                with img:
                    # Indexed files keep their ids; binary and WebUI files become grey luminance, as
                    # cv2.IMREAD_GRAYSCALE does in the official code (palette colours → grey), or their
                    # alpha when the shape is drawn there (see stmod.core.io.images.mask_plane)
                    raw = np.asarray(img) if source.ids is not None else mask_plane(img)
            except _IMAGE_ERRORS as exc:
                raise LayoutError(f"region {region!r}: {source.path} cannot be read as a PNG ({exc})",
                                  region=region) from exc
            if source.ids is not None:
                cache[source.path] = raw
        return np.isin(raw, source.ids) if source.ids is not None else raw > 0

    def _empty_error(self, region: str, sources: list[_Source], seen_in_source: bool, transform: Any) -> LayoutError:
        where = sources[0].path.parent
        if seen_in_source:
            size = f"{getattr(transform, 'width', '?')}x{getattr(transform, 'height', '?')}"
            return LayoutError(f"region {region!r}: its mask ({where}) lies outside the centre crop to {size} "
                               "in every selected frame", region=region)
        return LayoutError(f"region {region!r}: its mask ({where}) is empty in every selected frame", region=region)

    # ------------------------------------------------------------------------------------ protocol
    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Validate folders, files, sizes and non-emptiness for ``regions`` without loading any model.

        Reads PNG headers for every selected frame, and pixels only until each region shows up.
        """
        info, indices, transform = clip.info, clip.indices, clip.transform
        plan = self._plan(spec, regions, indices)
        opened: set[Path] = set()
        for region, sources in plan.items():
            for source in sources:
                if source.path not in opened:
                    self._open(source.path, region, info.size).close()
                    opened.add(source.path)
        cache: dict[Path, np.ndarray] = {}
        for region, sources in plan.items():
            seen = False
            for source in sources:
                mask = self._read(source, region, info.size, cache)
                seen = seen or bool(mask.any())
                if transform(mask[None])[0].any():
                    break
            else:
                raise self._empty_error(region, sources, seen, transform)

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Bool ``(F, K, H, W)`` masks for ``regions`` in that order, at the edit size."""
        if not regions:
            return empty_layout(len(request.frame_indices), *np.shape(request.frames)[1:3])
        plan = self._plan(request.spec, regions, request.frame_indices)
        cache: dict[Path, np.ndarray] = {}
        stacks = []
        for region, sources in plan.items():
            source_masks = np.stack([self._read(s, region, request.source_size, cache) for s in sources])
            masks = np.asarray(request.transform(source_masks), dtype=bool)
            per_frame = masks.reshape(masks.shape[0], -1).any(axis=1)
            if not per_frame.any():
                raise self._empty_error(region, sources, bool(source_masks.any()), request.transform)
            if not per_frame.all():
                empty = [request.frame_indices[i] for i in np.flatnonzero(~per_frame)]
                log.info("region %r is empty in %d of %d frames (source frames %s)", region, len(empty),
                         per_frame.size, empty)
            stacks.append(masks)
        return LayoutMasks(masks=torch.from_numpy(np.stack(stacks, axis=1)), names=tuple(regions))
