"""The DDIM inversion cache: trajectories (and K-Means features) on disk, keyed by what made them.

The one reader of ``$STMOD_CACHE_DIR`` is :func:`cache_root`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from stmod.core.io.ownership import atomic_path, clean_stale_temporaries, write_marker

__all__ = ["CachedInversion", "InversionCache", "cache_root", "INVERSION_FORMAT", "write_entry", "verified_payload"]

log = logging.getLogger(__name__)

#: Bump when the inversion algorithm changes, so stale cached trajectories are not reused.
INVERSION_FORMAT = 2  # 2: entries carry a checksum


@attrs.frozen(kw_only=True)
class CachedInversion:
    """One cache entry: the DDIM ``trajectory`` ``{timestep: latents (F, C, h, w)}`` on the CPU, and the
    inversion ``features`` state (:meth:`~stmod.core.features.InversionFeatures.to_state`) or ``None``."""

    trajectory: dict[int, torch.Tensor] = attrs.field(eq=False)
    features: Mapping[str, Any] | None = attrs.field(default=None, eq=False)


def cache_root() -> Path:
    """``$STMOD_CACHE_DIR`` or ``~/.cache/stmod``."""
    return Path(os.environ.get("STMOD_CACHE_DIR") or Path.home() / ".cache" / "stmod")


class InversionCache:
    """DDIM inversion trajectories on disk, keyed by everything that determines them.

    The key covers the clip content (a hash of the selected, resized frames, so frame selection and
    size are included), the model, the dtype, the number of steps, the source prompt and the control
    settings. Each entry is one file: a header line ``STMODINV <sha256 of the payload>`` and the
    ``torch.save`` payload. An entry that does not verify (flipped bytes, cut short, another format)
    is a miss with a warning, never a different result; it is recomputed and overwritten. Files are
    written atomically. A cache folder that cannot be written (read-only, full) costs a warning: the
    edit goes on without caching.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "inversion"

    @staticmethod
    def key(*, frames_digest: str, settings: Mapping[str, Any]) -> str:
        payload = json.dumps({"format": INVERSION_FORMAT, "frames": frames_digest, **settings},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @staticmethod
    def digest(array: np.ndarray) -> str:
        """Content hash of a numpy array (shape, dtype and bytes)."""
        h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
        h.update(array.data.cast("B") if array.flags.c_contiguous else array.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def store(self, key: str, name: str) -> Path | None:
        """A folder for extension ``name``'s files beside entry ``key`` (``<key>.d/<name>``), created and
        marked as stmod's; ``None`` (warned) when the cache folder cannot be written."""
        folder = self.root / f"{key}.d" / name
        try:
            self._prepare_root()
            for part in (folder.parent, folder):
                if not part.is_dir():
                    part.mkdir()
                    write_marker(part, "inversion cache store")
        except OSError as exc:
            log.warning("inversion cache: cannot create %s (%s); %s keeps its data in memory", folder,
                        exc.strerror or exc, name)
            return None
        return folder

    def load(self, key: str) -> CachedInversion | None:
        """The entry stored under ``key`` (see :meth:`save`), or ``None`` (absent, unreadable or damaged)."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("inversion cache: cannot read %s (%s); recomputing", path, exc.strerror or exc)
            return None
        try:
            data = torch.load(io.BytesIO(verified_payload(blob)), map_location="cpu", weights_only=True)
            trajectory = {int(k): v for k, v in data["trajectory"].items()}
            if not all(isinstance(v, torch.Tensor) for v in trajectory.values()):
                raise ValueError("the trajectory holds something other than tensors")
            return CachedInversion(trajectory=trajectory, features=data.get("features"))
        except Exception as exc:  # damaged or foreign: recompute rather than use it or fail the edit
            log.warning("inversion cache: ignoring damaged entry %s (%s); recomputing", path, exc)
            return None

    def save(self, key: str, trajectory: Mapping[int, torch.Tensor], *,
             features: Mapping[str, Any] | None = None) -> Path | None:
        """Store ``trajectory`` (and the inversion ``features`` state of K-Means layouts, if given).

        :returns: the entry's path, or ``None`` when the cache folder cannot be written (warned).
        """
        data: dict[str, Any] = {"trajectory": {int(k): v.detach().cpu() for k, v in trajectory.items()}}
        if features is not None:
            data["features"] = dict(features)
        buffer = io.BytesIO()
        torch.save(data, buffer)
        path = self.path(key)
        try:
            self._prepare_root()
            with atomic_path(path) as tmp:
                write_entry(tmp, buffer.getvalue())
        except (OSError, RuntimeError) as exc:  # read-only, full, over a size limit: the edit goes on
            log.warning("inversion cache: cannot write %s (%s); continuing without caching", path,
                        getattr(exc, "strerror", None) or exc)
            return None
        return path

    def _prepare_root(self) -> None:
        """Create (and mark) the cache folder; remove entries' temporaries that killed runs left."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            if not any(self.root.iterdir()):
                write_marker(self.root, "inversion cache")
        clean_stale_temporaries(self.root)


_MAGIC = b"STMODINV "


def write_entry(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` behind the header line that lets :func:`verified_payload` check it."""
    with open(path, "wb") as handle:
        handle.write(_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def verified_payload(blob: bytes) -> bytes:
    """The payload of an entry written by :func:`write_entry`.

    :raises ValueError: when the header is missing or the checksum does not match.
    """
    header, sep, payload = blob.partition(b"\n")
    if not sep or not header.startswith(_MAGIC):
        raise ValueError("not an stmod cache entry of this format")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(_MAGIC):]:
        raise ValueError("checksum mismatch: the file was changed or cut short")
    return payload
