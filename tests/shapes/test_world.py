"""The shapes world, its edit cases and its metrics: pure numpy, no model."""

from __future__ import annotations

import numpy as np
import pytest
from attrs import evolve

from stmod.backbones.shapes import edits, metrics, world
from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer


def test_render_is_seeded_and_masks_are_exact() -> None:
    """The same scene renders to the same pixels; every mask pixel shows its object's colour."""
    scene = world.random_scene(np.random.default_rng(3), identical_probability=0)
    a, b = world.render(scene, 2.0), world.render(scene, 2.0)
    assert np.array_equal(a.image, b.image)
    classes = world.colour_classes(a.image)
    for k, thing in enumerate(scene.things):
        body = a.bodies[k]
        if body.sum() > 20:
            inside = classes[body]
            assert (inside == list(world.COLOURS).index(thing.colour)).mean() > 0.9
    assert not (a.bodies & a.parts).any()


def test_occlusion_leaves_the_hidden_object_out_of_the_mask() -> None:
    """A later object covers an earlier one: the earlier one's mask loses exactly those pixels."""
    low = world.Thing(shape="square", colour="red", size=0.4, start=(0.5, 0.5))
    high = world.Thing(shape="disc", colour="blue", size=0.3, start=(0.5, 0.5))
    both = world.render(world.Scene(background="sand", things=(low, high)), 0.0)
    alone = world.render(world.Scene(background="sand", things=(low,)), 0.0)
    assert both.bodies[1].sum() > 100
    assert not (both.bodies[0] & both.bodies[1]).any()
    assert not (both.bodies[0] & ~alone.bodies[0]).any()
    hidden = alone.bodies[0] & ~both.bodies[0]
    assert hidden.sum() > 100 and not (hidden & ~metrics.dilate(both.bodies[1][None], 1)[0]).any()


def test_paths_stay_inside_the_frame() -> None:
    thing = world.Thing(shape="ring", colour="green", size=0.3, start=(0.2, 0.8), velocity=(0.3, 0.2))
    for t in range(40):
        x, y = thing.centre(float(t))
        assert 0.15 - 1e-9 <= x <= 0.85 + 1e-9 and 0.15 - 1e-9 <= y <= 0.85 + 1e-9


def test_backgrounds_read_as_no_palette_colour() -> None:
    """Background pixels are not mistaken for an object colour (so leakage counts real changes)."""
    for kind in world.BACKGROUNDS:
        bg = world.background(kind, 64, 64, seed=1).round().astype(np.uint8)
        assert (world.colour_classes(bg) >= 0).mean() < 0.01, kind


def test_captions_use_world_words_that_are_single_tokens(tmp_path) -> None:
    """Every caption word is one token of the shapes tokenizer; identical pairs read 'two ...s'."""
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(tmp_path, words=world.WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = world.caption(world.random_scene(rng), rng)
        assert set(text.split()) <= set(world.WORDS), text
        assert len(tokenizer(text).input_ids) == len(text.split()) + 2, text
    pair = world.Scene(background="snow", things=(
        world.Thing(shape="disc", colour="red", size=0.2, start=(0.3, 0.5)),
        world.Thing(shape="disc", colour="red", size=0.2, start=(0.7, 0.5))))
    assert world.caption(pair) == "two red discs on snow"
    orange = world.Scene(background="sky", things=(world.Thing(
        shape="ring", colour="orange", size=0.2, start=(0.5, 0.5), part=world.Part(kind="dot", colour="white")),))
    assert world.caption(orange) == "an orange ring with a white dot on sky"


def test_caption_order_carries_no_position() -> None:
    """Objects are named in random order, so words never tell left from right."""
    rng = np.random.default_rng(1)
    scene = world.Scene(background="grass", things=(
        world.Thing(shape="square", colour="red", size=0.2, start=(0.2, 0.5)),
        world.Thing(shape="square", colour="blue", size=0.2, start=(0.8, 0.5))))
    firsts = {world.caption(scene, rng).split()[1] for _ in range(40)}
    assert firsts == {"red", "blue"}


@pytest.mark.parametrize("kind", edits.KINDS)
def test_edit_cases_are_consistent(kind: str) -> None:
    """Local prompts are word spans of the prompt; target colours differ from the source's; masks are
    non-empty in every frame."""
    case = edits.make_case(kind, 4)
    assert case == edits.make_case(kind, 4)
    clip, bodies, parts = world.render_clip(case.scene, 8)
    masks = edits.case_masks(case, bodies, parts)
    for region in case.regions:
        assert f" {region.prompt} " in f" {case.prompt} "
        assert masks[region.name].reshape(8, -1).any(axis=1).all()
        source = world.colour_classes(clip)[masks[region.name]]
        assert (source == list(world.COLOURS).index(region.colour)).mean() < 0.05


def test_crossing_objects_swap_sides() -> None:
    case = edits.make_case("crossing", 0)
    _, bodies, _ = world.render_clip(case.scene, 8)
    xs = lambda m: np.nonzero(m)[1].mean()  # noqa: E731
    assert xs(bodies[0, 0]) < xs(bodies[0, 1]) and xs(bodies[-1, 0]) > xs(bodies[-1, 1])
    overlap = [(bodies[f, 0] | bodies[f, 1]).sum() < bodies[0, 0].sum() + bodies[0, 1].sum() for f in range(8)]
    assert any(overlap)  # one occludes the other at some frame


def _truth(case: edits.EditCase, frames: int = 6, swap: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """The source clip and the clip a perfect edit would give (or one with the regions' colours swapped)."""
    source, bodies, parts = world.render_clip(case.scene, frames)
    things = list(case.scene.things)
    colours = [r.colour for r in case.regions]
    if swap:
        colours = colours[::-1]
    for region, colour in zip(case.regions, colours):
        for k in region.things:
            if region.covers == "part":
                things[k] = evolve(things[k], part=evolve(things[k].part, colour=colour))
            else:
                things[k] = evolve(things[k], colour=colour)
    edited, _, _ = world.render_clip(evolve(case.scene, things=tuple(things)), frames)
    return source, edited, edits.case_masks(case, bodies, parts)


@pytest.mark.parametrize("kind", edits.KINDS)
def test_metrics_score_a_perfect_edit_as_perfect(kind: str) -> None:
    case = edits.make_case(kind, 1)
    source, edited, masks = _truth(case)
    colours = {r.name: r.colour for r in case.regions}
    for region in case.regions:
        assert metrics.attribute_accuracy(edited, masks[region.name], region.colour) == 1.0
        assert metrics.attribute_accuracy(source, masks[region.name], region.colour) == 0.0
    assert max(metrics.leakage(source, edited, masks, colours).values()) == 0.0
    objects = np.stack(list(masks.values())).any(axis=0)
    assert metrics.background_psnr(source, edited, objects) == float("inf")
    assert max(metrics.flicker(edited, m) for m in masks.values()) < 3.0


def test_metrics_catch_swapped_colours_and_leakage() -> None:
    """Colours landing in the wrong instance score 0 accuracy and count as leakage."""
    case = edits.make_case("instance", 2)
    source, swapped, masks = _truth(case, swap=True)
    colours = {r.name: r.colour for r in case.regions}
    for region in case.regions:
        assert metrics.attribute_accuracy(swapped, masks[region.name], region.colour) == 0.0
    leak = metrics.leakage(source, swapped, masks, colours)
    assert min(leak.values()) > 0.02


def test_background_psnr_drops_when_the_background_changes() -> None:
    case = edits.make_case("object", 0)
    source, edited, masks = _truth(case)
    noisy = np.clip(edited.astype(int) + np.random.default_rng(0).integers(-20, 21, edited.shape), 0, 255)
    objects = np.stack(list(masks.values())).any(axis=0)
    assert 15 < metrics.background_psnr(source, noisy.astype(np.uint8), objects) < 30
