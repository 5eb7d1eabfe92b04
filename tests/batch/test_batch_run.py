"""``stmod-run batch``: runs every job once, resumes after a crash, records failures, shards over processes."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stmod.plugins.batch.manifest import BatchState, DistInfo, load_manifest
from stmod.plugins.batch.run import run_batch
from stmod.core.pipeline.editor import Editor
from stmod.testing import fresh_plugin_manager, run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}


def _attempts(root: Path) -> list[dict]:
    return BatchState(root).attempts()


def _summary(root: Path) -> dict:
    return json.loads((root / "batch.json").read_text())


def test_batch_runs_every_job_and_inverts_each_clip_once(manifest) -> None:
    """All jobs finish; within a clip group only the first job inverts; a rerun skips everything."""
    path = manifest(presets=None)
    result = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert result.exit_code == 0, result.stderr
    root = path.parent / "runs"
    summary = _summary(root)
    assert summary["complete"] and summary["counts"]["done"] == 8 and len(summary["jobs"]) == 8
    inverted = [j["name"] for j in summary["jobs"] if not j["run"]["inversion"]["cached"]]
    assert inverted == ["first-red-s0", "second-red-s0"]
    assert summary["jobs"][0]["run"]["phases"] and summary["jobs"][0]["axes"]["clip"] == "first"
    again = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert again.exit_code == 0 and "8 skipped" in again.stdout
    assert len(_attempts(root)) == 8  # nothing ran twice


def test_resume_after_a_crash_runs_only_unfinished_jobs(manifest, monkeypatch) -> None:
    """A crash (here Ctrl-C in the 4th job) keeps the 3 finished results; the rerun does the other 5."""
    path = manifest(presets=None)
    real, calls = Editor.run, []

    def crashing(self, spec):
        calls.append(spec.output.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, spec)

    monkeypatch.setattr(Editor, "run", crashing)
    assert run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV).exit_code == 130
    monkeypatch.setattr(Editor, "run", real)
    root = path.parent / "runs"
    finished = [a["name"] for a in _attempts(root)]
    assert finished == calls[:3]
    result = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert result.exit_code == 0 and "5 done" in result.stdout and "3 skipped" in result.stdout
    counts = collections.Counter(a["name"] for a in _attempts(root))
    assert len(counts) == 8 and set(counts.values()) == {1}
    assert not list(root.glob(".*.tmp"))  # the interrupted job left no partial output


def test_failed_job_is_recorded_and_the_others_go_on(manifest, monkeypatch) -> None:
    """One job raises: its error is recorded, the other 7 finish, exit 2; a rerun retries only it."""
    path = manifest(presets=None)
    real = Editor.run

    def failing(self, spec):
        if spec.output.name == "first-blue-s0":
            raise RuntimeError("GPU fell off the bus")
        return real(self, spec)

    monkeypatch.setattr(Editor, "run", failing)
    result = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    last = result.stderr.splitlines()[-1]  # (the failure was logged as it happened, above)
    assert result.exit_code == 2 and last.startswith("stmod-run: error: 1 job(s) failed")
    root = path.parent / "runs"
    summary = _summary(root)
    assert summary["counts"] == {"done": 7, "failed": 1, "pending": 0, "stale": 0} and not summary["complete"]
    failed = next(j for j in summary["jobs"] if j["status"] == "failed")
    assert failed["name"] == "first-blue-s0" and failed["error"]["message"] == "GPU fell off the bus"
    error = json.loads((root / ".batch" / "errors" / "first-blue-s0.json").read_text())
    assert error["type"] == "RuntimeError" and "Traceback" in error["traceback"]
    assert run_cli([*TESTING, "batch", str(path), "--quiet", "--skip-failed"], env=ENV).exit_code == 0
    monkeypatch.setattr(Editor, "run", real)
    retry = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert retry.exit_code == 0 and "1 done" in retry.stdout and "7 skipped" in retry.stdout
    assert _summary(root)["complete"] and not (root / ".batch" / "errors" / "first-blue-s0.json").exists()


def test_invalid_job_stops_the_batch_before_anything_runs(manifest) -> None:
    """A job whose clip does not exist fails validation: nothing runs, one line names the job."""
    path = manifest(clips={"first": {}, "missing": {"video": {"path": "nowhere.mp4"}}}, presets=None)
    result = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert result.exit_code == 2 and "4 of 8 jobs are invalid" in result.stderr.splitlines()[-1]
    assert "job 'missing-red-s0'" in result.stderr and not (path.parent / "runs").exists()


def test_changed_job_definition_is_rerun(manifest) -> None:
    """Editing the manifest makes the affected outputs stale: only those jobs run again."""
    path = manifest(presets=None, seeds=None)
    assert run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV).exit_code == 0
    data = yaml.safe_load(path.read_text())
    data["prompts"]["blue"]["prompt"] = "a blue dog"
    data["prompts"]["blue"]["regions"] = {"cat": "blue dog"}
    path.write_text(yaml.safe_dump(data))
    plan = run_cli([*TESTING, "batch", str(path), "--plan"], env=ENV)
    assert plan.stdout.count(" stale") == 2 and plan.stdout.count(" done") == 2
    result = run_cli([*TESTING, "batch", str(path), "--quiet"], env=ENV)
    assert "2 done" in result.stdout and "2 skipped" in result.stdout


def test_ranks_coordinating_through_files_cover_every_job_once(manifest) -> None:
    """Two ranks without a process group (plain RANK/WORLD_SIZE): disjoint shards, one complete summary."""
    m = load_manifest(manifest(presets=None))
    editor = Editor(fresh_plugin_manager(plugin_args=["stmod.testing"]).registry, progress=False)
    reports = [run_batch(m, editor, dist=DistInfo(rank=r, world_size=2), progress=False, env={}) for r in (1, 0)]
    assert [r.assigned for r in reports] == [4, 4] and all(r.done == 4 for r in reports)
    assert reports[-1].summary["complete"]
    ranks = {a["name"]: a["rank"] for a in _attempts(m.output)}
    assert len(ranks) == 8 and collections.Counter(ranks.values()) == {0: 4, 1: 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_torchrun_cover_every_job_exactly_once(manifest) -> None:
    """``torchrun --nproc_per_node 2 -m stmod batch``: gloo group, whole groups per rank, one summary."""
    path = manifest(presets=None)
    env = {**os.environ, "STMOD_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "stmod", *TESTING, "batch", str(path), "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rank 0/2: 4 jobs: 4 done" in done.stdout and "rank 1/2: 4 jobs: 4 done" in done.stdout
    root = path.parent / "runs"
    attempts = _attempts(root)
    counts = collections.Counter(a["name"] for a in attempts)
    assert len(counts) == 8 and set(counts.values()) == {1}  # every job exactly once
    by_rank = collections.defaultdict(set)
    for a in attempts:
        by_rank[a["rank"]].add(a["name"].split("-")[0])
    assert by_rank == {0: {"first"}, 1: {"second"}} or by_rank == {0: {"second"}, 1: {"first"}}  # whole clip groups
    summary = _summary(root)
    assert summary["complete"] and summary["world_size"] == 2


@pytest.mark.parametrize("args", [["--plan"], ["--summary"]])
def test_plan_and_summary_run_nothing(manifest, args) -> None:
    path = manifest()
    result = run_cli([*TESTING, "batch", str(path), *args], env={**ENV, "WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 0, result.stderr
    assert not _attempts(path.parent / "runs")
    if args == ["--plan"]:
        assert "16 jobs in 2 clip groups" in result.stdout and "(rank 1)" in result.stdout
    else:
        assert _summary(path.parent / "runs")["counts"]["pending"] == 16


def test_batch_eval_adds_metrics_and_fails_early_without_clip(manifest) -> None:
    """--eval computes metrics after each job (into run.json and batch.json); missing CLIP stops it first."""
    path = manifest(clips={"first": {}}, presets=None, seeds=None)
    missing = run_cli([*TESTING, "batch", str(path), "--quiet", "--eval", "--clip", "stmod-tests/no-such-clip"],
                      env=ENV)
    assert missing.exit_code == 2 and "--clip PATH" in missing.stderr and not _attempts(path.parent / "runs")
    result = run_cli([*TESTING, "batch", str(path), "--quiet", "--eval", "--metrics", "warp"], env=ENV)
    assert result.exit_code == 0, result.stderr
    jobs = _summary(path.parent / "runs")["jobs"]
    assert len(jobs) == 2 and all(j["run"]["metrics"]["warp_err"] >= 0 for j in jobs)
