"""What a run shows on the terminal: one bar per phase that stays, no third-party noise without -v."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import pytest

from stmod.cli import main
from stmod.plugins.commands.summary import summary_lines

ENV = {"STMOD_LOAD_PLUGINS": ""}


def _visible(text: str) -> list[str]:
    """The lines a terminal finally shows: each carriage return overwrites its line."""
    return [line.split("\r")[-1] or (line.split("\r")[-2] if "\r" in line else "") for line in text.split("\n")]


def test_each_phase_keeps_its_bar_and_nothing_else_shows(demo_job, capsys: pytest.CaptureFixture[str]) -> None:
    """`edit` leaves one finished bar per phase (inversion, denoising, decoding) and no third-party bar
    (transformers' "Loading weights" is one when the text encoder loads)."""
    assert main(["edit", str(demo_job()), "--no-cache"], env=ENV) == 0
    shown = [line for line in _visible(capsys.readouterr().err) if line.strip()]
    assert [line.split(":")[0].strip() for line in shown] == ["inversion", "denoising", "decoding"], shown
    assert all("100%" in line for line in shown)


def _noisy_plugin(folder: Path) -> None:
    folder.joinpath("noisy_plugin.py").write_text(textwrap.dedent('''
        import logging, warnings
        from stmod import hookimpl

        def _run(args, session):
            warnings.warn("a library's deprecation warning")
            logging.getLogger("transformers.modeling_utils").warning("Loading weights: some were not used")
            session.echo("done")
            return 0

        @hookimpl
        def stmod_register_commands(register):
            register.add("noisy", configure=lambda parser: None, run=_run, help="warns like a library")
    '''))


@pytest.mark.parametrize("verbose", [False, True])
def test_library_warnings_go_to_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verbose: bool) -> None:
    """Python warnings and transformers' messages stay off the terminal; -v shows them in the log."""
    _noisy_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    code = main([*(["-v"] if verbose else []), "-p", "noisy_plugin", "noisy"], stdout=out, stderr=err, env=ENV)
    assert code == 0 and out.getvalue() == "done\n"
    if verbose:
        assert "deprecation warning" in err.getvalue() and "Loading weights" in err.getvalue()
    else:
        assert err.getvalue() == ""
    sys.modules.pop("noisy_plugin", None)


def test_summary_names_time_memory_cache_and_files(tmp_path: Path) -> None:
    (tmp_path / "side_by_side.mp4").write_bytes(b"")
    run = {"phases": {"load": 1.25, "invert": 3.0}, "peak_rss_bytes": 3 << 29, "peak_gpu_bytes": 1 << 30,
           "inversion": {"cached": True, "key": "k"}}
    lines = summary_lines(tmp_path, run, wall_seconds=5.04)
    assert lines[0] == "done in 5.0 s: load 1.2s, invert 3.0s"
    assert lines[1] == "peak memory: RSS 1.50 GiB, GPU 1.00 GiB; inversion: cache hit (read, not recomputed)"
    assert lines[2:] == ["open:", f"  {tmp_path / 'side_by_side.mp4'}  (source | edit)"]
