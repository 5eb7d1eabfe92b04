"""Exclusive lock files: one stmod run at a time per output folder and per batch.

A lock file holds its holder's pid, host and start time. On POSIX it is also ``flock``-ed, which the
kernel releases when the holder dies however it dies (``SIGKILL`` included): a lock file nobody holds
is stale and is taken over. Without ``flock`` (Windows) the file is created exclusively and is stale
when its pid no longer runs on this host. The second run gets a :class:`~stmod.core.errors.BusyError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stmod.core.errors import BusyError
from stmod.core.io.ownership import pid_alive

__all__ = ["exclusive_lock", "lock_path_for", "read_holder"]

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def lock_path_for(target: Path) -> Path:
    """``.NAME.lock`` beside ``target``: outside it, so replacing ``target`` keeps the lock."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def read_holder(path: Path) -> dict:
    """What a lock file says about its holder (``{}`` when unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record() -> bytes:
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode()


def _flock(path: Path, what: str, fix: str) -> int:
    """Open and ``flock`` ``path``; retried when a releasing holder unlinked the file we opened."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(what, str(path), read_holder(path), fix) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the file was replaced under us: lock the current one


def _exclusive_create(path: Path, what: str, fix: str) -> int:
    """Fallback without ``flock``: create ``path`` exclusively, taking over a dead holder's file once."""
    for _ in range(2):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid") or 0)):
                Path(path).unlink(missing_ok=True)
                continue
            raise BusyError(what, str(path), holder, fix) from None
    raise BusyError(what, str(path), read_holder(path), fix)


@contextmanager
def exclusive_lock(path: Path, *, what: str, fix: str) -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block; ``what`` and ``fix`` word the refusal.

    :raises BusyError: when another live process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _flock(path, what, fix) if fcntl is not None else _exclusive_create(path, what, fix)
    try:
        stale = read_holder(path)
        if stale:
            log.info("taking over the stale lock %s of pid %s, which is no longer running", path, stale.get("pid"))
        os.ftruncate(fd, 0)
        os.write(fd, _record())
        yield path
    finally:
        try:
            os.unlink(path)  # before releasing: a waiting run then creates a fresh file
        except OSError:
            pass
        os.close(fd)
