"""``stmod-run``: subcommands, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stmod.testing import run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}  # no third-party plugins unless a test asks for them


def test_plugins_text_and_json() -> None:
    """`plugins` lists built-ins with versions and their components; --json is parseable."""
    text = run_cli(["plugins"], env=ENV)
    assert text.exit_code == 0 and "stmod.blenders" in text.stdout and "blender: none, latent, videograin" in text.stdout
    data = json.loads(run_cli(["plugins", "--json"], env=ENV).stdout)
    blenders = next(p for p in data["plugins"] if p["name"] == "stmod.blenders")
    assert blenders["builtin"] and blenders["distribution"] == "stmod" and blenders["version"]
    assert blenders["components"]["blender"] == ["none", "latent", "videograin"]
    assert blenders["hooks"] == ["stmod_register_blenders"]
    assert data["failed"] == []


def test_list_kind() -> None:
    """`list KIND` prints one line per component: name, provider, summary; plural or singular kind."""
    result = run_cli(["list", "blenders"], env=ENV)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and len(lines) == 3
    assert lines[0].split()[:2] == ["latent", "stmod.blenders"]
    assert run_cli(["list", "blender"], env=ENV).stdout == result.stdout


def test_list_unknown_kind_is_one_line_exit_2() -> None:
    """A bad KIND exits 2 with one line on stderr naming the valid kinds."""
    result = run_cli(["list", "widgets"], env=ENV)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown kind 'widgets'" in result.stderr and "blenders" in result.stderr


def test_check_valid_job(job_file) -> None:
    """`check` on a valid job exits 0 and says so."""
    result = run_cli([*TESTING, "check", str(job_file())], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_check_misspelled_key(job_file) -> None:
    """A misspelled key exits 2 with one line naming the key and the suggestion."""
    path = job_file(negative_promot="blurry")
    result = run_cli([*TESTING, "check", str(path)], env=ENV)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (f"stmod-run: error: {path}: unknown key 'negative_promot' at the top level; "
                             "did you mean 'negative_prompt'?\n")


def test_check_print_shows_resolved_job_with_overrides(job_file) -> None:
    """--print shows the job after flags override it."""
    # the override adds a region the full-frame layout serves too; overlap: keep lets both cover the frame
    # (under later-wins, 'dog' would cover 'cat' entirely: an error check reports, as edit would)
    result = run_cli([*TESTING, "check", str(job_file(layout_overlap="keep")), "--print", "--steps", "7",
                      "--preset", "paper", "--region", "dog=a brown dog", "--size", "128x64"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "steps: 7" in result.stdout and "preset: paper" in result.stdout and "dog: a brown dog" in result.stdout
    assert "- 128\n  - 64" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backbone", "nosuch"], "unknown backbone 'nosuch'; available: identity (from stmod.testing)"),
        (["--blend", "nosuch"], "unknown blender 'nosuch'"),
        (["--frames", "0"], "frames"),
        (["--size", "12"], "expected WIDTHxHEIGHT"),
        (["--region", "noequals"], 'expected NAME="local prompt"'),
        (["--video", "/definitely/not/here.mp4"], "video.path='/definitely/not/here.mp4': no such file or folder"),
    ],
)
def test_check_bad_flags_exit_2(job_file, flags: list[str], message: str) -> None:
    """Bad flag values exit 2 with one clear line."""
    result = run_cli([*TESTING, "check", str(job_file()), *flags], env=ENV)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_check_existing_output_says_what_edit_needs(job_file, tmp_path: Path) -> None:
    """An output folder with files in it: the job is valid and check says edit needs --overwrite (or --out);
    with --overwrite the folder must be stmod's own."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.mp4").write_bytes(b"x")
    result = run_cli([*TESTING, "check", str(job_file())], env=ENV)
    assert result.exit_code == 0 and result.stdout.startswith("ok:") and "edit needs --overwrite" in result.stdout
    foreign = run_cli([*TESTING, "check", str(job_file()), "--overwrite"], env=ENV)
    assert foreign.exit_code == 2 and "no .stmod-owned marker" in foreign.stderr
    (tmp_path / "out" / ".stmod-owned").write_text("{}")
    assert run_cli([*TESTING, "check", str(job_file()), "--overwrite"], env=ENV).exit_code == 0


def test_check_without_job_file_uses_flags(clip: Path) -> None:
    """A whole job can be given with flags alone."""
    result = run_cli([*TESTING, "check", "--video", str(clip), "--prompt", "a cat", "--region", "cat=red cat",
                      "--layout", "full-frame", "--backbone", "identity", "--modulator", "null", "--out", str(clip.parent / "o")],
                     env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "regions: cat='red cat'" in result.stdout


def test_unknown_command_and_no_command() -> None:
    """Unknown subcommands exit 2 with one line; no subcommand prints help and exits 2."""
    result = run_cli(["frobnicate"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "invalid choice" in result.stderr
    assert run_cli([], env=ENV).exit_code == 2


def test_internal_error_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (non-StmodError) exits 1 and says it is a bug; -v shows the traceback."""
    from stmod.plugins.commands import inspect as inspect_cmd

    def crash(args, session):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(inspect_cmd, "run_list", crash)
    result = run_cli(["list", "blenders"], env=ENV)
    assert result.exit_code == 1 and "internal error: RuntimeError: kaboom (this is a bug" in result.stderr
    assert "Traceback" in run_cli(["-v", "list", "blenders"], env=ENV).stderr


def test_a_closed_output_pipe_is_not_a_bug() -> None:
    """``stmod-run list layouts | head -1``: the reader leaves early; stmod stops quietly with 141 (as
    shell tools do), not with an "internal error" on the terminal."""
    exe = Path(sys.executable).with_name("stmod-run")
    proc = subprocess.Popen([str(exe), "list", "layouts"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **ENV}, bufsize=0)
    proc.stdout.close()  # nobody reads: the first write fails with EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


def test_console_script_runs() -> None:
    """The installed `stmod-run` script works as a separate process."""
    exe = Path(sys.executable).with_name("stmod-run")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("stmod-run ")
