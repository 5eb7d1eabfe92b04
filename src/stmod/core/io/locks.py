"""Exclusive lock files: one stmod run at a time per output folder and per batch.

The lock is the pinned ``filelock`` library's (``flock`` on POSIX, which the kernel releases when the
holder dies however it dies, ``SIGKILL`` included; a marker file where ``flock`` is missing). A lock
file nobody holds is stale and is taken over. The file also holds its holder's record (``stmod``,
pid, host, start time), which the refusal quotes and which is its identity: a file at the lock's
path that is not one of stmod's records (a user's ``.out.lock``), or a symbolic link, is refused,
never opened for writing, followed or deleted. The second run gets a
:class:`~stmod.core.errors.BusyError`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import filelock

from stmod.core.errors import BusyError, NotOwnedError

__all__ = ["exclusive_lock", "lock_path_for", "read_holder", "lock_problem", "is_lock_record"]

log = logging.getLogger(__name__)

#: The ``stmod`` entry of a lock record (older records without it are known by their pid and host).
LOCK_KIND = "lock"


def lock_path_for(target: Path) -> Path:
    """``.NAME.lock`` beside ``target``: outside it, so replacing ``target`` keeps the lock."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


def read_holder(path: Path) -> dict:
    """What a lock file says about its holder (``{}`` when unreadable, or not a lock record)."""
    try:
        if Path(path).is_symlink():
            return {}
        with open(path, "rb") as handle:
            data = json.loads(handle.read(4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_lock_record(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) is a lock record stmod writes, or empty (a lock file
    created, not yet written)."""
    if not data.strip():
        return True
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and (record.get("stmod") == LOCK_KIND or {"pid", "host"} <= record.keys())


def lock_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as stmod's lock file, or ``None`` (absent, or one of its records)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link where stmod keeps its lock file; stmod does not follow it: remove the link"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file, yet stmod keeps its lock file there: move it away"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(head) >= 4096 or not is_lock_record(head):
        return ("is a file stmod did not write (not one of its lock records), named like the lock stmod keeps "
                "beside the output; stmod neither overwrites nor deletes it: move or rename it")
    return None


def _record() -> bytes:
    since = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return json.dumps({"stmod": LOCK_KIND, "pid": os.getpid(), "host": socket.gethostname(),
                       "since": since}).encode()


def _write_record(fd: int) -> None:
    """``filelock``'s ``on_acquired``: the held file now says who holds it (a stale holder's record is
    replaced: that is the takeover)."""
    stale = os.pread(fd, 4096, 0)
    if stale.strip():
        log.info("taking over a stale lock file (its holder no longer runs): %s", stale[:200].decode("utf-8", "replace"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, _record(), 0)


@contextmanager
def exclusive_lock(path: Path, *, what: str, fix: str) -> Iterator[Path]:
    """Hold the lock file ``path`` for the ``with`` block; ``what`` and ``fix`` word the refusal.

    :raises BusyError: when another live process holds it.
    :raises NotOwnedError: when ``path`` is a link or a file that is not one of stmod's lock records.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    problem = lock_problem(path)
    if problem is not None:
        raise NotOwnedError(str(path), problem)
    # O_NOFOLLOW inside filelock: a link planted between the check and the open is refused (ELOOP), not followed
    lock = filelock.FileLock(path, timeout=0, on_acquired=_write_record)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BusyError(what, str(path), read_holder(path), fix) from None
    except OSError as exc:
        problem = lock_problem(path) or f"cannot be locked ({exc.strerror or exc})"
        raise NotOwnedError(str(path), problem) from exc
    try:
        yield path
    finally:
        with suppress(OSError):
            os.unlink(path)  # before releasing: a run that opened this file meanwhile finds it unlinked, retries
        lock.release()
