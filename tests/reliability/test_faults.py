"""Fault injection: an edit interrupted (SIGINT) or killed (SIGKILL) at each phase, then rerun; runs
racing for one output or one batch; a file-size limit. Each interrupted run is a real subprocess with
the test plugin ``stmod_faults`` (this folder); the rerun must succeed and leave nothing stale behind:
no temporary of stmod's naming and no lock file anywhere under the test's folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stmod.core.io.ownership import parse_temporary
from stmod.testing import run_cli

HERE = Path(__file__).resolve().parent
ENV = {"STMOD_LOAD_PLUGINS": ""}
TESTING = ["-p", "stmod.testing"]


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own (the interrupted subprocess and the rerun share it)."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("STMOD_CACHE_DIR", str(folder))
    return folder


def _spawn(args: list[str], fault: str | None, ready: Path | None = None, preexec_fn=None) -> subprocess.Popen:
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    env.pop("STMOD_FAULT", None)
    if fault:
        env["STMOD_FAULT"] = fault
    if ready is not None:
        env["STMOD_FAULT_READY"] = str(ready)
    return subprocess.Popen([sys.executable, "-m", "stmod", *TESTING, "-p", "stmod_faults", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: _child_setup(preexec_fn))


def _child_setup(preexec_fn) -> None:
    """SIGINT back to its default: a test run started in the background (``cmd &``, nohup) ignores it,
    the child would inherit that, and Ctrl-C could not be tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if preexec_fn is not None:
        preexec_fn()


def _leftovers(*roots: Path) -> list[Path]:
    """stmod's temporaries and lock files under ``roots``."""
    return sorted(p for root in roots for p in root.rglob("*")
                  if parse_temporary(p.name) is not None or p.name.endswith(".lock"))


def _wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the blocked run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the blocked run never reached its phase")
        time.sleep(0.05)


def _job(job_file, **changes) -> Path:
    return job_file(steps=3, **changes)


@pytest.mark.parametrize("action", ["INT", "KILL"])
@pytest.mark.parametrize("phase", ["invert", "denoise", "cache-save", "output-write"])
def test_interrupted_edit_then_rerun(job_file, tmp_path: Path, cache: Path, phase: str, action: str) -> None:
    job = _job(job_file)
    proc = _spawn(["edit", str(job), "--quiet"], f"{phase}:{action}")
    _, stderr = proc.communicate(timeout=120)
    if action == "INT":
        assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "stmod-run: interrupted", stderr
        assert _leftovers(tmp_path, cache) == []  # Ctrl-C cleans up at once
    else:
        assert proc.returncode == -signal.SIGKILL, stderr
    assert not (tmp_path / "out").exists()
    rerun = run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV)
    assert rerun.exit_code == 0, rerun.stderr
    assert (tmp_path / "out" / "result.mp4").is_file() and (tmp_path / "out" / ".stmod-owned").is_file()
    assert _leftovers(tmp_path, cache) == []


@pytest.mark.parametrize("action", ["INT", "KILL"])
def test_killed_while_replacing_an_earlier_output(job_file, tmp_path: Path, cache: Path, action: str) -> None:
    """Killed after the new folder is in place and before the old one is deleted: the output is whole,
    and the old folder (moved aside as ``.out.<hex>.old``) is removed by the next run."""
    job = _job(job_file)
    assert run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV).exit_code == 0
    proc = _spawn(["edit", str(job), "--quiet", "--overwrite"], f"output-swap:{action}")
    proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGKILL)
    assert (tmp_path / "out" / "run.json").is_file()
    assert len([p for p in _leftovers(tmp_path) if p.name.endswith(".old")]) == 1
    assert run_cli([*TESTING, "edit", str(job), "--quiet", "--overwrite"], env=ENV).exit_code == 0
    assert _leftovers(tmp_path, cache) == []


def test_two_edits_into_one_output(job_file, tmp_path: Path, cache: Path) -> None:
    """The second edit is refused while the first runs; after the first is killed its stale lock is taken over."""
    job = _job(job_file)
    ready = tmp_path / "ready"
    first = _spawn(["edit", str(job), "--quiet"], "denoise:BLOCK", ready)
    try:
        _wait_ready(first, ready)
        second = run_cli([*TESTING, "edit", str(job), "--quiet", "--overwrite"], env=ENV)
        assert second.exit_code == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"in use by another stmod run (pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert not (tmp_path / "out").exists() and (tmp_path / ".out.lock").exists()  # the killed run's lock
    ready.unlink()
    rerun = run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV)
    assert rerun.exit_code == 0, rerun.stderr
    assert _leftovers(tmp_path, cache) == []


def test_two_batches_on_one_manifest(manifest, tmp_path: Path, cache: Path) -> None:
    """The second batch is refused (and runs no job) while the first runs; the rerun finishes the batch."""
    path = manifest(clips={"first": {}}, prompts={}, presets={}, seeds=[0, 1])
    ready = tmp_path / "ready"
    first = _spawn(["batch", str(path), "--quiet"], "denoise:BLOCK", ready)
    try:
        _wait_ready(first, ready)
        second = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
        assert second.exit_code == 2 and "in use by another stmod run" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert not [p for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")]  # no job ran
    finally:
        first.kill()
        first.communicate(timeout=60)
    rerun = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert rerun.exit_code == 0, rerun.stderr
    summary = json.loads((tmp_path / "runs" / "batch.json").read_text())
    assert summary["complete"] and summary["counts"]["done"] == 2
    assert _leftovers(tmp_path, cache) == []


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_tiny_file_size_limit_is_refused_before_the_run(job_file, tmp_path: Path, cache: Path) -> None:
    proc = _spawn(["edit", str(_job(job_file)), "--quiet"], None, preexec_fn=_file_size_limit(256 << 10))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and stderr.count("\n") == 1 and "ulimit -f" in stderr, stderr
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, cache) == []


def test_file_size_limit_hit_while_writing(job_file, tmp_path: Path, cache: Path) -> None:
    """A limit that passes the probe but not the outputs (noise frames encode big): one line naming the
    file and EFBIG, exit 2, no partial output; the rerun without the limit succeeds."""
    from stmod.core.io.video import write_frames

    noise = np.random.default_rng(0).integers(0, 256, (4, 512, 512, 3), dtype=np.uint8)
    write_frames(tmp_path / "frames", noise)
    job = _job(job_file, video={"path": "frames", "frames": 4, "size": [512, 512]})
    proc = _spawn(["edit", str(job), "--quiet"], None, preexec_fn=_file_size_limit(3 << 19))
    _, stderr = proc.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if not line.startswith("WARNING ")]
    assert proc.returncode == 2 and len(lines) == 1 and "EFBIG" in lines[0] and str(tmp_path / "out") in lines[0], stderr
    assert ".tmp" not in lines[0]  # the file being written is named, not its temporary
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path, cache) == []
    assert run_cli([*TESTING, "edit", str(job), "--quiet"], env=ENV).exit_code == 0
