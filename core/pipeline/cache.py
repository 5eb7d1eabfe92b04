"""The DDIM inversion cache: trajectories (and K-Means features) on disk, keyed by what made them.

The one reader of ``$STMOD_CACHE_DIR`` is :func:`cache_root`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

__all__ = ["CachedInversion", "InversionCache", "cache_root", "INVERSION_FORMAT"]

log = logging.getLogger(__name__)

#: Bump when the inversion algorithm changes, so stale cached trajectories are not reused.
INVERSION_FORMAT = 1


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
    settings. Files are written atomically; a corrupt file is ignored and overwritten.
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root() / "inversion"

    @staticmethod
    def key(*, frames_digest: str, settings: Mapping[str, Any]) -> str:
        payload = json.dumps({"format": INVERSION_FORMAT, "frames": frames_digest, **settings},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    @staticmethod
    def digest(array) -> str:
        """Content hash of a numpy array (shape, dtype and bytes)."""
        h = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
        h.update(memoryview(array).cast("B") if array.flags.c_contiguous else array.tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str) -> CachedInversion | None:
        """The entry stored under ``key`` (see :meth:`save`), or ``None``."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return CachedInversion(trajectory={int(k): v for k, v in data["trajectory"].items()},
                                   features=data.get("features"))
        except Exception as exc:  # unreadable: recompute rather than fail the edit
            log.warning("ignoring unreadable inversion cache %s: %s", path, exc)
            return None

    def save(self, key: str, trajectory: Mapping[int, torch.Tensor], *,
             features: Mapping[str, Any] | None = None) -> Path:
        """Store ``trajectory`` (and the inversion ``features`` state of K-Means layouts, if given)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=self.root)
        os.close(fd)
        try:
            data: dict[str, Any] = {"trajectory": {int(k): v.detach().cpu() for k, v in trajectory.items()}}
            if features is not None:
                data["features"] = dict(features)
            torch.save(data, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
