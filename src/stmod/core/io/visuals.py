"""Pictures for people: side-by-side clips, region overlays with a legend, attention heat maps, grids.

Everything here is pure numpy/OpenCV: inputs and outputs are ``uint8`` RGB arrays (``(H, W, 3)`` for
one picture, ``(F, H, W, 3)`` for a clip) and nothing is written to disk. Text is drawn with Pillow's
DejaVu Sans where the system has it (else Pillow's own font), so region names and prompts beyond ASCII
show (OpenCV's fonts are ASCII only).
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "region_colours",
    "draw_label",
    "legend",
    "caption_strip",
    "side_by_side",
    "mask_overlay",
    "heatmap_overlay",
    "tile",
    "colour_bar",
]

# Tableau 10: distinct on screen and for most colour-blind viewers; more regions get golden-ratio hues.
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], dtype=np.uint8)


def region_colours(count: int) -> np.ndarray:
    """``uint8 (count, 3)`` RGB colours, pairwise distinct, the same for the same region index every time."""
    colours = [tuple(c) for c in _PALETTE[:count]]
    for i in range(len(colours), count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.array(colours, dtype=np.uint8).reshape(count, 3)


def _font_px(width: int) -> int:
    """Small, legible text: about 1/40 of the picture width tall, within sane bounds (pixels)."""
    return int(np.clip(round(width / 40), 10, 22))


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Any:
    """DejaVu Sans when the system has it (Latin, Greek, Cyrillic, …; Pillow looks in the font folders),
    else Pillow's own scalable font (basic Latin). Cached: labels are drawn on every frame of a clip."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def _fit(text: str, width: int, font: Any) -> str:
    """``text`` shortened with ``…`` so that it is at most ``width`` pixels wide."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _draw_text(image: np.ndarray, items: Sequence[tuple[tuple[int, int], str, tuple[int, int, int]]], font: Any) -> np.ndarray:
    """``image`` with each ``(xy, text, colour)`` of ``items`` drawn (top-left anchored)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(picture)
    for xy, text, colour in items:
        draw.text(xy, text, fill=colour, font=font)
    return np.asarray(picture).copy()


def draw_label(
    image: np.ndarray, text: str, *, corner: tuple[int, int] = (4, 4), size: int | None = None
) -> np.ndarray:
    """A copy of ``uint8 (H, W, 3)`` ``image`` with ``text`` in white on a dark box at ``corner`` ``(x, y)``."""
    out = np.ascontiguousarray(image).copy()
    font = _font(size or _font_px(out.shape[1]))
    left, top, right, bottom = font.getbbox(text)
    x, y = corner
    cv2.rectangle(out, (x, y), (x + right + 6, y + bottom + 6), (0, 0, 0), thickness=-1)
    return _draw_text(out, [((x + 3, y + 3), text, (255, 255, 255))], font)


def legend(names: Sequence[str], colours: np.ndarray, width: int) -> np.ndarray:
    """A white strip ``uint8 (h, width, 3)`` with one colour swatch and label per region, wrapped in rows."""
    size = _font_px(width)
    font = _font(size)
    row_h, swatch = size + 8, size
    items, x, rows = [], 4, 0
    for name in names:
        name = _fit(name, width - swatch - 16, font)
        item_w = swatch + 4 + int(font.getlength(name)) + 12
        if x > 4 and x + item_w > width:
            x, rows = 4, rows + 1
        items.append((x, rows, name))
        x += item_w
    strip = np.full(((rows + 1) * row_h, width, 3), 255, dtype=np.uint8)
    for (x, row, _), colour in zip(items, colours):
        y = row * row_h + 4
        cv2.rectangle(strip, (x, y), (x + swatch, y + swatch), tuple(int(c) for c in colour), thickness=-1)
    return _draw_text(strip, [((x + swatch + 4, row * row_h + 3), name, (0, 0, 0)) for x, row, name in items], font)


def _resize_to_height(frames: np.ndarray, height: int) -> np.ndarray:
    if frames.shape[1] == height:
        return frames
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])


def _wrap(text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def caption_strip(text: str, width: int, *, size: int = 14) -> np.ndarray:
    """A white strip ``uint8 (h, width, 3)`` with ``text`` in black, wrapped to ``width`` (Pillow font)."""
    from PIL import Image, ImageDraw

    font = _font(size)
    lines = _wrap(text, font, width - 8)
    line_h = size + 4
    strip = Image.new("RGB", (width, line_h * len(lines) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * line_h), line, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def side_by_side(
    left: np.ndarray, right: np.ndarray, *, labels: tuple[str, str] = ("source", "edit"), gap: int = 4,
    captions: tuple[str, str] | None = None, min_height: int = 0,
) -> np.ndarray:
    """Two clips ``uint8 (F, H, W, 3)`` next to each other, each labelled: ``uint8 (F, H', W', 3)``.

    ``right`` is resized to ``left``'s height when they differ; frame counts must match. Clips lower
    than ``min_height`` are enlarged by a whole factor (nearest neighbour, so pixels stay visible);
    ``captions`` (e.g. the prompts) are written under each clip.
    """
    if left.shape[0] != right.shape[0]:
        raise ValueError(f"side_by_side needs equal frame counts, got {left.shape[0]} and {right.shape[0]}")
    right = _resize_to_height(right, left.shape[1])
    factor = -(-min_height // left.shape[1]) if left.shape[1] < min_height else 1
    if factor > 1:
        left, right = (f.repeat(factor, axis=1).repeat(factor, axis=2) for f in (left, right))
    spacer = np.full((left.shape[0], left.shape[1], gap, 3), 255, dtype=np.uint8)
    out = np.concatenate([left, spacer, right], axis=2)
    for i in range(out.shape[0]):
        out[i] = draw_label(out[i], labels[0], size=_font_px(left.shape[2]))
        out[i] = draw_label(out[i], labels[1], corner=(left.shape[2] + gap + 4, 4), size=_font_px(left.shape[2]))
    if captions is None:
        return out
    strips = [caption_strip(text, w) for text, w in zip(captions, (left.shape[2], right.shape[2]))]
    height = max(s.shape[0] for s in strips)
    strips = [np.pad(s, ((0, height - s.shape[0]), (0, 0), (0, 0)), constant_values=255) for s in strips]
    below = np.concatenate([strips[0], np.full((height, gap, 3), 255, np.uint8), strips[1]], axis=1)
    return np.concatenate([out, np.broadcast_to(below, (out.shape[0], *below.shape))], axis=1)


def _numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor; keeps torch an optional import here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _edge(masks: np.ndarray) -> np.ndarray:
    """Bool ``(F, H, W)``: mask pixels with a 4-neighbour outside the mask (the picture border counts as inside)."""
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    inner = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    return masks & ~inner


def mask_overlay(
    frames: np.ndarray, masks: Any, names: Sequence[str], *, alpha: float = 0.5, with_legend: bool = True,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Regions tinted over the frames, plus a legend strip below.

    :param frames: ``uint8 (F, H, W, 3)``.
    :param masks: bool ``(F, K, H, W)`` (numpy or torch, e.g. ``LayoutMasks.masks``); region ``k`` is
        tinted with ``region_colours(K)[k]`` at opacity ``alpha`` and outlined in it; overlaps blend.
    :param names: ``K`` region names for the legend.
    :param labels: ``K`` legend entries instead of the names (e.g. ``"left_man: iron man"``).
    :returns: ``uint8 (F, H + legend height, W, 3)`` (``(F, H, W, 3)`` without the legend).
    """
    masks = _numpy(masks).astype(bool)
    if masks.ndim != 4 or masks.shape[0] != frames.shape[0] or masks.shape[2:] != frames.shape[1:3]:
        raise ValueError(f"masks {masks.shape} do not fit frames {frames.shape} (need (F, K, H, W))")
    if len(names) != masks.shape[1]:
        raise ValueError(f"{len(names)} names for {masks.shape[1]} masks")
    colours = region_colours(len(names))
    out = frames.astype(np.float32)
    for k in range(masks.shape[1]):
        m = masks[:, k]
        out = np.where(m[..., None], (1 - alpha) * out + alpha * colours[k].astype(np.float32), out)
        out[_edge(m)] = colours[k]  # a solid outline keeps the region readable over similar colours
    result = out.round().astype(np.uint8)
    if not with_legend:
        return result
    strip = legend(list(labels) if labels is not None else names, colours, frames.shape[2])
    return np.concatenate([result, np.broadcast_to(strip, (frames.shape[0], *strip.shape))], axis=1)


def heatmap_overlay(
    image: np.ndarray, heat: Any, *, alpha: float = 0.5, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """A heat map (e.g. one token's cross-attention) over a picture, in the JET colour map.

    :param image: ``uint8 (H, W, 3)``.
    :param heat: float ``(h, w)`` at any resolution; resized bilinearly to ``(H, W)``; values are scaled
        from ``[vmin, vmax]`` (default: its own min and max) to ``[0, 1]``.
    :returns: ``uint8 (H, W, 3)``.
    """
    heat = _numpy(heat).astype(np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat must be (h, w), got {heat.shape}")
    lo = float(heat.min()) if vmin is None else vmin
    hi = float(heat.max()) if vmax is None else vmax
    norm = np.clip((heat - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(heat)
    norm = cv2.resize(norm, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.cvtColor(cv2.applyColorMap((norm * 255).round().astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return ((1 - alpha) * image.astype(np.float32) + alpha * colour).round().astype(np.uint8)


def tile(
    images: Sequence[np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    columns: int | None = None,
    pad: int = 4,
    background: int = 255,
) -> np.ndarray:
    """Images in a grid, row by row, each under its title: ``uint8 (rows·(h + t + pad) + pad, ..., 3)``.

    ``images`` are ``uint8 (H, W, 3)`` or ``(H, W)`` (grey) of any sizes; cells take the largest size
    and images sit at their top-left. ``columns`` defaults to about the square root of the count.
    """
    if not images:
        raise ValueError("tile needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    pics = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in map(np.asarray, images)]
    columns = columns or int(np.ceil(np.sqrt(len(pics))))
    rows = int(np.ceil(len(pics) / columns))
    cell_h, cell_w = max(p.shape[0] for p in pics), max(p.shape[1] for p in pics)
    size = _font_px(cell_w)
    font = _font(size)
    title_h = size + 8 if titles else 0
    grid = np.full((rows * (cell_h + title_h + pad) + pad, columns * (cell_w + pad) + pad, 3), background, np.uint8)
    texts = []
    for i, pic in enumerate(pics):
        y = pad + (i // columns) * (cell_h + title_h + pad)
        x = pad + (i % columns) * (cell_w + pad)
        if titles:
            texts.append(((x, y + 2), _fit(titles[i], cell_w, font), (0, 0, 0)))
        grid[y + title_h:y + title_h + pic.shape[0], x:x + pic.shape[1]] = pic.astype(np.uint8)
    return _draw_text(grid, texts, font) if texts else grid


def colour_bar(height: int, *, vmin: float, vmax: float, label: str = "", width: int = 16) -> np.ndarray:
    """A vertical JET colour bar ``uint8 (height, w, 3)`` for :func:`heatmap_overlay`, with its end values."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap((ramp * 255).round().astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    size = _font_px(8 * width)
    font = _font(size)
    texts = [f"{vmax:.2g}", f"{vmin:.2g}"] + ([label] if label else [])
    text_w = int(max(font.getlength(s) for s in texts)) + 6
    out = np.full((height, width + text_w, 3), 255, np.uint8)
    out[:, :width] = bar
    items = [((width + 3, 0), texts[0], (0, 0, 0)), ((width + 3, height - size - 3), texts[1], (0, 0, 0))]
    if label:
        items.append(((width + 3, height // 2 - size // 2), label, (0, 0, 0)))
    return _draw_text(out, items, font)
