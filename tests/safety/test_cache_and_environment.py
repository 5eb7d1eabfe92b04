"""Cache entries verify or miss; environment problems are one-line user errors naming path and cause."""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stmod.core.errors import BusyError
from stmod.core.io.locks import exclusive_lock, read_holder
from stmod.core.pipeline.cache import InversionCache
from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}
TESTING = ["-p", "stmod.testing"]


def _one_line_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------ cache


def _entry(root: Path) -> tuple[InversionCache, str, dict[int, torch.Tensor]]:
    cache = InversionCache(root)
    trajectory = {0: torch.zeros(2, 4, 8, 8), 981: torch.randn(2, 4, 8, 8)}
    cache.save("k" * 32, trajectory)
    return cache, "k" * 32, trajectory


def test_cache_round_trip_and_marker(tmp_path: Path) -> None:
    cache, key, trajectory = _entry(tmp_path / "inversion")
    loaded = cache.load(key)
    assert torch.equal(loaded.trajectory[981], trajectory[981])
    assert (tmp_path / "inversion" / ".stmod-owned").is_file()


@pytest.mark.parametrize("damage", ["flip", "truncate", "old format", "empty"])
def test_damaged_cache_entry_is_a_miss_with_a_warning(tmp_path: Path, damage: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cache, key, trajectory = _entry(tmp_path)
    path = cache.path(key)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0x01  # one bit in the tensor data: torch.load alone would accept it
    elif damage == "truncate":
        blob = blob[: len(blob) - 100]
    elif damage == "old format":
        blob = bytearray(blob.partition(b"\n")[2])  # a bare torch.save file, as stmod wrote before
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    with caplog.at_level(logging.WARNING, logger="stmod"):
        assert cache.load(key) is None
    assert "damaged entry" in caplog.text


def test_flipped_cache_bytes_never_change_an_edit(job_file, tmp_path: Path, own_cache: Path) -> None:
    """The issue's case: flipped bytes in the entry gave a different result with exit 0."""
    job = job_file()
    assert run_cli([*TESTING, "edit", str(job), "--quiet", "--out", str(tmp_path / "a")], env=ENV).exit_code == 0
    (entry,) = (own_cache / "inversion").glob("*.pt")
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # inside the tensor data: torch.load alone would accept it
    entry.write_bytes(bytes(blob))
    result = run_cli([*TESTING, "edit", str(job), "--quiet", "--out", str(tmp_path / "b")], env=ENV)
    assert result.exit_code == 0 and "damaged entry" in result.stderr
    runs = [json.loads((tmp_path / name / "run.json").read_text()) for name in "ab"]
    assert [r["inversion"]["cached"] for r in runs] == [False, False]
    assert (tmp_path / "a" / "eval").exists()
    from stmod.core.io.video import read_video

    first, _ = read_video(tmp_path / "a" / "eval" / "result.mkv")
    second, _ = read_video(tmp_path / "b" / "eval" / "result.mkv")
    assert np.array_equal(first, second)


def test_unwritable_cache_warns_and_the_edit_goes_on(job_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder that cannot be created (a file is in the way; as root no permission blocks it)."""
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("STMOD_CACHE_DIR", str(blocker))
    result = run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "continuing without caching" in result.stderr and blocker.read_text() == "not a folder"


def test_full_cache_disk_warns_and_the_edit_goes_on(job_file, monkeypatch: pytest.MonkeyPatch) -> None:
    import stmod.core.pipeline.cache as cache_module

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(cache_module, "write_entry", full)
    result = run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV)
    assert result.exit_code == 0 and "No space left on device" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_cache_warns_and_the_edit_goes_on(job_file, own_cache: Path) -> None:
    (own_cache / "inversion").mkdir()
    (own_cache / "inversion").chmod(0o555)
    try:
        result = run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV)
    finally:
        (own_cache / "inversion").chmod(0o755)
    assert result.exit_code == 0 and "continuing without caching" in result.stderr


# ------------------------------------------------------------------------------------------------ locks


def test_lock_refuses_a_second_holder_and_is_released(tmp_path: Path) -> None:
    path = tmp_path / ".out.lock"
    with exclusive_lock(path, what="output folder out", fix="wait"):
        assert read_holder(path)["pid"] == os.getpid()
        with pytest.raises(BusyError, match=f"pid {os.getpid()}"):
            with exclusive_lock(path, what="output folder out", fix="wait"):
                pass
    assert not path.exists()
    with exclusive_lock(path, what="output folder out", fix="wait"):
        pass


def test_stale_lock_file_of_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / ".out.lock"
    path.write_text(json.dumps({"pid": 0x7FFFFFF0, "host": "here", "since": "long ago"}))
    with exclusive_lock(path, what="output folder out", fix="wait"):
        assert read_holder(path)["pid"] == os.getpid()


def test_edit_into_a_locked_output_is_refused(job_file, tmp_path: Path) -> None:
    job = job_file()
    with exclusive_lock(tmp_path / ".out.lock", what="x", fix="y"):
        _one_line_exit_2(run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV),
                         "in use by another stmod run", f"pid {os.getpid()}", "--out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------- environment


def test_non_utf8_job_file(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_bytes("prompt: une voiture rouge \u00e9\n".encode("latin-1"))
    _one_line_exit_2(run_cli([*TESTING, "check", str(job)], env=ENV), str(job), "not UTF-8", "0xe9")


@pytest.mark.parametrize("key", ["video", "output", "layout"])
def test_nul_byte_in_a_path(job_file, key: str) -> None:
    bad = {"video": {"video": {"path": "clip\0.mp4", "frames": 4, "size": [64, 64]}},
           "output": {"output": "out\0put"},
           "layout": {"layout": {"name": "masks", "dir": "mas\0ks"}}}[key]
    _one_line_exit_2(run_cli([*TESTING, "check", str(job_file(**bad))], env=ENV), "NUL byte")


def test_output_name_too_long(job_file, tmp_path: Path) -> None:
    _one_line_exit_2(run_cli([*TESTING, "check", str(job_file(output="o" * 250))], env=ENV), "too long",
                     "ENAMETOOLONG")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_parent_is_a_file(job_file, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    _one_line_exit_2(run_cli([*TESTING, "check", str(job_file(output="plain/out"))], env=ENV),
                     "is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_parent_is_refused_before_the_run(job_file, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        _one_line_exit_2(run_cli([*TESTING, "edit", str(job_file(output="ro/out")), "--quiet"], env=ENV),
                         str(parent), "refuses new files")
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT])
def test_write_failure_from_the_environment_is_a_user_error(job_file, tmp_path: Path, code: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up (or a size limit is hit) while the outputs are written: one line, no partial folder."""
    import stmod.core.io.outputs as outputs

    def failing(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(outputs, "write_gif", failing)
    result = run_cli([*TESTING, "edit", str(job_file()), "--quiet"], env=ENV)
    _one_line_exit_2(result, "result.gif", errno.errorcode[code])
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width × height`` pixels (the data is one tiny, broken row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("pixels", [(100_000, 100_000), (10_000, 10_000)])
def test_decompression_bomb_frame_is_refused(job_file, tmp_path: Path, pixels: tuple[int, int]) -> None:
    """A header declaring 10^10 (error in Pillow) or 10^8 pixels (only a warning in Pillow) is refused unread."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        _png_header(frames / f"{i:05d}.png", *pixels)
    job = job_file(video={"path": "frames", "frames": 4, "size": [64, 64]})
    _one_line_exit_2(run_cli([*TESTING, "check", str(job)], env=ENV), "00000.png", "decompression bomb")
