"""Metrics of an edit in the shapes world, computed from the world's exact masks.

Pure numpy; frames are uint8 ``(F, H, W, 3)``, masks bool ``(F, H, W)``. Colours are read back
with :func:`stmod.backbones.shapes.world.colour_classes` (nearest palette colour, −1 for none).

* **attribute accuracy** of a region: the share of frames whose dominant palette colour inside the
  region is the local prompt's colour.
* **leakage** of a region: the share of pixels outside it — background, kept objects and regions with
  another target colour — that take its target colour in the result without having it in the source.
  A band of ``margin`` pixels around the region is left out: at 16×16 latents an edited object's
  outline moves by a pixel or two, which is not leakage.
* **background PSNR**: between source and result, outside every object of the scene (and the band).
* **shape IoU** of a region: per frame, the intersection over union of the pixels that carry the region's
  target colour (near the region: within ``reach`` pixels) and the region's exact mask in the source —
  a disc painted red in a ragged blob scores low even when red dominates inside it.
* **clean regions**: the share of a region's frames in which at least ``clean_share`` (90 %) of its pixels
  carry the target colour (the mask eroded by one pixel, whose anti-aliased rim reads no colour) — a
  region painted in patches of several colours is not clean even when its dominant colour is right.
* **flicker** of a region: the standard deviation over frames of the region's mean colour (0…255,
  averaged over RGB).
* **failure causes** of a region: each frame where the region shows is ``right`` (clean, kept in its
  outline, no leakage) or failed, put down to the first cause that holds, in this order — ``leak`` (its
  target colour appears newly away from it, farther than ``reach`` pixels, on more than 0.5 % of the pixels
  there), ``colour`` (the dominant colour inside is not the
  target), ``shape`` (the target colour spills out of the object's outline: more than a tenth of the
  region's area painted outside it, within ``reach``), ``patchy`` (the target colour covers only part of
  the region: it is not clean). :func:`failure_causes` counts them.
* **wrong colours**: the frames failed for ``colour``, by the colour shown instead — the region's own source
  colour (``unedited``), another region's target (``swapped``), the colour of the rest of its object
  (``object's``) or another (:func:`wrong_colours`); the swapped ones split into ``shared`` (the other
  region shows that colour too: one colour on both objects) and ``moved`` (it shows another) (:func:`swap_kinds`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion

from stmod.backbones.shapes.world import COLOURS, colour_classes

__all__ = ["attribute_accuracy", "leakage", "background_psnr", "flicker", "dilate", "shape_iou", "clean_frames",
           "CAUSES", "frame_causes", "failure_causes", "WRONG_COLOURS", "wrong_colours", "SWAP_KINDS", "swap_kinds",
           "dominant_colour"]

_NAMES = tuple(COLOURS)


def dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    """``mask (F, H, W)`` grown by ``margin`` pixels in each frame."""
    if margin <= 0:
        return mask.copy()
    structure = np.zeros((1, 3, 3), bool)
    structure[0] = True
    return binary_dilation(mask, structure=structure, iterations=margin)


def dominant_colour(frames: np.ndarray, mask: np.ndarray) -> str:
    """The palette colour most of the pixels inside ``mask`` (over all frames) read as."""
    inside = colour_classes(frames)[mask]
    inside = inside[inside >= 0]
    if not inside.size:
        raise ValueError("no pixel inside the mask reads as a palette colour")
    return _NAMES[int(np.bincount(inside, minlength=len(_NAMES)).argmax())]


def attribute_accuracy(frames: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """Share of frames whose dominant palette colour inside ``mask`` is ``colour`` (0 where none reads)."""
    classes = colour_classes(frames)
    target = _NAMES.index(colour)
    hits = 0
    for f in range(len(frames)):
        inside = classes[f][mask[f]]
        inside = inside[inside >= 0]
        if inside.size and np.bincount(inside, minlength=len(_NAMES)).argmax() == target:
            hits += 1
    return hits / len(frames)


def leakage(source: np.ndarray, result: np.ndarray, masks: Mapping[str, np.ndarray],
            colours: Mapping[str, str], *, margin: int = 2) -> dict[str, float]:
    """Per region: share of the pixels outside it (and outside same-colour regions) newly in its colour."""
    src, res = colour_classes(source), colour_classes(result)
    out = {}
    for name, mask in masks.items():
        target = _NAMES.index(colours[name])
        excluded = dilate(mask, margin)
        for other, other_mask in masks.items():
            if other != name and colours[other] == colours[name]:
                excluded |= dilate(other_mask, margin)
        outside = ~excluded
        leaked = outside & (res == target) & (src != target)
        out[name] = float(leaked.sum() / max(1, outside.sum()))
    return out


def background_psnr(source: np.ndarray, result: np.ndarray, objects: np.ndarray, *, margin: int = 2) -> float:
    """PSNR (dB) between source and result outside ``objects (F, H, W)`` grown by ``margin``."""
    keep = ~dilate(objects, margin)
    diff = source.astype(np.float64)[keep] - result.astype(np.float64)[keep]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def flicker(frames: np.ndarray, mask: np.ndarray) -> float:
    """Standard deviation over frames of the mean colour inside ``mask`` (0…255, mean over RGB)."""
    means = [frames[f][mask[f]].astype(np.float64).mean(axis=0) for f in range(len(frames)) if mask[f].any()]
    if len(means) < 2:
        return 0.0
    return float(np.std(np.stack(means), axis=0).mean())


def shape_iou(frames: np.ndarray, mask: np.ndarray, colour: str, *, reach: int = 8) -> float:
    """Mean over frames (where the region shows) of IoU(pixels of ``colour`` within ``reach`` px of
    ``mask``, ``mask``)."""
    painted = (colour_classes(frames) == _NAMES.index(colour)) & dilate(mask, reach)
    scores = [float((painted[f] & mask[f]).sum() / (painted[f] | mask[f]).sum())
              for f in range(len(frames)) if mask[f].any()]
    return float(np.mean(scores)) if scores else 0.0


def clean_frames(frames: np.ndarray, mask: np.ndarray, colour: str, *, clean_share: float = 0.9) -> float:
    """Share of frames (where the region shows) in which ≥ ``clean_share`` of the region's pixels (eroded by
    one pixel where that leaves any) carry ``colour``."""
    classes = colour_classes(frames)
    target = _NAMES.index(colour)
    clean = []
    for f in range(len(frames)):
        if not mask[f].any():
            continue
        inner = binary_erosion(mask[f])
        inner = inner if inner.any() else mask[f]
        clean.append(float((classes[f][inner] == target).mean()) >= clean_share)
    return float(np.mean(clean)) if clean else 0.0


#: The causes :func:`failure_causes` sorts a region's failed frames into, in the order they are tested.
CAUSES: tuple[str, ...] = ("leak", "colour", "shape", "patchy")


def frame_causes(source: np.ndarray, result: np.ndarray, mask: np.ndarray, colour: str, *,
                 exclude: np.ndarray | None = None, reach: int = 8, clean_share: float = 0.9,
                 leak_share: float = 0.005, spill_share: float = 0.1) -> list[str | None]:
    """Per frame, ``right`` or the first of :data:`CAUSES` that holds (see the module's docstring); ``None`` where
    the region does not show. ``exclude (F, H, W)``: pixels that do not count as leakage (other regions with the
    same target colour). Paint within ``reach`` pixels of the region is its shape's business (``shape``), paint
    beyond it is leakage."""
    src, res = colour_classes(source), colour_classes(result)
    target = _NAMES.index(colour)
    near = dilate(mask, reach)
    outside = ~near
    if exclude is not None:
        outside &= ~dilate(exclude, reach)
    causes: list[str | None] = []
    for f in range(len(result)):
        if not mask[f].any():
            causes.append(None)
            continue
        inner = binary_erosion(mask[f])
        inner = inner if inner.any() else mask[f]
        leaked = outside[f] & (res[f] == target) & (src[f] != target)
        inside = res[f][mask[f]]
        inside = inside[inside >= 0]
        if leaked.sum() > leak_share * max(1, outside[f].sum()):
            causes.append("leak")
        elif not inside.size or np.bincount(inside, minlength=len(_NAMES)).argmax() != target:
            causes.append("colour")
        elif (near[f] & ~mask[f] & (res[f] == target)).sum() > spill_share * mask[f].sum():
            causes.append("shape")
        elif float((res[f][inner] == target).mean()) < clean_share:
            causes.append("patchy")
        else:
            causes.append("right")
    return causes


def failure_causes(source: np.ndarray, result: np.ndarray, mask: np.ndarray, colour: str, **options: Any
                   ) -> dict[str, int]:
    """How many of a region's frames are ``right`` and how many failed, by the first cause that holds
    (:func:`frame_causes`, which takes the same ``options``)."""
    counts = dict.fromkeys(("right", *CAUSES), 0)
    for cause in frame_causes(source, result, mask, colour, **options):
        if cause is not None:
            counts[cause] += 1
    return counts


#: Which colour a region shows in the frames failed for ``colour`` (:func:`wrong_colours`), in the order tested.
WRONG_COLOURS: tuple[str, ...] = ("unedited", "swapped", "object's", "other")


def _dominant(classes: np.ndarray, where: np.ndarray) -> int | None:
    found = classes[where]
    found = found[found >= 0]
    return int(np.bincount(found, minlength=len(_NAMES)).argmax()) if found.size else None


def _wrong_colour_frames(source: np.ndarray, result: np.ndarray, mask: np.ndarray, colour: str, *,
                         others: Collection[str], rest: np.ndarray | None, **options: Any) -> list[tuple[int, str, int | None]]:
    """``(frame, kind, colour shown)`` for each frame :func:`frame_causes` fails for ``colour``."""
    src, res = colour_classes(source), colour_classes(result)
    swapped = {_NAMES.index(c) for c in others if c != colour}
    found: list[tuple[int, str, int | None]] = []
    for f, cause in enumerate(frame_causes(source, result, mask, colour, **options)):
        if cause != "colour":
            continue
        shown = _dominant(res[f], mask[f])
        if shown is not None and shown == _dominant(src[f], mask[f]):
            kind = "unedited"
        elif shown is not None and shown in swapped:
            kind = "swapped"
        elif shown is not None and rest is not None and rest[f].any() and shown == _dominant(src[f], rest[f]):
            kind = "object's"
        else:
            kind = "other"
        found.append((f, kind, shown))
    return found


def wrong_colours(source: np.ndarray, result: np.ndarray, mask: np.ndarray, colour: str, *,
                  others: Collection[str] = (), rest: np.ndarray | None = None, **options: Any) -> dict[str, int]:
    """The frames :func:`frame_causes` fails for ``colour`` (the dominant colour inside is not the target), by
    which colour it is instead — what tells the causes apart: ``unedited`` the region's own source colour (the
    edit did not take), ``swapped`` another region's target (``others``: the words reached the wrong object;
    :func:`swap_kinds` tells whether one colour took both objects), ``object's`` the
    source colour of the rest of its object (``rest (F, H, W)``: a part painted as its body, a body as its
    part — too few latent cells to tell them apart), ``other`` any other colour or none."""
    counts = dict.fromkeys(WRONG_COLOURS, 0)
    for _, kind, _ in _wrong_colour_frames(source, result, mask, colour, others=others, rest=rest, **options):
        counts[kind] += 1
    return counts


#: How the ``swapped`` frames of :func:`wrong_colours` split (:func:`swap_kinds`).
SWAP_KINDS: tuple[str, ...] = ("shared", "moved")


def swap_kinds(source: np.ndarray, result: np.ndarray, mask: np.ndarray, colour: str, *,
               others: Mapping[str, np.ndarray], rest: np.ndarray | None = None, **options: Any) -> dict[str, int]:
    """The frames :func:`wrong_colours` counts as ``swapped``, split by what the region whose target was shown
    shows in that frame (``others``: each other region's mask ``(F, H, W)`` by its target colour): ``shared``
    when it shows that colour too — one local prompt's colour painted on both objects, the other prompt lost —
    and ``moved`` when it shows another colour (the colour left its object for this one). Colours that traded
    places entirely are not here: this region's target shown far from it is leakage, the first cause."""
    res = colour_classes(result)
    counts = dict.fromkeys(SWAP_KINDS, 0)
    for f, kind, shown in _wrong_colour_frames(source, result, mask, colour, others=list(others), rest=rest,
                                               **options):
        if kind != "swapped" or shown is None:
            continue
        owner = others[_NAMES[shown]]
        counts["shared" if _dominant(res[f], owner[f]) == shown else "moved"] += 1
    return counts
