"""Composing several providers' masks: region order, overlap rules, and region assignment."""

from __future__ import annotations

import pytest
import torch

from stmod.core.errors import LayoutError
from stmod.core.types import LayoutMasks
from stmod.core.pipeline.compose import compose, split_regions


def _masks(names: tuple[str, ...], boxes: list[tuple[int, int, int, int]], frames: int = 2) -> LayoutMasks:
    out = torch.zeros(frames, len(names), 8, 8, dtype=torch.bool)
    for k, (y0, y1, x0, x1) in enumerate(boxes):
        out[:, k, y0:y1, x0:x1] = True
    return LayoutMasks(masks=out, names=names)


def test_job_order_and_later_wins() -> None:
    """The result follows the job's order; on overlap the later part's region keeps the pixels."""
    background = _masks(("background",), [(0, 8, 0, 8)])
    people = _masks(("man", "woman"), [(0, 4, 0, 4), (4, 8, 4, 8)])
    out = compose([("kmeans", background), ("sam2", people)], ["man", "woman", "background"])
    assert out.names == ("man", "woman", "background")
    assert out.masks[:, 0, :4, :4].all() and not out.masks[:, 2, :4, :4].any()
    assert out.masks[:, 2].sum() == 2 * (64 - 16 - 16)
    assert not (out.masks.sum(dim=1) > 1).any()


def test_overlap_error_names_both_regions_and_frame() -> None:
    """With overlap: error, a shared pixel names both regions, their providers and the source frame."""
    a, b = _masks(("a",), [(0, 4, 0, 4)]), _masks(("b",), [(3, 6, 3, 6)])
    with pytest.raises(LayoutError, match=r"regions 'a' \(layout 'masks'\) and 'b' \(layout 'boxes'\) overlap in "
                                          r"source frame 10 at pixel \(x=3, y=3\)"):
        compose([("masks", a), ("boxes", b)], ["a", "b"], overlap="error", frame_indices=[10, 12])


def test_keep_leaves_overlaps() -> None:
    """overlap: keep returns the masks unchanged."""
    a, b = _masks(("a",), [(0, 4, 0, 4)]), _masks(("b",), [(3, 6, 3, 6)])
    out = compose([("masks", a), ("boxes", b)], ["b", "a"], overlap="keep")
    assert torch.equal(out.masks[:, 1], a.masks[:, 0]) and torch.equal(out.masks[:, 0], b.masks[:, 0])


def test_region_covered_entirely_is_error() -> None:
    """later-wins that empties a region names it and the region covering it."""
    parts = [("boxes", _masks(("small",), [(2, 4, 2, 4)])), ("kmeans", _masks(("big",), [(0, 8, 0, 8)]))]
    with pytest.raises(LayoutError, match=r"region 'small' \(8 pixels\) is covered entirely by later region\(s\) big"):
        compose(parts, ["small", "big"])


def test_missing_duplicate_and_mismatched_parts() -> None:
    """A region nobody supplies, one supplied twice, and parts of different sizes are errors."""
    a = _masks(("a",), [(0, 4, 0, 4)])
    with pytest.raises(LayoutError, match=r"no layout supplied a mask for region 'b'"):
        compose([("masks", a)], ["a", "b"])
    with pytest.raises(LayoutError, match=r"region 'a' comes from both layout 'masks' and layout 'boxes'"):
        compose([("masks", a), ("boxes", a)], ["a"])
    with pytest.raises(LayoutError, match=r"layout 'boxes' gives masks of 3 frames"):
        compose([("masks", a), ("boxes", _masks(("b",), [(0, 1, 0, 1)], frames=3))], ["a", "b"])


def test_split_regions() -> None:
    """Named regions go to their entry, the rest to the one entry without names; conflicts are errors."""
    job = ("man", "woman", "background")
    assert split_regions(job, [("sam2", ["woman", "man"]), ("kmeans", None)]) == [("man", "woman"), ("background",)]
    assert split_regions(job, [("masks", None)]) == [job]
    with pytest.raises(LayoutError, match=r"region 'man' is claimed by both layout 'a' and layout 'b'"):
        split_regions(job, [("a", ["man"]), ("b", ["man"]), ("c", None)])
    with pytest.raises(LayoutError, match=r"both leave out 'regions'"):
        split_regions(job, [("a", None), ("b", None)])
    with pytest.raises(LayoutError, match=r"region 'background' is named by no layout entry"):
        split_regions(job, [("a", ["man", "woman"])])
    with pytest.raises(LayoutError, match=r"names region 'cat', which is not a region of the job"):
        split_regions(job, [("a", ["cat"]), ("b", None)])


def test_no_regions_gives_empty_layout(scene, make_spec, request_for) -> None:
    """Asking a provider for no regions gives an empty (F, 0, H, W) layout."""
    from stmod.layouts.boxes import BoxesOptions, BoxLayoutProvider
    from stmod.layouts.masks import MaskFolderProvider, MasksOptions

    request = request_for(make_spec())
    for provider in (MaskFolderProvider(MasksOptions(dir="masks")),
                     BoxLayoutProvider(BoxesOptions(boxes={"red": {0: (0, 0, 8, 8)}}))):
        assert provider.layout(request, []).masks.shape == (6, 0, 64, 128)


def test_overlap_report_counts_pixels_and_frames() -> None:
    """later-wins: each shrunk region with its pixel counts and the source frames it left; keep: each
    pair of regions that share pixels; nothing for disjoint regions."""
    from stmod.core.pipeline.compose import overlap_report

    small = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    small[0, 0, 0:2, 0:2] = True  # frame 0: under 'big'; frame 1: beside it
    small[1, 0, 6:8, 6:8] = True
    parts = [("boxes", LayoutMasks(masks=small, names=("small",))),
             ("kmeans", _masks(("big", "far"), [(0, 4, 0, 4), (5, 6, 0, 2)]))]
    composed = compose(parts, ["small", "big", "far"])
    assert overlap_report(parts, composed, "later-wins", frame_indices=[10, 12]) == [
        "overlap: region 'small' shrinks from 8 to 4 pixels (later-wins: later region(s) 'big' take the shared "
        "pixels; gone from source frame(s) 10)"]
    kept = compose(parts, ["small", "big", "far"], overlap="keep")
    assert overlap_report(parts, kept, "keep") == [
        "overlap: regions 'small' and 'big' share 4 pixels; both keep them (layout_overlap: keep)"]
