"""``stmod-run``: the command-line entry point.

Subcommands come from plugins (``stmod_register_commands``); the built-ins live in
:mod:`stmod.plugins.commands`. Exit status: 0 success, 2 user error (one line on stderr, no traceback),
1 internal error (a bug: the traceback is shown with ``-v``), 130 interrupted, 141 output pipe closed (``| head``). An ``OSError`` the
environment caused (full disk, file-size limit, read-only folder, name too long, ...) is a user error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from typing import NoReturn, TextIO

import attrs

import stmod
from stmod.core.errors import StmodError, UsageError, environment_problem
from stmod.plugins.manager import StmodPluginManager, make_plugin_manager

__all__ = ["main", "Session", "build_parser"]

PROG = "stmod-run"
EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (a ``UsageError``) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


@attrs.define
class Session:
    """What a command gets besides its arguments: the plugin manager and the output streams."""

    pm: StmodPluginManager
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]

    @property
    def registry(self):
        return self.pm.registry

    def echo(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def status(self, text: str) -> None:
        """Say what is about to happen, on a terminal's stderr only (like progress bars): a command that
        imports torch or loads weights next is otherwise silent for seconds. Pipes and tests see nothing."""
        isatty = getattr(self.stderr, "isatty", None)
        if callable(isatty) and isatty():
            print(text, file=self.stderr, flush=True)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless its help names it already) and keeps the examples' lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        hidden = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if hidden or "default" in text or action.nargs == 0:
            return text
        return f"{text} (default: {default})"


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help="load plugin NAME (entry point or module); -p no:NAME blocks it (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging; -vv for debug")
    parser.add_argument("--version", action="version", version=f"%(prog)s {stmod.__version__}")


def build_parser(pm: StmodPluginManager) -> argparse.ArgumentParser:
    """The full parser, with one subcommand per registered command."""
    parser = _Parser(prog=PROG, description="Zero-shot multi-grained video editing (ST-Modulator / VideoGrain).")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in pm.registry.commands.values():
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in info.examples) if info.examples else None
        command = sub.add_parser(info.name, help=info.help, description=info.help, epilog=epilog,
                                 formatter_class=_HelpFormatter)
        info.configure(command)
        command.set_defaults(_run=info.run, _plugin=info.plugin)
    return parser


#: Libraries whose own messages and progress bars stay off the terminal unless ``-v`` asks for them.
THIRD_PARTY_LOGGERS = ("transformers", "diffusers", "huggingface_hub", "accelerate", "py.warnings")
#: How those libraries are told before they are imported (they read these when they load).
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
              "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def _configure_logging(verbosity: int, stream: TextIO) -> None:
    """stmod's log on ``stream``; third-party messages, bars and Python warnings join it only with ``-v``.

    The CLI owns its process, so it may set the libraries' own switches (variables the user set win).
    """
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("stmod")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if verbosity else [logging.NullHandler()]
        logger.setLevel(logging.WARNING if verbosity == 1 else logging.DEBUG if verbosity else logging.CRITICAL)
        logger.propagate = False
    if not verbosity:
        for key, value in _QUIET_ENV.items():
            os.environ.setdefault(key, value)
        _quiet_loaded_libraries()


_PROGRESS_SWITCHES = (("transformers.utils.logging", "disable_progress_bar"),
                      ("diffusers.utils.logging", "disable_progress_bar"),
                      ("huggingface_hub.utils", "disable_progress_bars"))


def _quiet_loaded_libraries() -> None:
    """Libraries imported already (a test, an embedding host) read the variables too late: tell them directly."""
    for module, switch in _PROGRESS_SWITCHES:
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, switch):
            getattr(loaded, switch)()


def _warning_to_log(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
    logging.getLogger("py.warnings").warning("%s:%s: %s: %s", filename, lineno, category.__name__, message)


class _PluginCommandError(Exception):
    """A third-party command that raised something other than a ``StmodError``: a bug in that plugin."""


def _run_command(args: argparse.Namespace, session: Session) -> int:
    try:
        return int(args._run(args, session) or EXIT_OK)
    except (StmodError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # SystemExit(0) from a plugin's command must not pass for success
        record = session.pm.records.get(args._plugin)
        if record is None or record.builtin:
            raise
        raise _PluginCommandError(f"command {args.command!r} of plugin {args._plugin!r} failed: "
                                  f"{type(exc).__name__}: {exc} (a bug in that plugin, not in stmod)") from exc


def _silence_stdout() -> None:
    """Point the process's stdout at /dev/null, so that the flush at exit does not fail again (the
    recipe of Python's ``signal`` docs, "Note on SIGPIPE")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


#: Fixes as errors give them to Python callers → the same fix with this command line's flags.
PYTHON_FIXES_AS_FLAGS = {
    "overwrite=True": "--overwrite",
    "choose another output": "choose another output (--out)",
    'device="cpu"': "--device cpu",
    "drop prompt_index=": "drop --prompt-index",
}


def in_cli_terms(message: str) -> str:
    """An error's message with its Python fixes (``overwrite=True``) said as flags (``--overwrite``)."""
    for python, flag in PYTHON_FIXES_AS_FLAGS.items():
        message = message.replace(python, flag)
    return message


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
         env: Mapping[str, str] | None = None) -> int:
    """Run ``stmod-run`` with ``argv``; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    env = os.environ if env is None else env
    verbose = 0
    try:
        # Plugins decide which subcommands exist, so -p and -v are read before the full parse.
        pre = _Parser(prog=PROG, add_help=False)
        _global_options(pre)
        early, _ = pre.parse_known_args(argv)
        verbose = early.verbose
        _configure_logging(verbose, stderr)
        pm = make_plugin_manager(plugin_args=early.plugins, env=env)
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(stdout)
            return EXIT_USER
        with warnings.catch_warnings():  # restored on return: in-process callers (tests) keep their own
            warnings.showwarning = _warning_to_log
            return _run_command(args, Session(pm=pm, stdout=stdout, stderr=stderr, env=env))
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except StmodError as exc:
        print(f"{PROG}: error: {in_cli_terms(str(exc))}", file=stderr)
        if verbose > 1:
            traceback.print_exc(file=stderr)
        return EXIT_USER
    except BrokenPipeError:  # the reader left (``stmod-run list ... | head``): stop quietly, as shell tools do
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except _PluginCommandError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}; rerun with -v for the traceback", file=stderr)
        if verbose:
            traceback.print_exc(file=stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # a full disk, a read-only folder, ...: the user's to fix; anything else: a bug
        problem = environment_problem(exc)
        if problem is not None:
            print(f"{PROG}: error: {problem}", file=stderr)
            return EXIT_USER
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (this is a bug; rerun with -v for the traceback)",
              file=stderr)
        if verbose:
            traceback.print_exc(file=stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # ``python -m stmod.cli`` (what ``python -X importtime -m stmod.cli --help`` measures)
    sys.exit(main())
