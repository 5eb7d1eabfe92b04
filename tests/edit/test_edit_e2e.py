"""`stmod-run edit` end to end on the tiny model loaded from a saved folder, with ControlNet (canny)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
import yaml

from stmod.core.config import load_job
from stmod.core.pipeline.editor import Editor
from stmod.core.pipeline.cache import InversionCache
from stmod.core.io.video import probe_video, read_video
from stmod.testing import fresh_plugin_manager, run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


def test_edit_end_to_end_with_canny(demo_job) -> None:
    """The CLI writes every output of an edit folder (``stmod.core.io.outputs``) and records the run."""
    job = demo_job()
    result = run_cli(["edit", str(job), "--quiet", "--save-attention"], env=ENV)
    assert result.exit_code == 0, result.stderr
    out = Path(yaml.safe_load(job.read_text())["output"])
    names = {p.name for p in out.iterdir()}
    assert {"result.mp4", "result.gif", "side_by_side.mp4", "masks.mp4", "control.mp4", "config.yaml",
            "run.json", "attention", "attention_effect.png"} <= names
    info = probe_video(out / "result.mp4")
    assert (info.frames, info.width, info.height) == (4, 64, 64)
    assert probe_video(out / "side_by_side.mp4").width > 2 * 64
    import av

    run = json.loads((out / "run.json").read_text())
    with av.open(str(out / "result.mp4")) as video:  # the file says what made it: the job, its seed, stmod
        tags = dict(video.metadata)
    assert tags["title"] == load_job(job).prompt
    assert tags["comment"].startswith(f"stmod {run['versions']['stmod']} job (seed 0):")
    assert yaml.safe_load(tags["comment"].split("\n", 1)[1])["prompt"] == tags["title"]
    run = json.loads((out / "run.json").read_text())
    assert run["inversion"]["cached"] is False and "invert" in run["phases_run"]
    assert set(run["phases"]) >= {"check", "read", "layout", "control", "load", "encode", "invert", "denoise",
                                  "decode"}
    assert run["peak_rss_bytes"] > 0 and run["versions"]["diffusers"]
    assert set(run["attention"]) == {"square", "disc"}
    # The closing summary: total and per-phase time, memory, cache, and the files to open.
    assert "done in " in result.stdout and "denoise " in result.stdout and "peak memory: RSS " in result.stdout
    assert "inversion: computed" in result.stdout and f"{out / 'side_by_side.mp4'}  (source | edit)" in result.stdout
    assert (out / "attention" / "square.png").exists()
    again = load_job(out / "config.yaml")  # the resolved job is a valid job
    assert again.prompt == load_job(job).prompt and again.control[0].annotator.name == "canny"
    assert "wrote" in result.stdout


def test_second_run_uses_inversion_cache_and_gives_same_result(demo_job, tmp_path: Path) -> None:
    """The second edit of the same clip skips inversion (run.json says so) and gives the same frames."""
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))
    spec = load_job(demo_job())
    first = editor.run(spec)
    second = editor.run(attrs.evolve(spec, overwrite=True))
    assert first.run["inversion"]["cached"] is False and second.run["inversion"]["cached"] is True
    assert "invert" not in second.run["phases_run"] and "invert" in first.run["phases_run"]
    assert np.array_equal(first.frames, second.frames)
    frames, _ = read_video(second.output / "result.mp4")
    assert frames.shape == (4, 64, 64, 3)


def test_changed_source_prompt_invalidates_cache(demo_job, tmp_path: Path) -> None:
    """The cache key includes the source prompt: a different one inverts again."""
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))
    editor.run(load_job(demo_job()))
    other = editor.run(load_job(demo_job(source_prompt="a red cat on the grass", overwrite=True)))
    assert other.run["inversion"]["cached"] is False


def test_existing_output_untouched_without_overwrite(demo_job, tmp_path: Path) -> None:
    """An existing output folder is an error (exit 2) and its files stay as they were."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(["edit", str(demo_job()), "--quiet"], env=ENV)
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_output_folder(demo_job, tmp_path: Path) -> None:
    """With --overwrite an earlier output (it carries stmod's marker) is replaced as a whole."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".stmod-owned").write_text("{}")
    (out / "stale.txt").write_text("old")
    result = run_cli(["edit", str(demo_job()), "--quiet", "--overwrite", "--no-cache"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert not (out / "stale.txt").exists() and (out / "result.mp4").exists() and (out / ".stmod-owned").exists()


def test_overwrite_refuses_a_folder_stmod_did_not_write(demo_job, tmp_path: Path) -> None:
    """--overwrite never replaces a folder without stmod's marker: one line, exit 2, the folder intact."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    result = run_cli(["edit", str(demo_job()), "--quiet", "--overwrite", "--no-cache"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no .stmod-owned marker" in result.stderr and str(out) in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_failed_run_leaves_no_partial_output(demo_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing outputs leaves no output folder and no temporary folder behind."""
    import stmod.core.io.outputs as outputs

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(outputs, "write_gif", broken)
    result = run_cli(["edit", str(demo_job()), "--quiet"], env=ENV)
    assert result.exit_code == 1 and "disk on fire" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_tiny_backbone_by_name(demo_job) -> None:
    """The `tiny` backbone (generated into the cache, loaded through the sd15 path) edits too."""
    job = demo_job(backbone={"name": "tiny"}, control=[{"annotator": "canny"}])
    result = run_cli(["edit", str(job), "--quiet", "--steps", "2"], env=ENV)
    assert result.exit_code == 0, result.stderr


def test_demo_command(tmp_path: Path) -> None:
    """`stmod-run demo` (shapes) writes inputs, all outputs and the attention figure, and reports the
    measured accuracy; `--backbone tiny` says its pixels are not meaningful."""
    result = run_cli(["demo", "--out", str(tmp_path / "demo"), "--frames", "2", "--steps", "3", "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "demo" / "inputs" / "job.yaml").exists()
    assert (tmp_path / "demo" / "result" / "attention_effect.png").exists()
    assert "left_disc -> red disc: attribute accuracy" in result.stdout and "background PSNR" in result.stdout
    assert "toy world" in result.stdout
    again = run_cli(["demo", "--out", str(tmp_path / "demo"), "--quiet"], env=ENV)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    tiny = run_cli(["demo", "--backbone", "tiny", "--out", str(tmp_path / "tiny"), "--frames", "4", "--steps", "3",
                    "--quiet"], env=ENV)
    assert tiny.exit_code == 0, tiny.stderr
    assert "NOT a meaningful edit" in tiny.stdout


def test_modulation_raises_in_region_attention(demo_job) -> None:
    """On the tiny model, modulation moves each local prompt's attention into its region."""
    editor = Editor(fresh_plugin_manager().registry, progress=False)
    result = editor.run(load_job(demo_job(save_attention=True)))
    for region, mass in result.run["attention"].items():
        assert mass["modulated"] > mass["plain"] + 0.02, (region, mass)
    assert torch.is_tensor(result.layout.masks)


def test_editor_reuses_loaded_backbone(demo_job, tmp_path: Path) -> None:
    """Jobs with the same backbone settings share one loaded model (a batch does not reload weights)."""
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))
    first = editor.check(load_job(demo_job()))
    first.backbone.load()
    unet = first.backbone.unet
    second = editor.check(load_job(demo_job(seed=3)))
    assert second.backbone is first.backbone and second.backbone.unet is unet
    other = editor.check(load_job(demo_job(backbone={"name": "tiny"})))
    assert other.backbone is not first.backbone


def test_on_progress_reports_steps_and_can_stop_the_edit(demo_job, tmp_path: Path) -> None:
    """``on_progress`` hears every inversion, denoising and decoding step; raising in it stops the edit
    before anything is written (how the UI's cancel button works)."""
    calls: list[tuple[str, int, int]] = []
    spec = load_job(demo_job())
    Editor(fresh_plugin_manager().registry, progress=False, cache=False,
           on_progress=lambda *call: calls.append(call)).run(spec)
    phases = {phase: (done, total) for phase, done, total in calls}
    assert phases["inversion"] == (3, 3) and phases["denoising"] == (3, 3) and phases["decoding"][0] == 4

    class Stop(Exception):
        pass

    def stop(phase: str, done: int, total: int) -> None:
        if phase == "denoising":
            raise Stop

    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        Editor(fresh_plugin_manager().registry, progress=False, cache=False, on_progress=stop).run(
            attrs.evolve(spec, output=out))
    assert not out.exists()
