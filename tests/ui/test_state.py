"""The UI's pure parts (no Gradio, no browser): clicks → annotations → a job the CLI accepts, and the command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from stmod.core.config import job_from_mapping
from stmod.core.io.video import FrameTransform
from stmod.core.errors import UsageError
from stmod.plugins.commands import ui as ui_command
from stmod.plugins.ui.state import (MODES, Clip, Settings, clear_region, click, crop_box, draw_keyframe, job_mapping,
                                    metrics_markdown, prompt_flags)
from stmod.testing import run_cli

NAMES = ["left", "right", "", ""]


def _clip(tmp_path: Path) -> Clip:
    return Clip(path=str(tmp_path / "clip.mp4"), start=0, every=1, frames=4, size=(64, 64), indices=(0, 1, 2, 3),
                images=np.zeros((4, 64, 64, 3), np.uint8))


def _two_boxes() -> dict:
    notes, pending = {}, None
    for slot, (a, b) in enumerate((((4, 6), (20, 30)), ((50, 40), (33, 12)))):
        notes, pending, first = click(notes, pending, slot=slot, frame=0, x=a[0], y=a[1], mode=MODES[0])
        assert pending == [slot, 0, a[0], a[1]] and "click the opposite corner" in first
        notes, pending, _ = click(notes, pending, slot=slot, frame=0, x=b[0], y=b[1], mode=MODES[0])
        assert pending is None
    return notes


def test_two_corner_clicks_make_a_box_in_either_order() -> None:
    """The first click stores a corner, the second closes the box (its pixel inside), whatever the order."""
    notes = _two_boxes()
    assert notes[0][0]["box"] == [4.0, 6.0, 21.0, 31.0] and notes[1][0]["box"] == [33.0, 12.0, 51.0, 41.0]
    notes, _, _ = click(notes, None, slot=1, frame=0, x=40, y=20, mode=MODES[2])
    assert notes[1][0]["points"] == [[40.0, 20.0]] and notes[1][0]["labels"] == [0]
    assert list(clear_region(notes, 1)) == [0]


def test_job_mapping_is_a_job_the_cli_accepts(tmp_path: Path) -> None:
    """The form becomes a job with a grabcut layout whose prompts are the clicks, validated by the job loader."""
    notes, _, _ = click(_two_boxes(), None, slot=0, frame=0, x=10, y=12, mode=MODES[1])
    settings = Settings(prompt="a red disc and a blue disc", backbone="tiny", steps=10, preset="paper")
    job = job_mapping(_clip(tmp_path), NAMES, ["red disc", "blue disc", "", ""], notes, settings)
    assert job["layout"] == {"name": "grabcut", "prompts": {
        "left": {0: {"box": [4.0, 6.0, 21.0, 31.0], "points": [[10.0, 12.0]], "labels": [1]}},
        "right": {0: {"box": [33.0, 12.0, 51.0, 41.0]}}}}
    spec = job_from_mapping(yaml.safe_load(yaml.safe_dump(job)), base_dir=tmp_path)
    assert [(r.name, r.prompt) for r in spec.regions] == [("left", "red disc"), ("right", "blue disc")]
    assert spec.layout[0].name == "grabcut" and spec.steps == 10 and spec.modulation.preset == "paper"
    # The job leaves the window to the job loader's default, as the CLI and Python do; and a rerun from a
    # shell must not replace the saved result without --overwrite.
    assert spec.modulation.end_step is None and spec.modulation_window == (0, 3) and spec.save_attention
    assert not spec.overwrite and "overwrite" not in job and "end_step" not in job["modulation"]
    sd15 = job_mapping(_clip(tmp_path), NAMES, ["red disc", "blue disc", "", ""], notes,
                       Settings(prompt="a red disc and a blue disc", backbone="sd15", model="/models/sd15"))
    assert sd15["backbone"] == {"name": "sd15", "model": "/models/sd15"}
    assert job_mapping(_clip(tmp_path), NAMES, ["", "", "", ""], notes,
                       Settings(prompt="x", backbone="shapes", model="/models/sd15"))["backbone"] == {"name": "shapes"}


def test_job_mapping_errors(tmp_path: Path) -> None:
    """No region, a region without a name, two regions with one name: one line each, saying what to do."""
    clip, settings = _clip(tmp_path), Settings(prompt="x")
    with pytest.raises(UsageError, match="no regions yet: pick a region, then click two corners"):
        job_mapping(clip, NAMES, [""] * 4, {}, settings)
    with pytest.raises(UsageError, match="region 2 has a box or a local prompt but no name"):
        job_mapping(clip, ["left", "", "", ""], [""] * 4, _two_boxes(), settings)
    with pytest.raises(UsageError, match="two regions are named 'left'"):
        job_mapping(clip, ["left", "left", "", ""], [""] * 4, _two_boxes(), settings)


def test_prompt_flags_use_the_cli_check(tiny_folder: Path) -> None:
    """A local prompt that is not a token span gets the CLI's PromptError line; a good one its token range."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_folder, subfolder="tokenizer")
    flags = prompt_flags(tokenizer, "a red cat and a blue dog", ["red cat", "green dog", ""])
    assert flags[0].startswith("✓ tokens") and flags[2] == ""
    assert flags[1] == ("⚠ local prompt 'green dog' is not a token of 'a red cat and a blue dog': the word 'green' "
                        "does not occur in it; a local prompt must repeat whole words of the global prompt")


def test_drawing_and_metrics() -> None:
    """Boxes are drawn in the region's colour at the zoom; the run record becomes a table."""
    notes = _two_boxes()
    image = draw_keyframe(np.zeros((64, 64, 3), np.uint8), notes, 0, NAMES, scale=2)
    assert image.shape == (128, 128, 3) and image[12, 8:42].any() and not image[100, 100].any()
    text = metrics_markdown({"attention": {"left": {"plain": 0.1, "modulated": 0.5}}, "phases": {"denoise": 1.5}})
    assert "| left | 10% | 50% |" in text and "denoise 1.5 s" in text


def test_crop_box_is_the_part_the_edit_keeps() -> None:
    """Reference: the crop's corners map to the edit frame's corners under the reading's own geometry
    (FrameTransform.point_to_edit, float64), for random source and edit sizes, either side wider."""
    rng = np.random.default_rng(27)
    for _ in range(200):
        sw, sh = (int(v) for v in rng.integers(16, 2000, size=2))
        w, h = (int(v) for v in rng.integers(1, 9, size=2) * 64)
        x0, y0, x1, y1 = crop_box(sw, sh, w, h)
        transform = FrameTransform(source_height=sh, source_width=sw, height=h, width=w)
        np.testing.assert_allclose(transform.point_to_edit(x0, y0), (0, 0), atol=1e-9)
        np.testing.assert_allclose(transform.point_to_edit(x1, y1), (w, h), atol=1e-9)
        assert 0 <= x0 <= x1 <= sw + 1e-9 and 0 <= y0 <= y1 <= sh + 1e-9
        assert min(x0, y0) < 1e-9 or (x0, y0) == (0, 0)  # one side is kept whole (a cover, not a shrink)
    # a 16:9 clip edited square loses its sides (the scaled width rounds to whole pixels: 228 of 1280)
    assert crop_box(1280, 720, 128, 128) == pytest.approx((280.7, 0.0, 999.3, 720.0), abs=0.05)
    assert crop_box(128, 128, 64, 64) == (0.0, 0.0, 128.0, 128.0)


def test_the_keyframe_shows_the_crop() -> None:
    """What the edit crops away is dimmed and the kept part outlined; a frame kept whole is drawn as is."""
    image = np.full((72, 128, 3), 200, np.uint8)
    drawn = draw_keyframe(image, {}, 0, NAMES, scale=2, crop=crop_box(128, 72, 64, 64))  # keeps x 28..100
    assert drawn.shape == (144, 256, 3)
    assert (drawn[70, 10] < 100).all() and (drawn[70, 250] < 100).all()  # cropped away: dimmed
    assert (drawn[70, 128] == 200).all() and (drawn[70, 56] == 255).all()  # kept; its outline at x = 2 * 28
    assert (draw_keyframe(image, {}, 0, NAMES, crop=crop_box(128, 72, 128, 72)) == image).all()


def test_ui_command_without_gradio(monkeypatch) -> None:
    """Without the extra, the command exits 2 with one line saying how to install it."""
    monkeypatch.setattr(ui_command, "gradio_installed", lambda: False)
    result = run_cli(["ui", "--port", "0"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2
    assert result.stderr.strip() == ("stmod-run: error: stmod-run ui needs gradio, which is not installed; run: "
                                     "pip install 'stmod[ui]'")


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs gradio: pip install -e '.[ui]'")
def test_ui_command_on_a_taken_port(tmp_path: Path) -> None:
    """A port in use is one line naming it and the fix, not a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["ui", "--port", str(port), "--out", str(tmp_path)], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"stmod-run: error: cannot serve on 127.0.0.1:{port}: the port is taken or the "
                                     "address is not this machine's; pass another --port (0: any free one) or --host")
    # Gradio's import takes seconds: the command says it is starting before it, not after
    assert result.stdout.startswith("stmod-run ui: starting (loading Gradio and the pipeline; the address follows)")


def test_ui_command_model_flags(tmp_path: Path) -> None:
    """--model is sd15's: given with another backbone it is one line saying what to do; --backbone offers
    the page's three."""
    result = run_cli(["ui", "--port", "0", "--out", str(tmp_path), "--model", "my-model"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2 and result.stderr.strip() == (
        "stmod-run: error: --model my-model is for --backbone sd15 (the page starts on shapes, which has its own "
        "weights); add --backbone sd15 or drop --model")
    result = run_cli(["ui", "--backbone", "sd14"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2 and "invalid choice: 'sd14' (choose from 'shapes', 'sd15', 'tiny')" in result.stderr
