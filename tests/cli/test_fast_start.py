"""`stmod-run --help`, `plugins` and `list` import no torch: listing what is installed stays fast.

Built-in components register by ``"module:attribute"`` reference (imported when a job uses them) and
commands import the pipeline inside ``run``. The time itself is a benchmark figure (README), not a test.
"""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from stmod.cli import main

HEAVY = ("torch", "diffusers", "transformers", "controlnet_aux", "cv2", "av", "gradio")
PROBE = ("import io, sys\nfrom stmod.cli import main\ncode = main(sys.argv[1:], stdout=io.StringIO())\n"
         "print(code, [m for m in {heavy!r} if m in sys.modules])")


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["list", "layouts"], ["edit", "--help"]])
def test_listing_imports_nothing_heavy(argv: list[str]) -> None:
    """Every installed plugin (the example plugin included) loads, and none of them pulls in torch."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_check_says_what_it_does_first_on_a_terminal(job_file) -> None:
    """On a terminal, a command says what it is about to do before the slow imports; a pipe sees only results."""
    err, out = _Terminal(), io.StringIO()
    code = main(["-p", "stmod.testing", "check", str(job_file())], stdout=out, stderr=err,
                env={"STMOD_LOAD_PLUGINS": ""})
    assert code == 0 and err.getvalue().startswith("check: ") and "no weights load" in err.getvalue()
    piped = io.StringIO()
    main(["-p", "stmod.testing", "check", str(job_file())], stdout=io.StringIO(), stderr=piped,
         env={"STMOD_LOAD_PLUGINS": ""})
    assert piped.getvalue() == ""


def test_edit_refuses_an_existing_output_before_importing_torch(job_file, tmp_path) -> None:
    """An existing output folder needs nothing loaded to be seen: ``edit`` refuses it (exit 2) with torch and
    the pipeline still unimported; with --overwrite it goes on to the editor (which checks the folder again)."""
    job = job_file(backbone="tiny", modulator="st-layout")  # built-ins: the testing plugin imports torch itself
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("a file stmod did not write")
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), "edit", str(job)],
                         capture_output=True, text=True, timeout=120, check=True, env=_env())
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr
    assert f"output folder {tmp_path / 'out'} already exists; pass --overwrite" in out.stderr
    assert (tmp_path / "out" / "mine.txt").read_text() == "a file stmod did not write"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "STMOD_LOAD_PLUGINS": ""}
