"""Second round: stmod owns exactly what it wrote. A user's file named like one of stmod's locks or
temporaries beside the output, a link where the lock goes, a user's file put into an earlier output,
a model folder pointed at an edit output: each is refused (one line, exit 2) or kept, never deleted,
overwritten or written through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stmod.core.errors import BusyError, NotOwnedError
from stmod.core.io.locks import exclusive_lock, is_lock_record, lock_problem
from stmod.core.io.ownership import (atomic_folder, clean_stale_temporaries, read_marker, replace_problem,
                                     unknown_entries, write_marker)
from stmod.testing import run_cli

from .test_no_data_lost import ENV, TESTING, _refused, _snapshot


@pytest.mark.parametrize("content", ["my notes about this clip", '{"review": "keep"}', "[1, 2]"])
def test_a_users_file_named_like_the_lock_is_refused_not_deleted(job_file, tmp_path: Path, content: str) -> None:
    (tmp_path / ".out.lock").write_text(content)
    job = job_file()
    before = _snapshot(tmp_path)
    for command in (["check"], ["edit", "--quiet"]):
        _refused(run_cli([*TESTING, command[0], str(job), *command[1:]], env=ENV), ".out.lock",
                 "stmod did not write")
    assert _snapshot(tmp_path) == before


def test_a_link_where_the_lock_goes_is_not_followed(job_file, tmp_path: Path) -> None:
    precious = tmp_path / "thesis.tex"
    precious.write_text("years of work")
    (tmp_path / ".out.lock").symlink_to(precious)
    job = job_file()
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV), "symbolic link")
    assert _snapshot(tmp_path) == before and precious.read_text() == "years of work"


def test_lock_refuses_a_foreign_file_and_a_link_directly(tmp_path: Path) -> None:
    path = tmp_path / ".out.lock"
    path.write_text("notes")
    with pytest.raises(NotOwnedError, match="did not write"):
        with exclusive_lock(path, what="x", fix="y"):
            pass
    assert path.read_text() == "notes"
    path.unlink()
    path.symlink_to(tmp_path / "target")
    with pytest.raises(NotOwnedError, match="symbolic link"):
        with exclusive_lock(path, what="x", fix="y"):
            pass
    assert not (tmp_path / "target").exists() and path.is_symlink()


def test_lock_record_identity() -> None:
    assert is_lock_record(b"") and is_lock_record(b'{"pid": 1, "host": "h", "since": "s"}')
    assert is_lock_record(b'{"stmod": "lock", "pid": 3}')
    for data in (b"notes", b'{"pid": 1}', b"[1]", b"\xff\xfe", b'{"stmod": "edit output"}'):
        assert not is_lock_record(data), data


def test_lock_record_names_stmod_and_a_held_lock_refuses(tmp_path: Path) -> None:
    path = tmp_path / ".out.lock"
    with exclusive_lock(path, what="output folder out", fix="wait"):
        assert json.loads(path.read_text())["stmod"] == "lock" and lock_problem(path) is None
        with pytest.raises(BusyError):
            with exclusive_lock(path, what="output folder out", fix="wait"):
                pass
    assert not path.exists()


def test_a_users_file_named_like_an_old_temporary_survives_an_edit(job_file, tmp_path: Path) -> None:
    for name in (".out.deadbeef.tmp", ".out.0badc0de.old"):
        (tmp_path / name).write_text("mine")
    dead = tmp_path / f".out.{0x7FFFFFF0:08x}00000000.tmp"
    dead.symlink_to(tmp_path / "clip.mp4")  # stmod's name with a dead pid, but a link: not stmod's
    assert run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV).exit_code == 0
    assert (tmp_path / ".out.deadbeef.tmp").read_text() == "mine" and (tmp_path / ".out.0badc0de.old").exists()
    assert dead.is_symlink() and (tmp_path / "clip.mp4").is_file()
    assert clean_stale_temporaries(tmp_path) == []


def test_overwrite_refuses_an_output_holding_a_users_file(job_file, tmp_path: Path) -> None:
    job = job_file()
    assert run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV).exit_code == 0
    (tmp_path / "out" / "review.md").write_text("my review")
    (tmp_path / "out" / "attention_notes").mkdir()
    (tmp_path / "out" / "attention_notes" / "a.txt").write_text("x")
    before = _snapshot(tmp_path)
    for command in ("check", "edit"):
        _refused(run_cli([*TESTING, command, str(job), "--overwrite", "--quiet"][:None if command == "edit" else -1],
                         env=ENV), "review.md", "attention_notes", "stmod did not write")
    assert _snapshot(tmp_path) == before
    (tmp_path / "out" / "review.md").unlink()
    (tmp_path / "out" / "attention_notes" / "a.txt").unlink()
    (tmp_path / "out" / "attention_notes").rmdir()
    assert run_cli([*TESTING, "edit", str(job), "--overwrite", "--quiet"], env=ENV).exit_code == 0


def test_marker_records_what_stmod_wrote(tmp_path: Path) -> None:
    with atomic_folder(tmp_path / "out", kind="edit output") as folder:
        (folder / "a.txt").write_text("a")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text("b")
    assert read_marker(tmp_path / "out") == {"stmod": "edit output", "files": ["a.txt", "sub", "sub/b.txt"]}
    assert unknown_entries(tmp_path / "out") == [] and replace_problem(tmp_path / "out", "edit output") is None
    (tmp_path / "out" / "sub" / "c.txt").write_text("c")
    (tmp_path / "out" / "new").mkdir()
    (tmp_path / "out" / "new" / "d.txt").write_text("d")
    assert unknown_entries(tmp_path / "out") == ["new", "sub/c.txt"]
    with pytest.raises(NotOwnedError, match="new, sub/c.txt"):
        with atomic_folder(tmp_path / "out", kind="edit output"):
            pass
    assert (tmp_path / "out" / "new" / "d.txt").read_text() == "d"


def test_a_folder_another_run_writes_into_is_not_replaced(tmp_path: Path) -> None:
    """`edit --out old/sub` running while another run replaces `old` with --overwrite: its lock and
    temporary inside `old` are not stmod's files of `old`, so the replacement is refused."""
    with atomic_folder(tmp_path / "old", kind="edit output") as folder:
        (folder / "result.mp4").write_text("v")
    with exclusive_lock(tmp_path / "old" / ".sub.lock", what="output folder old/sub", fix="wait"):
        with pytest.raises(NotOwnedError, match=".sub.lock"):
            with atomic_folder(tmp_path / "old", kind="edit output") as folder:
                (folder / "result.mp4").write_text("w")
    assert (tmp_path / "old" / "result.mp4").read_text() == "v"


@pytest.mark.parametrize("found, wanted, ok", [("edit output", "tiny model", False), ("tiny model", "edit output", False),
                                               ("layout output", "edit output", True), ("edit output", "edit output", True),
                                               ("shapes model", "tiny model", False)])
def test_marker_kinds_keep_models_and_outputs_apart(tmp_path: Path, found: str, wanted: str, ok: bool) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    write_marker(folder, found, [])
    assert (replace_problem(folder, wanted) is None) == ok


def test_tiny_folder_pointed_at_an_edit_output_is_refused(job_file, tmp_path: Path) -> None:
    """`backbone: {name: tiny, folder: <an earlier edit's output>}`: check used to delete it and write a model."""
    assert run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV).exit_code == 0
    job = job_file(name="model.yaml", backbone={"name": "tiny", "folder": str(tmp_path / "out")},
                   modulator="st-layout", output="out2")
    before = _snapshot(tmp_path)
    _refused(run_cli([*TESTING, "check", str(job)], env=ENV), "edit output folder", "not a tiny model")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["nowhere", "notes.txt"])
def test_check_and_edit_agree_on_an_output_link(job_file, tmp_path: Path, target: str) -> None:
    """`--out` a dangling link (or a link to a file) with --overwrite: `check` said ok, `edit` refused."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / target)
    job = job_file()
    before = _snapshot(tmp_path)
    for command in ("check", "edit"):
        _refused(run_cli([*TESTING, command, str(job), "--out", str(tmp_path / "link"), "--overwrite", "--quiet"]
                         [:None if command == "edit" else -1], env=ENV), "symbolic link")
    assert _snapshot(tmp_path) == before
