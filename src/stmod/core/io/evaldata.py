"""What an edit leaves for ``stmod-run eval``: exact copies of its source, result and masks.

``result.mp4`` is H.264 (lossy) and ``masks.mp4`` a colour overlay, so neither gives exact metrics.
Every output folder therefore also holds ``eval/``:

``eval/source.mkv``
    the source frames as edited (selected, scaled, cropped), lossless FFV1;
``eval/result.mkv``
    the edited frames, lossless FFV1 (the same pixels as ``result.mp4`` before compression);
``eval/masks.npz``
    the composed region masks, bool ``(F, K, H, W)`` under ``masks`` and their names under ``names``.

:func:`read_eval_frames` returns them; output folders without ``eval/`` (written by older versions)
are evaluated from ``result.mp4`` and the job's source instead (see :mod:`stmod.plugins.eval.evaluate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stmod.core.types import LayoutMasks
from stmod.core.io.video import atomic_path, read_video, write_lossless

__all__ = ["EVAL_DIR", "write_eval_frames", "read_eval_frames", "read_eval_masks"]

#: Folder of an output folder that holds the exact frames and masks.
EVAL_DIR = "eval"


def write_eval_frames(folder: Path, *, source: np.ndarray, result: np.ndarray, layout: LayoutMasks,
                      fps: float) -> Path:
    """Write ``folder/eval/``: ``uint8 (F, H, W, 3)`` source and result, and the layout's masks."""
    out = Path(folder) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_lossless(out / "source.mkv", source, fps)
    write_lossless(out / "result.mkv", result, fps)
    with atomic_path(out / "masks.npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, masks=layout.masks.numpy(), names=np.array(layout.names, dtype=np.str_))
    return out


def read_eval_frames(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(source, result)`` as ``uint8 (F, H, W, 3)`` from ``folder/eval/``, or ``None`` when absent."""
    data = Path(folder) / EVAL_DIR
    if not ((data / "source.mkv").is_file() and (data / "result.mkv").is_file()):
        return None
    source, _ = read_video(data / "source.mkv", argument="eval/source.mkv")
    result, _ = read_video(data / "result.mkv", argument="eval/result.mkv")
    return source, result


def read_eval_masks(folder: Path) -> LayoutMasks | None:
    """The edit's region masks from ``folder/eval/masks.npz``, or ``None`` when absent."""
    path = Path(folder) / EVAL_DIR / "masks.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(n) for n in data["names"])
        return LayoutMasks(masks=torch.from_numpy(data["masks"].astype(bool)), names=names)
