"""The UI's pure parts (no Gradio, no browser): clicks → annotations → a job the CLI accepts, and the command."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml

from stmod.backbones.shapes import world
from stmod.backbones.shapes.demo import DEMO_CASE
from stmod.core.config import job_from_mapping
from stmod.core.io.video import write_frames, write_mp4
from stmod.core.errors import UsageError
from stmod.plugins.commands import ui as ui_command
from stmod.plugins.ui.state import (MODES, Clip, Settings, clear_region, click, draw_keyframe, job_mapping,
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


def test_ui_command_without_gradio(monkeypatch) -> None:
    """Without the extra, the command exits 2 with one line saying how to install it."""
    monkeypatch.setattr(ui_command, "gradio_installed", lambda: False)
    result = run_cli(["ui", "--port", "0"], env={"STMOD_LOAD_PLUGINS": ""})
    assert result.exit_code == 2
    assert result.stderr.strip() == ("stmod-run: error: stmod-run ui needs gradio, which is not installed; run: "
                                     "pip install 'stmod[ui]'")


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="needs gradio: pip install -e '.[ui]'")
def test_app_run_writes_a_rerunnable_job_and_cancel_stops_it(tmp_path: Path) -> None:
    """UiApp.run writes run-NNN/job.yaml, which the CLI reruns; the cancel button's call stops the next run at
    its next step, and nothing is written."""
    from stmod.plugins.ui.app import EditCancelled, UiApp
    from stmod.testing import fresh_plugin_manager

    clip_frames, bodies, parts = world.render_clip(DEMO_CASE.scene, 2, (128, 128))
    write_frames(tmp_path / "clip", clip_frames)
    app = UiApp(fresh_plugin_manager().registry, tmp_path / "runs", cache=False)
    clip, _, _ = app.load_clip(None, str(tmp_path / "clip"), 0, 1, 2, 64, 64)
    notes = _two_boxes()
    settings = Settings(prompt="a red disc and a blue disc", backbone="tiny", steps=2)
    seen: list[tuple] = []
    video, attention, metrics, note = app.run(clip, NAMES, ["red disc", "blue disc", "", ""], notes, settings,
                                              "s1", lambda *a, **k: seen.append((a, k)))
    job = tmp_path / "runs" / "run-001" / "job.yaml"
    assert Path(video) == job.parent / "result" / "side_by_side.mp4" and Path(attention).exists()
    assert f"stmod-run edit {job}" in note and "| left |" in metrics and seen
    assert "predicted before the run" in metrics and "predicted peak memory (RSS)" in metrics
    assert run_cli(["check", str(job)], env={"STMOD_LOAD_PLUGINS": ""}).exit_code == 0

    def cancel_at_once(*args, **kwargs) -> None:
        app.cancel("s2")  # as if the button were pressed during the first step

    with pytest.raises(EditCancelled):
        app.run(clip, NAMES, ["red disc", "blue disc", "", ""], notes, settings, "s2", cancel_at_once)
    assert not (tmp_path / "runs" / "run-002" / "result").exists() and app.cancel("s2") == "nothing is running"

    upload = write_mp4(tmp_path / "upload" / "mine.mp4", clip_frames, fps=8)  # as Gradio hands over an upload
    uploaded, frames, note = app.load_clip(str(upload), "", 0, 1, 2, 64, 64)
    assert Path(uploaded.path) == tmp_path / "runs" / "clips" / "mine.mp4" and frames == [0, 1]
    with pytest.raises(UsageError, match="no clip: upload one or type the path"):
        app.load_clip(None, " ", 0, 1, 2, 64, 64)


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
