"""The issue's destructive cases on the CLI: each is refused with one line, exit 2, and nothing changes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
TESTING = ["-p", "stmod.testing"]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (links as their target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(root))] = "-> " + str(path.readlink())
        elif path.is_file():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _refused(result, *needles: str, batch: bool = False) -> None:
    """Exit 2 with one error line (a batch also logs each invalid job before it)."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 or (batch and all(line.startswith("ERROR ") for line in lines[:-1])), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_check_never_deletes_a_foreign_tiny_folder(job_file, tmp_path: Path) -> None:
    """`check` with backbone tiny pointed at a folder that is not a complete model used to rmtree it."""
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    job = job_file(backbone={"name": "tiny", "folder": str(folder)}, modulator="st-layout")
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "check", str(job)], env=ENV), str(folder), "not a complete tiny model")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["job folder", "clip file", "link to job folder", "cache"])
def test_output_on_an_input_is_refused_even_with_overwrite(job_file, tmp_path: Path, where: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("STMOD_CACHE_DIR", str(cache))
    out = {"job folder": tmp_path, "clip file": tmp_path / "clip.mp4",
           "link to job folder": tmp_path / "link", "cache": cache / "out"}[where]
    job = job_file()
    before = _snapshot(tmp_path)
    for command in ("check", "edit"):
        result = run_cli([*TESTING, command, str(job), "--out", str(out), "--overwrite", "--quiet"][:None if
                         command == "edit" else -1], env=ENV)
        _refused(result, "choose another output")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["frames", "frames/out", "."])
def test_output_on_a_frames_folder_is_refused(job_file, tmp_path: Path, out: str) -> None:
    from stmod.core.io.video import write_frames

    write_frames(tmp_path / "frames", np.full((4, 64, 64, 3), 90, dtype=np.uint8))
    job = job_file(video={"path": "frames", "frames": 4, "size": [64, 64]})
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "edit", str(job), "--out", str(tmp_path / out), "--overwrite", "--quiet"], env=ENV),
             "video.path input")
    assert _snapshot(tmp_path) == before


def test_output_inside_a_mask_folder_is_refused(demo_job, tmp_path: Path) -> None:
    job = demo_job()
    masks = tmp_path / "inputs" / "masks"
    before = _snapshot(tmp_path)
    _refused(run_cli(["check", str(job), "--out", str(masks / "square" / "out")], env=ENV),
             "lies inside the layout[0] input")
    _refused(run_cli(["check", str(job), "--out", str(tmp_path / "inputs"), "--overwrite"], env=ENV), "input")
    assert _snapshot(tmp_path) == before


def test_batch_output_dot_never_replaces_inputs(manifest, tmp_path: Path) -> None:
    """`output: .` with a job named like an input folder: refused before anything runs."""
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "00000.png").write_bytes(b"not really a png")
    path = manifest(output=".", clips={}, prompts={}, presets={}, seeds=None,
                    jobs=[{"name": "frames"}, {"name": "fine"}])
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV), "frames", batch=True)
    assert _snapshot(tmp_path) == before


def test_batch_never_replaces_a_foreign_folder_named_like_a_job(manifest, tmp_path: Path) -> None:
    path = manifest(clips={}, prompts={}, presets={}, seeds=None, jobs=[{"name": "docs"}])
    (tmp_path / "runs" / "docs").mkdir(parents=True)
    (tmp_path / "runs" / "docs" / "notes.md").write_text("mine")
    _refused(run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV), "no .stmod-owned marker",
             batch=True)
    assert (tmp_path / "runs" / "docs" / "notes.md").read_text() == "mine"


def test_demo_overwrite_refuses_a_foreign_folder(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "mine.txt").write_text("x")
    _refused(run_cli(["demo", "--backbone", "tiny", "--out", str(folder), "--overwrite", "--quiet"], env=ENV),
             "no .stmod-owned marker")
    assert [p.name for p in folder.iterdir()] == ["mine.txt"]


def test_rerun_with_overwrite_replaces_its_own_output(job_file, tmp_path: Path) -> None:
    job = job_file()
    assert run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV).exit_code == 0
    assert (tmp_path / "out" / ".stmod-owned").is_file()
    _refused(run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV), "already exists")
    assert run_cli([*TESTING, "edit", str(job), "--quiet", "--overwrite"], env=ENV).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries, no lock


def test_output_kept_when_the_folder_changed_hands_during_the_run(job_file, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker is checked again at the swap: a folder someone filled meanwhile is not replaced."""
    import stmod.core.io.outputs as outputs

    out = tmp_path / "out"
    real_write = outputs.write_gif

    def write_gif(path, *args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "arrived.txt").write_text("someone else's")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(outputs, "write_gif", write_gif)
    _refused(run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV), "no .stmod-owned marker")
    assert [p.name for p in out.iterdir()] == ["arrived.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_job_with_output_to_its_own_folder(tmp_path: Path, job_file) -> None:
    """`output: .` in a job file means the job's folder, which holds the clip: refused."""
    job = job_file(output=".")
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "edit", str(job), "--overwrite", "--quiet"], env=ENV), "contains the video.path input")
    assert _snapshot(tmp_path) == before
