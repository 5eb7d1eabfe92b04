"""Pictures for people: side by side, region overlays with legends, heat maps, grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmod.core.io.visuals import colour_bar, heatmap_overlay, legend, mask_overlay, region_colours, side_by_side, tile


def test_region_colours_distinct() -> None:
    """Colours are pairwise distinct, also past the fixed palette, and stable."""
    colours = region_colours(25)
    assert colours.shape == (25, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 25
    assert np.array_equal(region_colours(3), colours[:3])


def test_side_by_side_shape_and_labels() -> None:
    """Two clips side by side: widths add up with the gap, and labels are drawn."""
    left = np.full((3, 64, 96, 3), 128, np.uint8)
    right = np.full((3, 32, 48, 3), 128, np.uint8)  # resized to the left's height
    out = side_by_side(left, right, gap=4)
    assert out.shape == (3, 64, 96 + 4 + 96, 3) and out.dtype == np.uint8
    assert (out[:, :16, :40] != 128).any()  # the "source" label
    with pytest.raises(ValueError, match="equal frame counts"):
        side_by_side(left, right[:2])


def test_mask_overlay_colours_and_legend() -> None:
    """Each region is tinted in its own colour, and the legend strip below shows each colour."""
    frames = np.full((2, 64, 128, 3), 100, np.uint8)
    masks = torch.zeros(2, 3, 64, 128, dtype=torch.bool)
    masks[:, 0, :20, :20] = True
    masks[:, 1, 30:50, 30:50] = True
    masks[:, 2, 40:60, 100:120] = True
    out = mask_overlay(frames, masks, ["man", "dog", "background"])
    assert out.dtype == np.uint8 and out.shape[0] == 2 and out.shape[2:] == (128, 3) and out.shape[1] > 64
    tints = [tuple(out[0, 10, 10]), tuple(out[0, 40, 40]), tuple(out[0, 50, 110])]
    assert len(set(tints)) == 3 and tuple(out[0, 25, 70]) == (100, 100, 100)
    strip = out[0, 64:]
    for colour in region_colours(3):
        assert (strip == colour).all(axis=-1).any()
    plain = mask_overlay(frames, masks.numpy(), ["man", "dog", "background"], with_legend=False)
    assert plain.shape == frames.shape


def test_legend_wraps_rows() -> None:
    """Many long names wrap into more rows of a strip of the given width."""
    one = legend(["a"], region_colours(1), 128)
    many = legend([f"region-number-{i}" for i in range(8)], region_colours(8), 128)
    assert one.shape[1] == many.shape[1] == 128 and many.shape[0] > one.shape[0]


def test_heatmap_overlay_hot_spot() -> None:
    """A low-resolution heat map is upsampled over the picture: hot is red, cold is blue."""
    image = np.full((64, 64, 3), 128, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:2, :2] = 1.0
    out = heatmap_overlay(image, torch.from_numpy(heat), alpha=0.6)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[2, 2, 0] > out[2, 2, 2] and out[60, 60, 2] > out[60, 60, 0]


def test_tile_grid() -> None:
    """Images of different sizes tile into a grid with room for titles."""
    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((16, 48, 3), np.uint8), np.zeros((32, 32), np.uint8)]
    grid = tile(images, titles=["a", "b", "a long title that will be shortened"], columns=2, pad=4)
    assert grid.dtype == np.uint8 and grid.ndim == 3
    assert grid.shape[1] == 2 * (48 + 4) + 4 and grid.shape[0] > 2 * (32 + 4)
    assert tile(images).shape[1] == grid.shape[1]


def test_side_by_side_enlarges_small_clips_and_writes_captions() -> None:
    """Small clips are enlarged by a whole factor; the captions (any script) go in a strip below."""
    left = np.full((2, 64, 64, 3), 128, np.uint8)
    out = side_by_side(left, left, gap=4, captions=("a white disc", "un disque rouge: é"), min_height=256)
    assert out.shape[0] == 2 and out.shape[2] == 256 + 4 + 256 and out.shape[1] > 256
    strip = out[0, 256:]
    assert (strip < 100).any() and (strip == 255).mean() > 0.5  # dark text on white
    assert np.array_equal(out[0, 100:110, 100], np.full((10, 3), 128, np.uint8))


def test_legend_shows_the_labels_given_and_text_beyond_ascii() -> None:
    """``labels`` replace the names in the legend; accented names are drawn, not replaced by one box glyph."""
    frames = np.zeros((1, 32, 200, 3), np.uint8)
    masks = np.ones((1, 1, 32, 200), bool)
    by_name = mask_overlay(frames, masks, ["left"])[0, 32:]
    by_label = mask_overlay(frames, masks, ["left"], labels=["left: iron man"])[0, 32:]
    assert by_label.shape == by_name.shape and (by_label != by_name).any()
    inked = [int((legend([text], region_colours(1), 200) < 128).sum()) for text in ("e", "é", "ë")]
    assert inked[1] > inked[0] and inked[1] != inked[2]  # the accents add ink, and differ from each other


def test_colour_bar_runs_hot_to_cold_with_its_values() -> None:
    bar = colour_bar(100, vmin=0.0, vmax=0.25, label="attention")
    assert bar.shape[0] == 100 and bar.shape[1] > 16
    top, bottom = bar[2, :16].astype(int).mean(axis=0), bar[-3, :16].astype(int).mean(axis=0)
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red (high) on top, blue (low) at the bottom
    assert (bar[:, 16:] < 128).any()  # the end values are written beside it
