"""The ten-line example of docs/python.md runs as printed, and its video is one diffusers' export_to_video wrote."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def _first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, "docs/python.md lost its example"
    return match.group(1)


def test_the_example_is_ten_lines() -> None:
    lines = [line for line in _first_python_block().splitlines() if line.strip()]
    assert len(lines) == 10, lines


def test_the_example_runs_and_exports_with_diffusers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the block verbatim in a folder holding what ``stmod-run demo --out demo`` writes (2 frames, to be quick)."""
    import av

    from stmod.backbones.shapes.demo import write_demo_inputs

    write_demo_inputs(tmp_path / "demo" / "inputs", frames=2)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_first_python_block(), str(DOC), "exec"), {"__name__": "__docs__"})
    assert printed.getvalue().split(" (", 1)[0] == str(tmp_path / "py-out")
    assert "(2, 128, 128, 3) ('inversion', 0, " in printed.getvalue() and "('denoising', 5, " in printed.getvalue()
    assert printed.getvalue().rstrip().endswith("[0, 1]")  # round(0.3 × 6) steps modulated
    with av.open(str(tmp_path / "edit.mp4")) as video:  # written by diffusers.utils.export_to_video
        frames = [frame.to_ndarray(format="rgb24") for frame in video.decode(video=0)]
    assert len(frames) == 2 and frames[0].shape == (128, 128, 3)
    assert (tmp_path / "py-out" / "result.mp4").exists()
