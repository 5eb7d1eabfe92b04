"""Combining the masks of several layout providers into the one layout of a job.

A job may take its regions from several providers (``sam2`` for two people, ``kmeans`` for the
background). :func:`split_regions` decides which provider supplies which region; :func:`compose`
joins their :class:`~stmod.core.types.LayoutMasks` in the job's region order and resolves pixels that
more than one region claims:

``later-wins`` (default)
    Precedence follows the order of the parts, then each part's region order: a pixel claimed by
    several regions keeps only the *last* of them. Use it to paint a fine region over a coarse one
    (list ``background`` first, the people after it).
``error``
    Any shared pixel is a :class:`~stmod.core.errors.LayoutError` naming both regions and the frame.
``keep``
    Masks are left as they are (overlaps allowed; what they mean is up to the modulation preset).

Both functions are pure: they neither read files nor modify their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from stmod.core.errors import LayoutError
from stmod.core.types import LayoutMasks

__all__ = ["OverlapRule", "split_regions", "compose", "empty_layout", "overlap_report"]

#: How :func:`compose` treats a pixel that several regions claim.
OverlapRule = Literal["later-wins", "error", "keep"]


def empty_layout(frames: int, height: int, width: int) -> LayoutMasks:
    """A layout with no regions: bool ``(frames, 0, height, width)``."""
    return LayoutMasks(masks=torch.zeros(frames, 0, height, width, dtype=torch.bool), names=())


def split_regions(
    job_regions: Sequence[str], claims: Sequence[tuple[str, Sequence[str] | None]]
) -> list[tuple[str, ...]]:
    """Which regions each layout entry supplies.

    :param job_regions: the job's region names, in order.
    :param claims: ``(provider name, regions it names or None)`` per layout entry, in job order. At most
        one entry may give ``None``; it supplies every region no other entry names.
    :returns: per entry, its regions in the job's order.
    :raises LayoutError: for an unknown, doubly claimed or unclaimed region, or two entries without names.
    """
    owner: dict[str, str] = {}
    open_entries = [name for name, regions in claims if regions is None]
    if len(open_entries) > 1:
        raise LayoutError(f"layout entries {open_entries[0]!r} and {open_entries[1]!r} both leave out 'regions'; "
                          "name the regions of all but one of them")
    for provider, regions in claims:
        for region in regions or ():
            if region not in job_regions:
                raise LayoutError(f"layout {provider!r} names region {region!r}, which is not a region of the job "
                                  f"(regions: {', '.join(job_regions)})", region=region)
            if region in owner:
                raise LayoutError(f"region {region!r} is claimed by both layout {owner[region]!r} and layout "
                                  f"{provider!r}", region=region)
            owner[region] = provider
    result = []
    for provider, regions in claims:
        wanted = set(regions) if regions is not None else {r for r in job_regions if r not in owner}
        result.append(tuple(r for r in job_regions if r in wanted))
    if not open_entries:
        unclaimed = [r for r in job_regions if r not in owner]
        if unclaimed:
            raise LayoutError(f"region {unclaimed[0]!r} is named by no layout entry (entries: "
                              f"{', '.join(name for name, _ in claims) or 'none'})", region=unclaimed[0])
    return result


def compose(
    parts: Sequence[tuple[str, LayoutMasks]],
    order: Sequence[str],
    *,
    overlap: OverlapRule = "later-wins",
    frame_indices: Sequence[int] | None = None,
) -> LayoutMasks:
    """One :class:`LayoutMasks` with the regions ``order`` from ``(provider name, masks)`` parts.

    :param parts: each provider's masks, bool ``(F, K_i, H, W)``; precedence for ``later-wins`` is the
        order of ``parts``, then each part's region order.
    :param order: the job's region names; every one must come from exactly one part.
    :param overlap: ``later-wins``, ``error`` or ``keep`` (see the module docs).
    :param frame_indices: source frame numbers of the ``F`` frames, only to name frames in errors.
    :raises LayoutError: for differing frame counts or sizes, a region missing or supplied twice, an
        overlap under ``error``, or a region that ``later-wins`` leaves empty in every frame.
    """
    if not parts:
        raise LayoutError("no layout provider supplied any masks")
    shape = parts[0][1].masks.shape
    names: list[str] = []
    source: dict[str, str] = {}
    for provider, masks in parts:
        if (masks.masks.shape[0], *masks.masks.shape[2:]) != (shape[0], *shape[2:]):
            raise LayoutError(f"layout {provider!r} gives masks of {masks.num_frames} frames at {masks.size}, but "
                              f"layout {parts[0][0]!r} gives {shape[0]} frames at {tuple(shape[2:])} (height, width)")
        for name in masks.names:
            if name in source:
                raise LayoutError(f"region {name!r} comes from both layout {source[name]!r} and layout {provider!r}",
                                  region=name)
            source[name] = provider
            names.append(name)
    missing = [n for n in order if n not in source]
    if missing:
        raise LayoutError(f"no layout supplied a mask for region {missing[0]!r} (masks exist for {', '.join(names)})",
                          region=missing[0])
    extra = [n for n in names if n not in order]
    if extra:
        raise LayoutError(f"layout {source[extra[0]]!r} supplied region {extra[0]!r}, which is not a region of the job",
                          region=extra[0])

    stack = torch.cat([m.masks for _, m in parts], dim=1)  # (F, K, H, W) in precedence order
    if not names:  # a layout entry in a job without regions: nothing to compose
        return LayoutMasks(masks=stack, names=())
    if overlap == "error":
        _raise_on_overlap(stack, names, source, frame_indices)
    elif overlap == "later-wins":
        stack = _later_wins(stack, names)
    elif overlap != "keep":
        raise ValueError(f"overlap must be 'later-wins', 'error' or 'keep', got {overlap!r}")
    return LayoutMasks(masks=stack[:, [names.index(n) for n in order]], names=tuple(order))


def _raise_on_overlap(stack: torch.Tensor, names: list[str], source: dict[str, str],
                      frame_indices: Sequence[int] | None) -> None:
    shared = stack.sum(dim=1) > 1
    if not shared.any():
        return
    f, y, x = (int(v) for v in shared.nonzero()[0])
    first, second = [names[k] for k in stack[f, :, y, x].nonzero().flatten()[:2].tolist()]
    frame = f"source frame {frame_indices[f]}" if frame_indices is not None else f"frame {f}"
    raise LayoutError(f"regions {first!r} (layout {source[first]!r}) and {second!r} (layout {source[second]!r}) "
                      f"overlap in {frame} at pixel (x={x}, y={y}); fix the masks or use overlap: later-wins",
                      region=first)


def _later_wins(stack: torch.Tensor, names: list[str]) -> torch.Tensor:
    out = stack.clone()
    taken = torch.zeros_like(stack[:, 0])
    for k in reversed(range(stack.shape[1])):
        out[:, k] &= ~taken
        taken |= stack[:, k]
        if stack[:, k].any() and not out[:, k].any():
            later = [names[j] for j in range(k + 1, stack.shape[1]) if (stack[:, k] & stack[:, j]).any()]
            raise LayoutError(f"region {names[k]!r} ({int(stack[:, k].sum())} pixels) is covered entirely by later "
                              f"region(s) {', '.join(later)}, which would remove it (overlap: later-wins); reorder the "
                              "regions or use overlap: keep", region=names[k])
    return out


def overlap_report(parts: Sequence[tuple[str, LayoutMasks]], layout: LayoutMasks, overlap: OverlapRule, *,
                   frame_indices: Sequence[int] | None = None) -> list[str]:
    """One line per region that the overlap rule shrank or removed from frames (``later-wins``), or per
    pair of regions that share pixels (``keep``), with the pixel counts over all frames.

    :param parts: the providers' masks as :func:`compose` received them (precedence order).
    :param layout: what :func:`compose` returned for them.
    :param frame_indices: source frame numbers of the frames, to name the frames a region left.
    """
    stack = torch.cat([m.masks for _, m in parts], dim=1)
    names = [n for _, m in parts for n in m.names]
    if overlap == "keep":
        return [f"overlap: regions {names[a]!r} and {names[b]!r} share {shared} pixels; both keep them "
                "(layout_overlap: keep)"
                for a in range(len(names)) for b in range(a + 1, len(names))
                if (shared := int((stack[:, a] & stack[:, b]).sum()))]
    lines = []
    for k, name in enumerate(names):
        before, after = stack[:, k], layout.masks[:, layout.names.index(name)]
        if int(after.sum()) == int(before.sum()):
            continue
        later = [names[j] for j in range(k + 1, len(names)) if (before & stack[:, j]).any()]
        gone = [frame_indices[f] if frame_indices is not None else f
                for f in range(before.shape[0]) if before[f].any() and not after[f].any()]
        removed = f"; gone from source frame(s) {', '.join(map(str, gone))}" if gone else ""
        lines.append(f"overlap: region {name!r} shrinks from {int(before.sum())} to {int(after.sum())} pixels "
                     f"({overlap}: later region(s) {', '.join(map(repr, later))} take the shared pixels{removed})")
    return lines
