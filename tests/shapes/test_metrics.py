"""Shape IoU and clean regions: what the eye sees of an edited region, from the world's exact masks."""

from __future__ import annotations

import numpy as np

from stmod.backbones.shapes import metrics, world

RED, BLUE, GREEN = (np.array(world.COLOURS[c], np.uint8) for c in ("red", "blue", "green"))


def _disc(size: int = 64, radius: int = 14, centre: tuple[int, int] = (32, 32)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _frames(mask: np.ndarray, colour: np.ndarray, frames: int = 3) -> tuple[np.ndarray, np.ndarray]:
    image = np.broadcast_to(GREEN, (*mask.shape, 3)).copy()
    image[mask] = colour
    return np.stack([image] * frames), np.stack([mask] * frames)


def test_a_disc_painted_exactly_scores_one_and_a_blob_scores_less() -> None:
    disc = _disc()
    painted, masks = _frames(disc, RED)
    assert metrics.shape_iou(painted, masks, "red") == 1.0
    assert metrics.clean_frames(painted, masks, "red") == 1.0
    # red everywhere dominant inside the disc, but spilling into a square around it: a lost shape
    blob, _ = _frames(np.abs(np.mgrid[:64, :64] - 32).max(axis=0) <= 18, RED)
    iou = metrics.shape_iou(blob, masks, "red")
    assert metrics.attribute_accuracy(blob, masks, "red") == 1.0
    expected = disc.sum() / ((np.abs(np.mgrid[:64, :64] - 32).max(axis=0) <= 18) & metrics.dilate(masks, 8)[0]).sum()
    assert abs(iou - expected) < 1e-12 and iou < 0.8


def test_patches_of_another_colour_make_a_region_unclean_but_keep_its_dominant_colour() -> None:
    disc = _disc()
    patchy, masks = _frames(disc, RED)
    patchy[:, 20:29, 20:44][disc[20:29, 20:44][None].repeat(3, 0)] = BLUE  # a blue band over a quarter
    assert metrics.attribute_accuracy(patchy, masks, "red") == 1.0
    assert metrics.clean_frames(patchy, masks, "red") == 0.0
    assert metrics.clean_frames(patchy[:1].repeat(2, 0), masks[:2], "red") == 0.0
    patchy[1] = _frames(disc, RED, 1)[0][0]  # one frame cleaned
    assert abs(metrics.clean_frames(patchy, masks, "red") - 1 / 3) < 1e-12


def test_frames_where_the_region_does_not_show_are_not_counted() -> None:
    painted, masks = _frames(_disc(), RED)
    masks[1] = False
    assert metrics.shape_iou(painted, masks, "red") == 1.0 and metrics.clean_frames(painted, masks, "red") == 1.0
    assert metrics.shape_iou(painted, np.zeros_like(masks), "red") == 0.0


def test_each_unclean_frame_is_put_down_to_the_first_cause_that_holds() -> None:
    disc = _disc()
    source, masks = _frames(disc, np.array(world.COLOURS["white"], np.uint8), frames=5)
    result = source.copy()
    result[0][disc] = RED  # right
    result[1][disc] = BLUE  # the wrong colour
    square = np.abs(np.mgrid[:64, :64] - 32).max(axis=0) <= 18
    result[2][square] = RED  # red dominant, spilling out of the outline
    result[3][disc] = RED
    result[3][20:29][disc[20:29]] = BLUE  # red dominant, a blue band: patchy
    result[4][disc] = RED
    result[4][:, :6] = RED  # a red stripe far from the disc: leakage
    counts = metrics.failure_causes(source, result, masks, "red")
    assert counts == {"right": 1, "leak": 1, "colour": 1, "shape": 1, "patchy": 1}
    # a same-coloured region over the stripe is not leakage: that frame is right
    other = np.zeros_like(masks)
    other[:, :, :6] = True
    assert metrics.failure_causes(source, result, masks, "red", exclude=other)["right"] == 2
    # frames where the region does not show are not counted
    masks[1:] = False
    assert sum(metrics.failure_causes(source, result, masks, "red").values()) == 1


def test_a_wrong_colour_is_told_apart_by_where_it_comes_from() -> None:
    """A part (the disc's top cap) edited to red in 6 frames: right; its own source colour (white: unedited); the
    other region's target (blue: swapped); the body's colour (yellow: the object's); purple (other); and one frame
    leaking red far away, which is a leak, not a colour failure, so it is not counted here."""
    disc = _disc()
    cap = disc & (np.mgrid[:64, :64][0] < 24)
    body = disc & ~cap
    colours = {name: np.array(world.COLOURS[name], np.uint8) for name in ("white", "yellow", "purple")}
    source, masks = _frames(body, colours["yellow"], frames=6)
    source[:, cap] = colours["white"]
    result = source.copy()
    for f, shown in enumerate((RED, colours["white"], BLUE, colours["yellow"], colours["purple"], colours["white"])):
        result[f][cap] = shown
    result[5][:, :6] = RED  # far from the cap: leakage, the first cause
    caps = np.broadcast_to(cap, masks.shape)
    found = metrics.wrong_colours(source, result, caps, "red", others=["blue"], rest=np.broadcast_to(body, masks.shape))
    assert found == {"unedited": 1, "swapped": 1, "object's": 1, "other": 1}
    assert metrics.failure_causes(source, result, caps, "red") == {"right": 1, "leak": 1, "colour": 4, "shape": 0,
                                                                   "patchy": 0}
    # without the rest of its object or the other region's colour, those frames are "other"
    assert metrics.wrong_colours(source, result, caps, "red") == {"unedited": 1, "swapped": 0, "object's": 0,
                                                                  "other": 3}


def test_a_swapped_colour_is_shared_when_the_other_object_shows_it_too() -> None:
    """Two discs, left → red, right → blue, in four frames: the left disc blue while the right one is blue too
    (shared: one prompt's colour on both objects); the left blue while the right is green (moved); the two
    colours traded (the left's red far from it: a leak, not counted); both right."""
    left, right = _disc(), np.roll(_disc(), 30, axis=1)
    assert not (left & right).any()
    white = np.array(world.COLOURS["white"], np.uint8)
    source, _ = _frames(left | right, white, frames=4)
    result = source.copy()
    for f, (shown_left, shown_right) in enumerate(((BLUE, BLUE), (BLUE, GREEN), (BLUE, RED), (RED, BLUE))):
        result[f][left], result[f][right] = shown_left, shown_right
    lefts, rights = (np.broadcast_to(m, (4, *m.shape)) for m in (left, right))
    assert metrics.swap_kinds(source, result, lefts, "red", others={"blue": rights}) == {"shared": 1, "moved": 1}
    assert metrics.swap_kinds(source, result, rights, "blue", others={"red": lefts}) == {"shared": 0, "moved": 0}
    # the split covers exactly the swapped frames; the traded frame is the left region's leak
    assert metrics.wrong_colours(source, result, lefts, "red", others=["blue"])["swapped"] == 2
    assert metrics.failure_causes(source, result, lefts, "red")["leak"] == 1
