"""What the page's actions do (UiApp, no Gradio, no browser): runs, refusals, cancel, previews, stored clips,
examples, models, and one job giving one edit through the app, the CLI and Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from stmod.backbones.shapes import world
from stmod.backbones.shapes.demo import DEMO_CASE
from stmod.core.config import job_from_mapping
from stmod.core.errors import PromptError, UsageError
from stmod.core.io.evaldata import read_eval_frames
from stmod.core.io.video import write_frames, write_mp4
from stmod.plugins.ui.app import EditCancelled, UiApp
from stmod.plugins.ui.clips import EXAMPLES, content_digest, store_clip
from stmod.plugins.ui.state import MODES, Settings, click, job_mapping
from stmod.testing import fresh_plugin_manager, run_cli

NAMES = ["left", "right", "", ""]
LOCALS = ["red disc", "blue disc", "", ""]
PROMPT = "a red disc and a blue disc on grass"

def _notes() -> dict:
    """A box around each demo disc on source frame 0 (the clip is 128x128, edited at 64x64)."""
    notes, pending = {}, None
    for slot, (a, b) in enumerate((((6, 29), (56, 79)), ((72, 49), (122, 99)))):
        notes, pending, _ = click(notes, pending, slot=slot, frame=0, x=a[0], y=a[1], mode=MODES[0])
        notes, pending, _ = click(notes, pending, slot=slot, frame=0, x=b[0], y=b[1], mode=MODES[0])
    return notes

@pytest.fixture
def app_and_clip(tmp_path: Path):
    frames, _, _ = world.render_clip(DEMO_CASE.scene, 2, (128, 128))
    write_frames(tmp_path / "clip", frames)
    app = UiApp(fresh_plugin_manager().registry, tmp_path / "runs", cache=False)
    clip, indices, note, video = app.load_clip(None, str(tmp_path / "clip"), 0, 1, 2, 64, 64)
    assert indices == [0, 1] and "editing source frames 0, 1 at 64x64" in note and Path(video).exists()
    return app, clip

def _settings(**changes) -> Settings:
    return Settings(**{"prompt": PROMPT, "backbone": "tiny", "steps": 2, **changes})

def test_a_run_is_a_job_the_cli_reruns_and_cancel_writes_nothing(app_and_clip, tmp_path: Path) -> None:
    """run-001/job.yaml passes check; rerunning it from a shell does not replace its result without
    --overwrite; a cancelled run removes its folder and says so, naming the result still shown."""
    app, clip = app_and_clip
    seen: list[tuple] = []
    video, attention, metrics, note = app.run(clip, NAMES, LOCALS, _notes(), _settings(), "s1",
                                              lambda *a, **k: seen.append((a, k)))
    job = tmp_path / "runs" / "run-001" / "job.yaml"
    assert Path(video) == job.parent / "result" / "side_by_side.mp4" and Path(attention).exists()
    assert f"stmod-run edit {job}" in note and "| left |" in metrics and seen
    assert "predicted before the run" in metrics
    assert run_cli(["check", str(job)], env={"STMOD_LOAD_PLUGINS": ""}).exit_code == 0
    rerun = run_cli(["edit", str(job)], env={"STMOD_LOAD_PLUGINS": ""})
    assert rerun.exit_code == 2 and "already exists; pass --overwrite" in rerun.stderr

    def cancel_at_once(*args, **kwargs) -> None:
        app.cancel("s1")  # as if pressed during the first step: the run stops at its next report

    with pytest.raises(EditCancelled) as cancelled:
        app.run(clip, NAMES, LOCALS, _notes(), _settings(), "s1", cancel_at_once)
    assert str(cancelled.value) == (f"cancelled during inversion (2 of 2 done): nothing was written (run-002 "
                                    f"removed); the result shown is still {job.parent / 'result'}'s")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run-001"]
    assert app.cancel("s1") == "nothing is running"

def test_refused_runs_and_previews_leave_nothing_behind(app_and_clip, tmp_path: Path) -> None:
    """A run the CLI would refuse (a local prompt that is not words of the prompt) leaves no folder; every
    preview replaces the one preview folder; a refused preview writes nothing."""
    app, clip = app_and_clip
    runs = tmp_path / "runs"
    with pytest.raises(PromptError, match="local prompt 'blue cat' is not a token of"):
        app.run(clip, NAMES, ["red disc", "blue cat", "", ""], _notes(), _settings(), "s1")
    with pytest.raises(UsageError, match=r"region 1 \(left\) has a local prompt but no box: pick region 1"):
        app.run(clip, NAMES, LOCALS, {}, _settings(), "s1")
    assert not runs.exists() or not any(p.name.startswith("run-") for p in runs.iterdir())
    for _ in range(2):
        video, sheet = app.preview(clip, NAMES, LOCALS, _notes(), _settings())
        assert Path(video) == runs / "preview" / "result" / "masks.mp4" and sheet.ndim == 3
    assert sorted(p.name for p in runs.iterdir()) == ["preview"]
    saved = yaml.safe_load((runs / "preview" / "job.yaml").read_text())
    with pytest.raises(UsageError, match="region 2 has a box or a local prompt but no name"):
        app.preview(clip, ["left", "", "", ""], LOCALS, _notes(), _settings())
    assert sorted(p.name for p in runs.iterdir()) == ["preview"]
    assert yaml.safe_load((runs / "preview" / "job.yaml").read_text()) == saved

def test_uploads_are_stored_by_content(app_and_clip, tmp_path: Path) -> None:
    """A second upload with the same file name never changes the file a saved run points to; the same bytes
    uploaded again reuse their copy."""
    app, clip = app_and_clip
    first, _, _ = world.render_clip(DEMO_CASE.scene, 2, (64, 64))
    upload = write_mp4(tmp_path / "upload-1" / "mine.mp4", first, fps=8)  # as Gradio hands over an upload
    loaded, frames, _, _ = app.load_clip(str(upload), "", 0, 1, 2, 64, 64)
    stored = Path(loaded.path)
    assert stored == tmp_path / "runs" / "clips" / content_digest(upload) / "mine.mp4" and frames == [0, 1]
    before = stored.read_bytes()
    other = write_mp4(tmp_path / "upload-2" / "mine.mp4", 255 - first, fps=8)
    again, _, _, _ = app.load_clip(str(other), "", 0, 1, 2, 64, 64)
    assert Path(again.path) != stored and stored.read_bytes() == before
    assert store_clip(upload, tmp_path / "runs" / "clips") == stored
    with pytest.raises(UsageError, match="no clip: upload one, pick an example"):
        app.load_clip(None, " ", 0, 1, 2, 64, 64)

@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_load_as_complete_jobs(app_and_clip, name: str) -> None:
    """Each example comes with its regions, boxes inside the frame and prompts that pass the CLI's checks."""
    app, _ = app_and_clip
    clip, frames, note, video, notes, names, locals_, prompt, source = app.example(name)
    assert note.startswith("example: ") and Path(video).exists() and frames[0] == 0
    height, width = clip.images.shape[1:3]
    for slot, entry in notes.items():
        x0, y0, x1, y1 = entry[0]["box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and names[slot] and locals_[slot]
    job = job_mapping(clip, names, locals_, notes, Settings(prompt=prompt, source_prompt=source))
    spec = job_from_mapping(job, base_dir=app.workdir)
    app.editor.check(spec)  # the shapes tokenizer knows every word

def test_sd15_weights_are_checked_as_the_cli_checks_them(tmp_path: Path, tiny_folder: Path) -> None:
    """sd15 with a model folder: found, its tokenizer flags prompts; a missing folder: the CLI's line."""
    app = UiApp(fresh_plugin_manager().registry, tmp_path / "runs", backbone="sd15", model=str(tiny_folder))
    assert app.model == str(tiny_folder)
    note = app.backbone_note("sd15", str(tiny_folder))
    assert note.startswith("`sd15` edits real clips") and f"✓ weights found: `{tiny_folder}`" in note
    assert app.flags("sd15", str(tiny_folder), "a red cat", ["red cat"])[0].startswith("✓ tokens")
    missing = tmp_path / "no-such-model"
    assert app.backbone_note("sd15", str(missing)).endswith(
        f"stmod-run: error: {missing}: SD 1.5 model not found: no such file or folder")
    assert app.flags("sd15", str(missing), "a red cat", ["red cat", ""]) == [
        f"stmod-run: error: {missing}: SD 1.5 model not found: no such file or folder", ""]
    assert "toy world" in app.backbone_note("shapes", "") and "mean nothing" in app.backbone_note("tiny", "")
    with pytest.raises(UsageError, match="--backbone sd14: the page offers shapes, sd15, tiny"):
        UiApp(fresh_plugin_manager().registry, tmp_path / "runs", backbone="sd14")

def test_one_job_one_edit_in_the_app_the_cli_and_python(app_and_clip, tmp_path: Path) -> None:
    """The same settings give the same frames, bit for bit, from the page, from a job file a user writes
    (stmod-run edit) and from Python: every default (the modulation window above all: 5 steps, where the
    old page's 5·3 // 10 = 1 differs from the job default round(0.3·5) = 2) resolves alike."""
    import stmod

    app, clip = app_and_clip
    settings = _settings(steps=5, blend="latent")
    app.run(clip, NAMES, LOCALS, _notes(), settings, "s1")
    from_app = tmp_path / "runs" / "run-001" / "result"
    boxes = {name: {0: {"box": _notes()[slot][0]["box"]}} for slot, name in enumerate(NAMES[:2])}
    job = {"video": {"path": str(tmp_path / "clip"), "frames": 2, "size": [64, 64]}, "prompt": PROMPT,
           "regions": dict(zip(NAMES[:2], LOCALS[:2])), "layout": {"name": "grabcut", "prompts": boxes},
           "backbone": "tiny", "blend": "latent", "steps": 5,
           "save_attention": True}  # as the page's jobs: recording attention moves some pixels by one level
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cli = run_cli(["edit", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "cli"), "--quiet"],
                  env={"STMOD_LOAD_PLUGINS": ""})
    assert cli.exit_code == 0, cli.stderr
    python = stmod.Editor.from_pretrained("tiny", progress=False, cache=False).run(
        {**job, "output": str(tmp_path / "python")})
    frames = [read_eval_frames(folder)[1] for folder in (from_app, tmp_path / "cli")] + [python.frames]
    assert all(np.array_equal(frames[0], other) for other in frames[1:])
    windows = [yaml.safe_load((folder / "run.json").read_text())["modulated_steps"]
               for folder in (from_app, tmp_path / "cli", tmp_path / "python")]
    assert windows == [[0, 1], [0, 1], [0, 1]]
