"""Errors raised by stmod.

Every error a user can cause is a :class:`StmodError`. Each subclass carries the data that explains it
(the offending key, name or value and what would fix it), so callers can react programmatically and the
CLI can print one clear line and exit with status 2. Anything that is *not* a ``StmodError`` is a bug
and exits with status 1.
"""

from __future__ import annotations

import errno
import os
import re
import reprlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = [
    "show",
    "StmodError",
    "UsageError",
    "ConfigError",
    "UnknownComponentError",
    "PluginConflictError",
    "PluginLoadError",
    "ComponentContractError",
    "PluginComponentError",
    "InputError",
    "LayoutError",
    "PromptError",
    "CheckpointError",
    "MissingFilesError",
    "OutputExistsError",
    "MissingDependencyError",
    "NotOwnedError",
    "BusyError",
    "EnvironmentProblem",
    "environment_problem",
    "environment_errors",
    "EditCancelled",
]


class EditCancelled(Exception):
    """A step callback stopped the edit (``callback_on_step_end`` returned ``False``); nothing was written.

    Not a :class:`StmodError`: nothing is wrong with the job.
    """


#: Longest shown form of a value in a message: a 10 MB prompt or a huge list stays one readable line.
SHOW_LIMIT = 80
#: Longest message: past it the middle is cut, so the start (what) and the end (the fix) survive.
MESSAGE_LIMIT = 600

# reprlib never builds the full repr, so even a huge (or deeply shared) value costs little to show.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, SHOW_LIMIT, SHOW_LIMIT, SHOW_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def show(value: object, limit: int = SHOW_LIMIT) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters (cut with ``…``).

    Every message that shows a user's value goes through here, so none can repr a huge value.
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past Python's str-digits limit (YAML reads 10**5000 as one)
        text = f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>" if isinstance(value, int) \
            else f"<{type(value).__name__}>"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StmodError(Exception):
    """Root of every error a user can cause; its message is one line that says what to do."""

    def __str__(self) -> str:  # one line, always: the CLI prints exactly this
        text = " ".join(super().__str__().split())
        if len(text) > MESSAGE_LIMIT:
            half = MESSAGE_LIMIT // 2
            text = f"{text[:half]} … {text[-half:]}"
        return text


class UsageError(StmodError):
    """A command line or plugin selection that cannot be honoured."""


class ConfigError(StmodError):
    """A job file or option mapping that does not match the schema.

    :ivar key: the offending key (or ``None`` when the problem is a value).
    :ivar place: dotted path of the mapping that holds it, e.g. ``"modulation"`` (``""`` at top level).
    :ivar suggestion: the closest valid key, if any.
    :ivar source: the file the mapping came from, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        place: str = "",
        suggestion: str | None = None,
        source: str | None = None,
    ) -> None:
        self.key, self.place, self.suggestion, self.source = key, place, suggestion, source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class UnknownComponentError(StmodError):
    """A component name that no loaded plugin registered.

    :ivar kind: component kind, e.g. ``"blender"``.
    :ivar name: the requested name.
    :ivar available: ``{name: providing plugin}`` of what is registered.
    """

    def __init__(self, kind: str, name: str, available: dict[str, str]) -> None:
        self.kind, self.name, self.available = kind, name, dict(available)
        listing = ", ".join(f"{n} (from {p})" for n, p in sorted(available.items())) or "none"
        super().__init__(f"unknown {kind} {name!r}; available: {listing}")


class PluginConflictError(StmodError):
    """Two plugins registered a component of the same kind under the same name.

    :ivar kind: component kind.
    :ivar name: the clashing name.
    :ivar first: plugin that registered it first.
    :ivar second: plugin that tried to register it again.
    """

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(
            f"{kind} {name!r} is registered by both plugin {first!r} and plugin {second!r}; "
            f"block one of them with -p no:{second} (or STMOD_DISABLE_PLUGINS={second})"
        )


class PluginLoadError(StmodError):
    """A plugin that could not be imported or registered.

    :ivar plugin: the plugin (entry-point) name.
    :ivar reason: what went wrong, in one line.
    """

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin, self.reason = plugin, reason
        super().__init__(f"plugin {plugin!r} failed to load: {reason}")


class ComponentContractError(StmodError):
    """A registered component that does not honour its protocol (a plugin bug, named by plugin)."""

    def __init__(self, kind: str, name: str, plugin: str, problem: str) -> None:
        self.kind, self.name, self.plugin, self.problem = kind, name, plugin, problem
        super().__init__(f"{kind} {name!r} from plugin {plugin!r} {problem}")


class PluginComponentError(StmodError):
    """A third-party plugin's component raised (or returned non-finite values) while stmod used it:
    that plugin's bug, reported as such in one line (the traceback with ``-v``).

    :ivar where: the component's place in the job, e.g. ``"blend (soft)"``.
    :ivar plugin: the plugin that registered it.
    :ivar method: the method that failed (``"factory"`` for its construction).
    """

    def __init__(self, where: str, plugin: str, method: str, problem: str) -> None:
        self.where, self.plugin, self.method = where, plugin, method
        super().__init__(f"{where} from plugin {plugin!r} failed in {method}(): {problem} (a bug in that plugin, "
                         "not in stmod; rerun with -v for the traceback, or choose another component)")


class InputError(StmodError):
    """An input file or value that cannot be used (unreadable video, bad frame selection, ...).

    :ivar argument: the argument or job key at fault, e.g. ``"video.path"``.
    :ivar value: its value.
    """

    def __init__(self, argument: str, value: object, problem: str) -> None:
        self.argument, self.value = argument, value
        super().__init__(f"{argument}={show(value)}: {problem}")


class LayoutError(StmodError):
    """Masks that do not fit the job (missing region, frame count or size mismatch, empty mask, ...).

    :ivar region: the region concerned, if one.
    """

    def __init__(self, message: str, *, region: str | None = None) -> None:
        self.region = region
        super().__init__(message)


class PromptError(StmodError):
    """A prompt that cannot be used: too long, or a local prompt not found in the global prompt.

    :ivar prompt: the offending prompt.
    """

    def __init__(self, message: str, *, prompt: str) -> None:
        self.prompt = prompt
        super().__init__(message)


class CheckpointError(StmodError):
    """Model weights that are missing or unusable; the message says how to provide them.

    :ivar location: the hub id, folder or file that was asked for.
    :ivar problem: what is wrong with it and how to provide it.
    :ivar kind: what it is, when the raiser says: ``"model"`` (the backbone's weights), ``"controlnet"``
        or ``"annotator"`` (a job format can then say where its own layout keeps such files).
    """

    def __init__(self, location: str, problem: str, *, kind: str | None = None) -> None:
        self.location, self.problem, self.kind = location, problem, kind
        super().__init__(f"{location}: {problem}")

    def placed(self, places: dict[str, str]) -> CheckpointError:
        """A copy whose message ends with where ``places`` (kind → sentence) says to put such a file."""
        if self.kind not in places:
            return self
        return CheckpointError(self.location, f"{self.problem}; {places[self.kind]}", kind=self.kind)


class MissingFilesError(CheckpointError):
    """Several weights missing at once (``check`` lists them all rather than one per run).

    :ivar problems: one :class:`CheckpointError` per missing file or folder, in the order checked.
    """

    def __init__(self, problems: Sequence[CheckpointError]) -> None:
        self.problems: tuple[CheckpointError, ...] = tuple(p for error in problems
                              for p in (error.problems if isinstance(error, MissingFilesError) else (error,)))
        StmodError.__init__(self, *self.problems)
        self.location, self.kind = ", ".join(p.location for p in self.problems), None
        self.problem = " | ".join(str(p) for p in self.problems)

    def placed(self, places: dict[str, str]) -> CheckpointError:
        return MissingFilesError([p.placed(places) for p in self.problems])

    def __str__(self) -> str:  # one line; each problem is cut on its own, so none of them is lost
        listed = " | ".join(f"({i}) {p}" for i, p in enumerate(self.problems, 1))
        return f"{len(self.problems)} weights files or folders are missing: {listed}"

    @staticmethod
    def raise_any(problems: Sequence[CheckpointError]) -> None:
        """Raise nothing for no problem, the problem itself for one, a :class:`MissingFilesError` for several."""
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise MissingFilesError(problems)


class OutputExistsError(StmodError):
    """The output folder exists and ``overwrite`` was not asked for (``--overwrite`` on the command line)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"output folder {path} already exists; pass overwrite=True to replace it or choose "
                         "another output")


class MissingDependencyError(StmodError):
    """An optional package a component needs is not installed.

    :ivar component: the component that needs it.
    :ivar packages: what to install.
    """

    def __init__(self, component: str, packages: Sequence[str], extra: str | None = None) -> None:
        self.component, self.packages = component, tuple(packages)
        how = f"pip install 'stmod[{extra}]'" if extra else "pip install " + " ".join(packages)
        super().__init__(f"{component} needs {', '.join(packages)}, which is not installed; run: {how}")


class NotOwnedError(StmodError):
    """stmod was asked to delete or replace something it did not create (it carries no stmod marker),
    or to write where an input lies.

    :ivar path: the folder or file concerned.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"{path}: {problem}")


class BusyError(StmodError):
    """Another running stmod process holds the lock on an output folder or a batch.

    :ivar path: the lock file.
    :ivar holder: what the lock file says about its holder (``{"pid": ..., "host": ...}``).
    """

    def __init__(self, what: str, path: str, holder: dict, fix: str) -> None:
        self.path, self.holder = path, dict(holder)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
        super().__init__(f"{what} is in use by another stmod run ({who}; lock file {path}); {fix}")


#: What the operating system says, and what to do about it, for the errors the environment causes.
_CAUSES = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EFBIG: "a file grew past the file-size limit (ulimit -f) or the file system's maximum; raise the limit "
                 "or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EACCES: "permission denied; fix the permissions or write elsewhere",
    errno.EPERM: "operation not permitted; fix the permissions or write elsewhere",
    errno.ENAMETOOLONG: "a name is too long for the file system; choose a shorter one",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "too many symbolic links in the path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.ENFILE: "too many open files in the system",
    errno.EIO: "an input/output error on the device",
}
if hasattr(errno, "EDQUOT"):
    _CAUSES[errno.EDQUOT] = "the disk quota is exceeded; free some space or write elsewhere"


class EnvironmentProblem(StmodError):
    """The operating system refused a file operation for a reason the user can fix (full disk, file-size
    limit, read-only folder, name too long, ...).

    :ivar path: the file or folder concerned.
    :ivar errno: the ``errno`` code.
    """

    def __init__(self, path: str, code: int | None, cause: str) -> None:
        self.path, self.errno = path, code
        name = f" ({errno.errorcode[code]})" if code is not None and code in errno.errorcode else ""
        super().__init__(f"{path}: {cause}{name}")


def environment_problem(exc: BaseException, path: object = None) -> EnvironmentProblem | None:
    """The user error ``exc`` stands for when the environment caused it (an ``OSError`` with one of the
    codes above), naming its file (or ``path``); ``None`` for anything else (a bug)."""
    if isinstance(exc, EnvironmentProblem):
        return exc
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code not in _CAUSES:
        return None
    where = exc.filename if exc.filename is not None else path
    shown = _TEMPORARY.sub(r"\1", os.fsdecode(where)) if isinstance(where, (str, bytes, os.PathLike)) \
        else "(unknown file)"
    return EnvironmentProblem(shown, code, _CAUSES[code])


#: A temporary of stmod's naming (``.NAME.<hex>.tmp``, see ``stmod.core.io.ownership``) as a path part:
#: errors name the file being written, not its temporary.
_TEMPORARY = re.compile(r"(?<![^/\\])\.([^/\\]+)\.[0-9a-f]{8,16}\.(?:tmp|old)(?![^/\\])")


@contextmanager
def environment_errors(path: object = None) -> Iterator[None]:
    """Re-raise an ``OSError`` the environment caused (full disk, file-size limit, ...) inside the block
    as an :class:`EnvironmentProblem` naming its file (or ``path``); other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        problem = environment_problem(exc, path)
        if problem is None:
            raise
        raise problem from exc
