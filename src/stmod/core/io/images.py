"""Pixels of one image file as they are: any depth, greyscale, palette or alpha, or a clear refusal.

``Image.convert("RGB")`` clips a 16-bit greyscale image (``I;16``) to 255, so a frame of mean 91 reads
as white; here 16-bit values are scaled to 8 bits (``v / 257``, exact at 0 and 65535), and a mode whose
scale stmod cannot know (32-bit float) is refused. A mask whose shape is drawn in its alpha channel
(transparent outside) is read by its alpha.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["regular_file_problem", "require_regular_file", "image_rgb", "mask_plane", "SIXTEEN_BIT_MODES"]

#: Pillow modes of integer images deeper than 8 bits (a 16-bit PNG opens as one of them).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def regular_file_problem(path: Path | str) -> str | None:
    """Why ``path`` is not a regular file stmod may read (a FIFO, a device, a socket: reading one can
    block for ever), or ``None``; checked with ``stat`` without opening it. A missing path is ``None``
    (the caller's own error names it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    what = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if (
        stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    return f"is {what}, not a regular file; stmod reads only files and folders (reading it could block): give a file"


def require_regular_file(path: Path | str) -> None:
    """Raise ``OSError`` (``EINVAL``, naming the problem) when :func:`regular_file_problem` finds one."""
    problem = regular_file_problem(path)
    if problem is not None:
        raise OSError(errno.EINVAL, problem, os.fspath(path))


def _deep_to_8bit(img: Image.Image) -> np.ndarray:
    """An ``I;16``/``I`` image as uint8 grey: values 0..65535 scaled by 1/257; others refused."""
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"a {img.mode} image with values {values.min()}..{values.max()}, outside 16 bits; "
                         "save it as an 8- or 16-bit image")
    return np.rint(values / 257.0).astype(np.uint8)


def image_rgb(img: Image.Image) -> np.ndarray:
    """uint8 ``(H, W, 3)`` of ``img`` as it looks: 16-bit grey scaled, palette expanded, alpha dropped
    (a frame's colours are what is edited).

    :raises ValueError: for a 32-bit float image (its value scale is unknown).
    """
    if img.mode in SIXTEEN_BIT_MODES:
        grey = _deep_to_8bit(img)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise ValueError("a 32-bit float image, whose value scale stmod cannot know; save it as an 8- or "
                         "16-bit image")
    return np.asarray(img.convert("RGB"))


def _alpha(img: Image.Image) -> np.ndarray | None:
    """The alpha channel of ``img`` when it has one that is not constant (else ``None``)."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return None
    alpha = np.asarray(img.convert("RGBA"))[..., 3]
    return alpha if alpha.min() != alpha.max() else None


def mask_plane(img: Image.Image) -> np.ndarray:
    """One value per pixel of a binary mask image, non-zero inside: the alpha channel when the shape is
    drawn there (transparent outside), the raw values of a 16-bit grey image, else the luminance (as
    ``cv2.IMREAD_GRAYSCALE`` reads it in the official code)."""
    alpha = _alpha(img)
    if alpha is not None:
        return alpha
    if img.mode in SIXTEEN_BIT_MODES:
        return np.asarray(img)
    if img.mode == "F":
        return np.nan_to_num(np.asarray(img), nan=0.0)
    return np.asarray(img.convert("L"))
