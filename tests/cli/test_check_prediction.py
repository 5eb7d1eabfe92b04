"""``stmod-run check`` prints the memory and time prediction, and warns (with changes that fit) when the
job would not fit the GPU it is planned for (``--gpu-memory`` injects the free memory)."""

from __future__ import annotations

import re

from stmod.testing import run_cli

ENV = {"STMOD_LOAD_PLUGINS": ""}


def _gib(line: str) -> float:
    return float(re.findall(r"([0-9.]+) GiB", line)[-1])


def test_check_prints_the_prediction(demo_job) -> None:
    """One line per phase with seconds, and the total, for the job's device (the CPU here); ``--verbose``
    adds the parts of the peak and the attention working set."""
    result = run_cli(["check", str(demo_job())], env=ENV)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "predicted peak memory (RSS):" in out and "weights: unet" not in out
    for phase in ("load", "encode", "inversion", "denoising", "decoding", "total"):
        assert re.search(rf"^  {phase} +[0-9.]+ +[0-9.]+$", out, re.M), phase
    assert "self-attention working set" not in out and "warning" not in out
    table = run_cli(["check", str(demo_job()), "--verbose"], env=ENV)
    assert table.exit_code == 0, table.stderr
    assert "weights: unet" in table.stdout and "runtime (libraries)" in table.stdout
    assert "self-attention working set in denoising" in table.stdout
    assert table.stdout.count("\n") > out.count("\n")


def test_check_warns_when_the_job_does_not_fit_and_names_changes_that_do(demo_job) -> None:
    """With a small GPU injected, the warning lists changes, each with a re-estimate under the free memory."""
    job = demo_job(video={"path": "clip.mp4", "frames": 4, "size": [64, 64]})
    whole = run_cli(["check", str(job), "--gpu-memory", "100"], env=ENV)
    peak = _gib(next(line for line in whole.stdout.splitlines() if line.startswith("predicted peak GPU memory")))
    free = 0.98 * peak / 0.9 if peak else 0.0  # just too small for the whole job
    result = run_cli(["check", str(job), "--gpu-memory", f"{free:.6f}"], env=ENV)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: predicted peak"))
    fixes = [line for line in lines[warning + 2:] if line.startswith("    ")]
    assert fixes and any("--frames" in f for f in fixes) and any("--cpu-offload" in f for f in fixes)
    assert all(_gib(f) <= 0.9 * free * 1.005 for f in fixes)  # printed to 3 digits
    assert "warning" not in whole.stdout


def test_backbone_that_cannot_tell_is_unknown(clip) -> None:
    """A backbone without a footprint (the testing ``identity`` one) gets an "unknown" prediction, not a guess."""
    result = run_cli(["-p", "stmod.testing", "check", "--video", str(clip), "--prompt", "a cat", "--region",
                      "cat=red cat", "--layout", "full-frame", "--backbone", "identity", "--modulator", "null",
                      "--out", str(clip.parent / "o")], env=ENV)
    assert result.exit_code == 0 and "predicted peak memory and time: unknown" in result.stdout


def test_gpu_memory_flag_is_checked() -> None:
    result = run_cli(["check", "--gpu-memory", "-3"], env=ENV)
    assert result.exit_code == 2 and "--gpu-memory" in result.stderr
