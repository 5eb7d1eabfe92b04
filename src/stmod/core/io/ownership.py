"""What stmod may delete or replace: only what it created and marked as its own.

* Every folder stmod creates (edit and layout outputs, generated model folders, the inversion cache,
  the demo folder) carries :data:`MARKER`, written before anything else goes in.
* A folder is replaced or deleted only when it is absent, empty, or carries the marker
  (:func:`replace_problem`); anything else is refused with a :class:`~stmod.core.errors.NotOwnedError`.
* Temporaries are named ``.NAME.<16 hex>.tmp`` (and ``.NAME.<16 hex>.old`` for a folder moved aside
  while it is replaced); the first 8 hex digits are the writer's pid, so a later run removes those
  whose writer is gone (:func:`clean_stale_temporaries`): a regular file, or a folder carrying the
  marker, never a link, an unmarked folder or a name without a pid.
* An output must not be, contain or lie inside an input (:func:`input_overlap`), compared as real paths.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from stmod.core.errors import NotOwnedError

__all__ = [
    "MARKER", "write_marker", "read_marker", "folder_entries", "unknown_entries", "kind_problem", "is_owned", "replace_problem", "require_replaceable", "remove_owned_tree",
    "temp_sibling", "parse_temporary", "pid_alive", "stale_temporaries", "clean_stale_temporaries",
    "atomic_path", "atomic_folder", "real", "input_overlap", "name_problem", "write_problem", "TEMP_NAME_EXTRA",
    "MIN_FREE_BYTES",
]

log = logging.getLogger(__name__)

#: The file that says "stmod created this folder" (a small JSON record: what it is).
MARKER = ".stmod-owned"
#: Characters a temporary sibling adds to a name (``.`` + ``.<16 hex>.tmp``): names must leave room for it.
TEMP_NAME_EXTRA = 1 + 1 + 16 + 4
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{16}|[0-9a-f]{8})\.(?P<kind>tmp|old)$")


def write_marker(folder: Path, kind: str, files: Iterable[str] | None = None) -> None:
    """Mark ``folder`` (just created by stmod) as stmod's own ``kind`` of folder; ``files``: every entry
    stmod wrote into it (relative paths), recorded once it is complete, so that what others add later
    is known as theirs (:func:`unknown_entries`)."""
    record: dict[str, object] = {"stmod": kind}
    if files is not None:
        record["files"] = sorted(files)
    (Path(folder) / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def read_marker(folder: Path) -> dict | None:
    """The marker record of ``folder`` (``{"stmod": kind, "files": [...]}``), or ``None`` when unmarked;
    an unreadable marker reads as ``{}`` (marked, kind unknown)."""
    if not is_owned(folder):
        return None
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_entries(folder: Path) -> list[str]:
    """Every file, folder and link under ``folder`` (relative, ``/``-separated; links not followed),
    the marker excluded."""
    found = []
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into links to folders
        base = Path(root).relative_to(folder)
        found += [(base / name).as_posix() for name in [*dirs, *files]]
    return sorted(entry for entry in found if entry != MARKER)


def unknown_entries(folder: Path) -> list[str]:
    """What lies in the marked ``folder`` that stmod did not write (the top-most of each added tree);
    ``[]`` for a folder whose marker lists nothing (written before stmod recorded its files)."""
    marker = read_marker(folder) or {}
    listed = marker.get("files")
    if not isinstance(listed, list):
        return []
    known = set(map(str, listed))
    extra = [entry for entry in folder_entries(folder) if entry not in known]
    return [entry for entry in extra if not any(entry.startswith(other + "/") for other in extra)]


#: Marker kinds that may replace each other: the two outputs of stmod's commands.
_OUTPUT_KINDS = frozenset({"edit output", "layout output"})


def kind_problem(found: object, wanted: str | None) -> str | None:
    """Why a folder marked as ``found`` may not become a ``wanted`` one (a model folder is never an edit
    output, and the reverse), or ``None``."""
    if wanted is None or found is None or found == wanted or {found, wanted} <= _OUTPUT_KINDS:
        return None
    return (f"is a {found} folder stmod wrote, not a {wanted} folder; stmod will not replace one kind with "
            "another: choose another path")


def is_owned(folder: Path) -> bool:
    """Whether ``folder`` is a real folder (not a link) that carries stmod's marker."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file()


def replace_problem(path: Path, kind: str | None = None) -> str | None:
    """Why stmod may not replace ``path`` with a ``kind`` folder (any kind when ``None``), or ``None``
    when it may: absent, an empty folder, or marked as a folder of that kind holding only what stmod
    wrote there."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() and not path.is_dir():
        return "is a symbolic link that stmod did not create; remove it or choose another path"
    if path.is_symlink():  # a link to a folder: the folder it points to is what would be replaced
        path = real(path)
    if not path.is_dir():
        return "is a file, not a folder stmod wrote; move it away or choose another path"
    if not is_owned(path):
        if not any(path.iterdir()):
            return None
        return (f"holds files stmod did not write (it has no {MARKER} marker), so stmod will not replace it, "
                "not even with overwrite=True; choose another path or empty it yourself")
    problem = kind_problem((read_marker(path) or {}).get("stmod"), kind)
    if problem is not None:
        return problem
    extra = unknown_entries(path)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return (f"holds {len(extra)} file(s) stmod did not write ({shown}); stmod replaces only what it wrote, "
                "not even with overwrite=True: move them away or choose another path")
    return None


def require_replaceable(path: Path, kind: str | None = None) -> None:
    """Raise :class:`NotOwnedError` unless :func:`replace_problem` allows replacing ``path`` (by a ``kind`` folder)."""
    problem = replace_problem(path, kind)
    if problem is not None:
        raise NotOwnedError(str(path), problem)


def remove_owned_tree(path: Path) -> None:
    """Delete the folder ``path`` if it carries stmod's marker (or is empty); refuse otherwise."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
        return
    if not is_owned(path):
        raise NotOwnedError(str(path), f"stmod does not delete a folder it did not create (no {MARKER} marker)")
    shutil.rmtree(path)


# ----------------------------------------------------------------------------------------- temporaries


def temp_sibling(target: Path, kind: str = "tmp") -> Path:
    """``.NAME.<pid:08x><random:8 hex>.<kind>`` beside ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid():08x}{secrets.token_hex(4)}.{kind}")


def parse_temporary(name: str) -> tuple[str, int | None, str] | None:
    """``(target name, writer pid or None, "tmp" | "old")`` of one of stmod's temporary names, else ``None``.

    An 8-digit token (stmod before pids were recorded) has no pid."""
    match = _TEMP.match(name)
    if match is None:
        return None
    token = match["token"]
    return match["name"], (int(token[:8], 16) if len(token) == 16 else None), match["kind"]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (this process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: keep its files
    return True


def stale_temporaries(folder: Path, *, name: str | None = None,
                      alive: Callable[[int], bool] = pid_alive) -> list[Path]:
    """stmod's temporaries in ``folder`` (for target ``name``, or all) whose writer is no longer running."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    stale = []
    for entry in entries:
        parsed = parse_temporary(entry.name)
        if parsed is None or (name is not None and parsed[0] != name) or entry.is_symlink():
            continue
        pid = parsed[1]
        # no pid (the older 8-digit form) is no identity: a user's ``.out.deadbeef.tmp`` looks the same
        if pid is not None and pid != os.getpid() and not alive(pid):
            stale.append(entry)
    return sorted(stale)


def _discard(path: Path) -> bool:
    """Remove one temporary: a file, a marked or empty folder; returns whether it is gone."""
    try:
        if path.is_dir() and not path.is_symlink():
            remove_owned_tree(path)
        else:
            path.unlink(missing_ok=True)
        return True
    except (OSError, NotOwnedError) as exc:
        log.warning("left %s in place: %s", path, exc)
        return False


def clean_stale_temporaries(folder: Path, *, name: str | None = None) -> list[Path]:
    """Remove what :func:`stale_temporaries` finds (a killed run's leftovers); returns what was removed."""
    removed = [path for path in stale_temporaries(folder, name=name) if _discard(path)]
    for path in removed:
        log.info("removed %s, left behind by an interrupted stmod run", path)
    return removed


# ------------------------------------------------------------------------------------------ atomic writes


def real(path: Path | str) -> Path:
    """The absolute path with every symbolic link resolved (the path need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _swap_in(tmp: Path, target: Path, kind: str | None = None) -> None:
    """Move the finished ``tmp`` onto ``target``; an older folder there is moved aside, then deleted."""
    if tmp.is_dir() and target.is_dir() and any(target.iterdir()):
        # checked again: it may have changed during a long run (a user's file added, a run writing inside)
        require_replaceable(target, kind)
        old = temp_sibling(target, "old")
        os.replace(target, old)
        os.replace(tmp, target)
        remove_owned_tree(old)
    else:
        os.replace(tmp, target)


@contextmanager
def atomic_path(path: Path | str, *, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; on success move it onto ``path``.

    On error the temporary is removed and ``path`` is left as it was. A folder replaces an existing
    folder only when stmod may replace it (:func:`replace_problem`, with a ``kind`` folder). A link at
    ``path`` to a folder stays: its target is what gets written.
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        path = real(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        _swap_in(tmp, path, kind)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary, created just now
        else:
            with _ignored_os_errors():
                tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path | str, *, kind: str) -> Iterator[Path]:
    """:func:`atomic_path` for a folder stmod creates: refused up front when ``path`` may not be replaced;
    the temporary folder is made and marked (``kind``) before it is yielded; once the block is done the
    marker records every entry written, so what others add later is never taken for stmod's."""
    require_replaceable(Path(path), kind)
    with atomic_path(path, kind=kind) as tmp:
        tmp.mkdir()
        write_marker(tmp, kind)
        yield tmp
        write_marker(tmp, kind, folder_entries(tmp))


@contextmanager
def _ignored_os_errors() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


# --------------------------------------------------------------------------------------------- overlap


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def input_overlap(output: Path, inputs: Iterable[tuple[str, Path, bool]]) -> str | None:
    """Why ``output`` may not be written, given ``inputs`` ``(what, path, output may lie inside it)``:
    it is an input, contains one, or lies inside one. Real paths are compared; ``None`` when disjoint."""
    out = real(output)
    for what, path, inside_ok in inputs:
        where = real(path)
        if out == where:
            return f"is the {what} {path}"
        if _inside(where, out):
            return f"contains the {what} {path}"
        if not inside_ok and _inside(out, where):
            return f"lies inside the {what} {path}"
    return None


def name_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a name stmod writes to, or ``None``: a NUL byte or another control character
    (a newline), a lone surrogate, or a part too long for the file system (the last one with room for its
    temporary sibling's suffix)."""
    text = os.fspath(path)
    if "\0" in text:
        return "contains a NUL byte; remove it"
    control = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if control is not None:  # a newline in a folder name breaks every listing and script that meets it
        return f"contains the control character {control!r}; remove it"
    try:
        os.fsencode(text)
    except UnicodeError:
        return "contains characters the file system cannot encode (a lone surrogate); remove them"
    folder = _existing_ancestor(Path(text))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    parts = Path(text).parts
    for i, part in enumerate(parts):
        size = len(os.fsencode(part))
        room = limit - (TEMP_NAME_EXTRA if i == len(parts) - 1 else 0)
        if size > room:
            return (f"has a name of {size} bytes ({part[:16]}...), too long for the file system (at most {room} "
                    "here, as stmod writes a temporary beside it first); choose a shorter one (ENAMETOOLONG)")
    return None


def _existing_ancestor(path: Path) -> Path:
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


#: Less free space (or a lower file-size limit) than this is refused before an edit starts.
MIN_FREE_BYTES = 1 << 20


def write_problem(path: Path) -> str | None:
    """Why nothing can be written at ``path`` (checked on its nearest existing folder by writing and
    removing a probe file), or ``None``: read-only, no permission, a full disk, a tiny file-size limit."""
    folder = _existing_ancestor(Path(path))
    if not folder.is_dir():
        return f"cannot be created: {folder} is a file, not a folder"
    probe = temp_sibling(folder / "stmod-probe")
    try:
        with open(probe, "xb") as handle:
            handle.write(b"stmod write probe\n")
            handle.flush()
            os.fsync(handle.fileno())
        stats = os.statvfs(folder)
    except OSError as exc:
        return f"cannot be written: {folder} refuses new files ({exc.strerror or exc}); write elsewhere"
    finally:
        with _ignored_os_errors():
            probe.unlink(missing_ok=True)
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        return f"cannot be written: {folder} has only {free} bytes free (the disk is full); free space or write elsewhere"
    limit = _file_size_limit()
    if limit is not None and limit < MIN_FREE_BYTES:
        return (f"cannot be written: this process may not write files over {limit} bytes (ulimit -f); "
                "raise the limit")
    return None


def _file_size_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)
