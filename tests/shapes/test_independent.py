"""The independent case set: clips the world's renderer did not draw, with the benchmark's words and exact masks."""

from __future__ import annotations

import numpy as np
import pytest

from stmod.backbones.shapes import edits, independent, unknown_words, world


@pytest.mark.parametrize("kind", edits.KINDS)
def test_cases_speak_the_worlds_words_and_their_masks_read_back_in_the_source_colours(kind: str) -> None:
    for seed in range(3):
        case = independent.make_independent_case(kind, seed)
        assert independent.FRAME_RANGE[0] <= case.frames <= independent.FRAME_RANGE[1]
        for prompt in (case.prompt, case.source_prompt, *(r.prompt for r in case.regions)):
            assert unknown_words(prompt) == [], prompt
        clip, bodies, parts = case.render(case.frames)
        assert clip.shape == (case.frames, 128, 128, 3) and bodies.shape[:2] == (case.frames, len(case.scene.things))
        classes = world.colour_classes(clip)
        for k, thing in enumerate(case.scene.things):
            nearest = int(np.argmin([np.abs(np.subtract(thing.rgb, c)).sum() for c in world.COLOURS.values()]))
            shown = classes[bodies[:, k]]
            assert shown.size and (shown == nearest).mean() > 0.9, f"{case.name}: object {k} does not read back"
        for mask in edits.case_masks(case, bodies, parts).values():
            assert mask.any(axis=(1, 2)).mean() >= 0.5, f"{case.name}: a region missing from most frames"


def test_the_same_seed_draws_the_same_clip_and_another_seed_another() -> None:
    a, b = (independent.make_independent_case("instance", 4).render(8)[0] for _ in range(2))
    assert (a == b).all()
    assert (a != independent.make_independent_case("instance", 5).render(8)[0]).any()


def test_the_drawing_is_not_the_worlds() -> None:
    """Same objects, positions and background name, drawn by the two renderers: different pixels."""
    case = independent.make_independent_case("object", 0)
    scene = world.Scene(background=case.scene.background, seed=case.scene.seed, things=[
        world.Thing(shape=t.shape, colour="red", size=t.size, start=t.start, velocity=t.velocity)
        for t in case.scene.things])
    ours, theirs = case.render(4)[0], world.render_clip(scene, 4)[0]
    assert np.abs(ours.astype(int) - theirs).mean() > 5


def test_write_case_takes_the_cases_own_frame_count(tmp_path) -> None:
    case = independent.make_independent_case("part", 1)
    edits.write_case(tmp_path / "case", case, frames=4, steps=2)
    assert len(list((tmp_path / "case" / "frames").glob("*.png"))) == case.frames
    assert f"frames: {case.frames}" in (tmp_path / "case" / "job.yaml").read_text()


def test_quality_scores_an_unedited_independent_clip(bench_script) -> None:
    """Scoring goes through the case's own renderer: the source scored against itself keeps the background
    exactly and reads the source colours (not the targets) in the regions."""
    quality = bench_script("quality")
    case = independent.make_independent_case("instance", 2)
    clip = case.render(case.frames)[0]
    scores = quality.score(case, clip, clip, case.frames)
    assert scores["background_psnr"] == float("inf") and scores["accuracy"] == 0.0 and scores["leakage"] == 0.0
