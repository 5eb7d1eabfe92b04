"""stmod deletes or replaces only what it created and marked; temporaries of its own naming only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stmod.core.errors import NotOwnedError
from stmod.core.io.ownership import (MARKER, atomic_folder, clean_stale_temporaries, input_overlap, name_problem,
                                     parse_temporary, remove_owned_tree, replace_problem, stale_temporaries,
                                     temp_sibling, write_marker, write_problem)


def _foreign(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "precious.txt").write_text("mine")
    return folder


def test_replace_problem_allows_only_absent_empty_or_marked(tmp_path: Path) -> None:
    assert replace_problem(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert replace_problem(tmp_path / "empty") is None
    marked = _foreign(tmp_path / "marked")
    write_marker(marked, "test")
    assert replace_problem(marked) is None
    assert "no .stmod-owned marker" in replace_problem(_foreign(tmp_path / "foreign"))
    (tmp_path / "file").write_text("x")
    assert "is a file" in replace_problem(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert "symbolic link" in replace_problem(tmp_path / "link")


def test_a_link_to_a_folder_is_judged_by_its_target(tmp_path: Path) -> None:
    """Writing through a link replaces the folder it points to (the link stays): that folder decides."""
    target = _foreign(tmp_path / "target")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    assert "no .stmod-owned marker" in replace_problem(tmp_path / "link")
    write_marker(target, "test")
    assert replace_problem(tmp_path / "link") is None
    with atomic_folder(tmp_path / "link", kind="test") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (tmp_path / "link").is_symlink() and (target / "new.txt").is_file()
    assert not (target / "precious.txt").exists()


def test_remove_owned_tree_refuses_a_foreign_folder(tmp_path: Path) -> None:
    foreign = _foreign(tmp_path / "foreign")
    with pytest.raises(NotOwnedError, match="did not create"):
        remove_owned_tree(foreign)
    assert (foreign / "precious.txt").read_text() == "mine"
    write_marker(foreign, "test")
    remove_owned_tree(foreign)
    assert not foreign.exists()


def test_a_marker_in_a_linked_folder_does_not_count(tmp_path: Path) -> None:
    """A link to a marked folder is not stmod's folder: removing through it is refused."""
    marked = _foreign(tmp_path / "marked")
    write_marker(marked, "test")
    (tmp_path / "link").symlink_to(marked, target_is_directory=True)
    with pytest.raises(NotOwnedError):
        remove_owned_tree(tmp_path / "link")
    assert (marked / "precious.txt").exists()


def test_atomic_folder_refuses_foreign_and_replaces_marked(tmp_path: Path) -> None:
    foreign = _foreign(tmp_path / "out")
    with pytest.raises(NotOwnedError):
        with atomic_folder(foreign, kind="test") as tmp:
            (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in foreign.iterdir()] == ["precious.txt"]
    write_marker(foreign, "test")
    with atomic_folder(foreign, kind="test") as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in foreign.iterdir()) == [MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .old or .tmp left


def test_atomic_folder_failure_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_folder(out, kind="test") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(out, kind="test") as tmp:
            (tmp / "a.txt").write_text("second")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_temporary_names_carry_the_writer_pid(tmp_path: Path) -> None:
    tmp = temp_sibling(tmp_path / "out")
    assert parse_temporary(tmp.name) == ("out", os.getpid(), "tmp")
    assert parse_temporary(".out.1a2b3c4d.tmp") == ("out", None, "tmp")  # older stmod: no pid
    for name in (".out.lock", ".out.xyz12345.tmp", "out.1a2b3c4d.tmp", ".out.1a2b3c4d.tmp.bak", ".stmod-owned",
                 ".out.1a2b3c4d5.tmp"):
        assert parse_temporary(name) is None, name


def test_only_stale_temporaries_of_stmod_naming_are_cleaned(tmp_path: Path) -> None:
    dead, alive = 0x7FFFFFF0, os.getpid()
    stale_file = tmp_path / f".out.{dead:08x}00000000.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".out.{dead:08x}00000001.old"
    stale_dir.mkdir()
    write_marker(stale_dir, "edit output")
    (stale_dir / "result.mp4").write_text("x")
    running = tmp_path / f".out.{alive:08x}00000002.tmp"
    running.write_text("being written")
    lookalike = tmp_path / f".out.{dead:08x}00000003.tmp"  # stmod's name, but a folder it did not mark
    _foreign(lookalike)
    keep = [tmp_path / ".out.lock", tmp_path / "out.tmp", tmp_path / ".other.txt"]
    for path in keep:
        path.write_text("keep")
    assert stale_temporaries(tmp_path, name="other") == []
    removed = clean_stale_temporaries(tmp_path, name="out")
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert running.exists() and (lookalike / "precious.txt").exists() and all(p.exists() for p in keep)


def test_input_overlap_compares_real_paths(tmp_path: Path) -> None:
    clip_dir = tmp_path / "frames"
    clip_dir.mkdir()
    (tmp_path / "alias").symlink_to(clip_dir, target_is_directory=True)
    inputs = [("video.path input", clip_dir, False), ("job folder", tmp_path, True)]
    assert "is the video.path input" in input_overlap(clip_dir, inputs)
    assert "is the video.path input" in input_overlap(tmp_path / "alias", inputs)
    assert "lies inside the video.path input" in input_overlap(tmp_path / "alias" / "out", inputs)
    assert "contains the video.path input" in input_overlap(tmp_path.parent, inputs)
    assert "is the job folder" in input_overlap(tmp_path, inputs[1:])
    assert input_overlap(tmp_path / "out", inputs) is None  # beside the job file: the usual place


def test_name_problem(tmp_path: Path) -> None:
    assert "NUL byte" in name_problem(Path(str(tmp_path / "a\0b")))
    assert "too long" in name_problem(tmp_path / ("x" * 250))  # fits alone, not with its temporary's suffix
    assert name_problem(tmp_path / ("x" * 200)) is None


def test_write_problem(tmp_path: Path) -> None:
    assert write_problem(tmp_path / "a" / "b") is None
    (tmp_path / "file").write_text("x")
    assert "is a file" in write_problem(tmp_path / "file" / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # the probe is gone


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_problem_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert "refuses new files" in write_problem(folder / "out")
    finally:
        folder.chmod(0o755)
