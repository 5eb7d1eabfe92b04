"""``stmod-run batch --engine ray``: a pool of Ray workers on a local Ray (one session for the module).

Ray starts slowly on a small machine, so every test that needs a cluster shares ``ray_session``; the
tests without one (validation, the missing extra, options) never start Ray.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from stmod.plugins.batch.manifest import BatchState, load_manifest
from stmod.plugins.batch.ray_engine import BatchWorker, RayOptions, WorkerSetup, job_copy_problem, run_batch_on_ray
from stmod.testing import run_cli

TESTING = ["-p", "stmod.testing"]
ENV = {"STMOD_LOAD_PLUGINS": ""}
SETUP = WorkerSetup(plugin_args=("stmod.testing",), plugin_env=ENV)
NEEDS_RAY = "needs the ray extra (pip install 'stmod[ray]'); .ci/run installs it"


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (2 CPUs, no dashboard); hooks defined here travel to its workers."""
    ray = pytest.importorskip("ray", reason=NEEDS_RAY)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")  # never a "ray start" one
    yield ray
    ray.shutdown()


def _attempts(root: Path) -> collections.Counter:
    return collections.Counter(a["name"] for a in BatchState(root).attempts())


def _die_once(marker: Path, name: str):
    """A ``before_job`` hook that kills its worker process in the middle of job ``name``, the first time only."""
    def hook(job) -> None:
        if job.name == name and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return hook


def _die_always(name: str):
    def hook(job) -> None:
        if job.name == name:
            os._exit(1)
    return hook


def _bad_input(name: str):
    def hook(job) -> None:
        if job.name == name:
            raise RuntimeError(f"{name}: this clip cannot be edited")
    return hook


def test_killed_worker_loses_nothing_and_its_job_completes_on_the_retry(ray_session, manifest, tmp_path) -> None:
    """A worker dies mid-job: Ray restarts it, the job runs again, every job finishes exactly once."""
    m = load_manifest(manifest(presets=None, seeds=None))
    marker = tmp_path / "killed"
    setup = WorkerSetup(plugin_args=SETUP.plugin_args, plugin_env=ENV, before_job=_die_once(marker, "first-blue"))
    report = run_batch_on_ray(m, setup=setup, options=RayOptions(workers=2), progress=False)
    assert marker.exists()  # the fault did happen
    assert (report.done, report.failed, report.skipped) == (4, 0, 0) and report.summary["complete"]
    assert _attempts(m.output) == {job.name: 1 for job in m.jobs}  # the killed try left no record, nothing ran twice
    assert not list(m.output.glob(".*.tmp")) and not (m.output / ".batch" / "ray-probe").exists()


def test_failed_job_is_recorded_not_retried_and_the_rerun_resumes(ray_session, manifest) -> None:
    """A job failing on its own input is recorded once; the others finish; the rerun (the CLI, with --eval)
    runs only that job and adds metrics to every one, the finished ones included, as --engine local does."""
    m = load_manifest(manifest(presets=None, seeds=None))
    setup = WorkerSetup(plugin_args=SETUP.plugin_args, plugin_env=ENV, before_job=_bad_input("second-red"))
    report = run_batch_on_ray(m, setup=setup, options=RayOptions(workers=2), progress=False)
    assert (report.done, report.failed) == (3, 1)
    assert report.summary["counts"] == {"done": 3, "failed": 1, "pending": 0, "stale": 0}
    error = json.loads((m.output / ".batch" / "errors" / "second-red.json").read_text())
    assert error["type"] == "RuntimeError" and "cannot be edited" in error["message"]
    assert _attempts(m.output)["second-red"] == 1  # not retried by Ray
    again = run_cli([*TESTING, "batch", str(m.path), "--quiet", "--engine", "ray", "--workers", "2", "--eval",
                     "--metrics", "warp"], env=ENV)
    assert again.exit_code == 0, again.stderr
    assert "ray, 2 workers: 4 jobs: 1 done, 0 failed, 3 skipped" in again.stdout
    summary = json.loads((m.output / "batch.json").read_text())
    assert summary["complete"] and all(j["run"]["metrics"]["warp_err"] >= 0 for j in summary["jobs"])  # --eval: all
    assert _attempts(m.output) == {"first-red": 1, "first-blue": 1, "second-red": 2, "second-blue": 1}


def test_a_job_that_kills_every_worker_fails_once_its_retries_are_spent(ray_session, manifest) -> None:
    """The rest of its group runs on the replacement worker; the job is recorded as a lost worker."""
    m = load_manifest(manifest(clips={"first": {}}, presets=None, seeds=None))
    setup = WorkerSetup(plugin_args=SETUP.plugin_args, plugin_env=ENV, before_job=_die_always("first-red"))
    report = run_batch_on_ray(m, setup=setup, options=RayOptions(workers=1, max_retries=1), progress=False)
    assert (report.done, report.failed) == (1, 1)
    error = json.loads((m.output / ".batch" / "errors" / "first-red.json").read_text())
    assert error["type"] == "WorkerLost" and "2 tries" in error["message"] and not error["user_error"]
    assert report.summary["jobs"][1]["status"] == "done"


def test_ray_and_local_give_the_same_outputs_and_summary(ray_session, manifest, tiny_folder, monkeypatch) -> None:
    """Tiny-model jobs: byte-identical output files, and batch.json equal but for timings and placement.

    Both engines write the same output folders (the local run's are moved aside first: the path is in the
    videos' metadata) with one torch thread each (a Ray worker with one CPU gets ``OMP_NUM_THREADS=1``;
    CPU float sums depend on the thread count)."""
    import torch

    base = {"video": {"path": "clip.mp4", "frames": 2, "size": [64, 64]}, "prompt": "a red cat", "steps": 2,
            "regions": {"cat": "red cat"}, "layout": {"name": "full-frame"},
            "backbone": {"name": "sd15", "model": str(tiny_folder), "device": "cpu"}, "save_attention": False}
    path = manifest(base=base, clips={"first": {}}, presets=None, seeds=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_cli([*TESTING, "batch", str(path), "--quiet", "--no-cache"], env=ENV)
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.stderr
    root, local_root = path.parent / "runs", path.parent / "runs-local"
    local_summary = _comparable(root)
    root.rename(local_root)
    setup = WorkerSetup(plugin_args=SETUP.plugin_args, plugin_env=ENV, cache=False)
    report = run_batch_on_ray(load_manifest(path), setup=setup, options=RayOptions(workers=1), progress=False)
    assert report.done == 2
    files = _output_files(local_root)
    assert len(files) >= 8 and files == _output_files(root)
    for file in files:
        if file.suffix == ".mkv":  # Matroska writes a random segment id: same frames, never the same bytes
            assert np.array_equal(_frames(local_root / file), _frames(root / file)), file
        else:
            assert (local_root / file).read_bytes() == (root / file).read_bytes(), file
    assert _comparable(root) == local_summary


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _output_files(root: Path) -> list[Path]:
    """Every file of the jobs' output folders but run.json (timings), relative to the output root."""
    return sorted(p.relative_to(root) for name in ("first-red", "first-blue") for p in (root / name).rglob("*")
                  if p.is_file() and p.name != "run.json")


def _comparable(root: Path) -> dict:
    """batch.json less what differs between any two runs (times, where the output is, who ran it)."""
    summary = json.loads((root / "batch.json").read_text())
    for key in ("manifest", "output", "updated", "world_size"):
        summary.pop(key)
    for job in summary["jobs"]:
        job.pop("output"), job.pop("rank")
        run = job.pop("run")
        job["run"] = {k: v for k, v in run.items() if k not in ("phases", "peak_rss_bytes", "outputs")}
    return summary


def test_interrupted_driver_resumes_with_finished_jobs_skipped(ray_session, manifest, monkeypatch) -> None:
    """Ctrl-C on the driver stops its workers and frees the batch; the rerun skips what finished."""
    from stmod.plugins.batch import ray_engine

    m = load_manifest(manifest(presets=None, seeds=None))
    real = ray_engine._Progress.finished

    def interrupted(self, outcome, running):
        real(self, outcome, running)
        raise KeyboardInterrupt

    monkeypatch.setattr(ray_engine._Progress, "finished", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch_on_ray(m, setup=SETUP, options=RayOptions(workers=1), progress=False)
    monkeypatch.setattr(ray_engine._Progress, "finished", real)
    finished = sum(_attempts(m.output).values())
    assert finished >= 1
    report = run_batch_on_ray(m, setup=SETUP, options=RayOptions(workers=2), progress=False)
    assert report.skipped == finished and report.done == 4 - finished and report.summary["complete"]
    assert set(_attempts(m.output).values()) == {1}


def test_gpus_asked_of_a_cluster_without_gpus_are_refused_before_anything_runs(ray_session, manifest) -> None:
    from stmod.plugins.batch.manifest import BatchError

    m = load_manifest(manifest(presets=None, seeds=None))
    with pytest.raises(BatchError, match=r"--gpus-per-job 1: the Ray cluster has 0 GPU\(s\)"):
        run_batch_on_ray(m, setup=SETUP, options=RayOptions(gpus_per_job=1), progress=False)
    assert not _attempts(m.output) and not (m.output / "batch.json").exists()


def test_invalid_job_refuses_the_whole_batch_before_ray_starts(manifest) -> None:
    pytest.importorskip("ray", reason=NEEDS_RAY)
    path = manifest(clips={"first": {}, "missing": {"video": {"path": "nowhere.mp4"}}}, presets=None, seeds=None)
    result = run_cli([*TESTING, "batch", str(path), "--quiet", "--engine", "ray"], env=ENV)
    last = result.stderr.splitlines()[-1]
    assert result.exit_code == 2 and "2 of 4 jobs are invalid" in last and "job 'missing-red'" in last
    assert not (path.parent / "runs").exists()


def test_without_the_extra_one_line_says_how_to_install_it(manifest, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    path = manifest()
    result = run_cli([*TESTING, "batch", str(path), "--engine", "ray"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "pip install 'stmod[ray]'" in result.stderr and not (path.parent / "runs").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "2"], "--workers only apply to --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["--engine", "ray", "--gpus-per-job", "-1"], "--gpus-per-job must be >= 0, got -1"),
])
def test_bad_engine_options_are_refused(manifest, args, message) -> None:
    pytest.importorskip("ray", reason=NEEDS_RAY)
    result = run_cli([*TESTING, "batch", str(manifest()), *args], env=ENV)
    assert result.exit_code == 2 and message in result.stderr


def test_worker_that_does_not_share_the_output_folder_says_why(manifest, tmp_path) -> None:
    """Without the driver's token under .batch/ (another filesystem), a worker refuses with the reason."""
    m = load_manifest(manifest())
    worker = BatchWorker(0, 1, str(m.output), "token-the-driver-wrote", SETUP)
    reply = worker.hello()
    assert "must share one filesystem" in reply["problem"] and str(m.output) in reply["problem"]
    (m.output / ".batch").mkdir(parents=True)
    (m.output / ".batch" / "ray-probe").write_text("token-the-driver-wrote")
    assert worker.hello()["problem"] is None


def test_an_output_inside_a_ray_jobs_working_dir_copy_is_refused_before_anything_runs(manifest, monkeypatch,
                                                                                        tmp_path) -> None:
    """``ray job submit --working-dir .`` runs the entrypoint in a copy Ray deletes with its session: a
    relative output: would land there and be lost. Refused in one line, exit 2, before Ray starts."""
    pytest.importorskip("ray", reason=NEEDS_RAY)
    path = manifest()
    job_env = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}})}
    problem = job_copy_problem
    assert load_manifest(path).output == path.parent / "runs"
    assert problem(path.parent / "runs", job_env, path.parent) is not None
    assert problem(path.parent / "runs", job_env, tmp_path / "elsewhere") is None  # an absolute shared output
    assert problem(path.parent / "runs", {}, path.parent) is None  # not a Ray job
    no_dir = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"env_vars": {}}})}
    assert problem(path.parent / "runs", no_dir, path.parent) is None  # a Ray job without a working dir
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", job_env["RAY_JOB_CONFIG_JSON_ENV_VAR"])
    result = run_cli([*TESTING, "batch", str(path), "--quiet", "--engine", "ray"], env=ENV)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "inside Ray's copy of the job's --working-dir" in result.stderr and "absolute output:" in result.stderr
    assert not (path.parent / "runs").exists()


def test_plan_for_ray_lists_groups_without_ranks_and_needs_no_ray(manifest, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run_cli([*TESTING, "batch", str(manifest()), "--plan", "--engine", "ray"], env=ENV)
    assert result.exit_code == 0, result.stderr
    assert "16 jobs in 2 clip groups" in result.stdout and "(Ray workers, as they free up)" in result.stdout
    assert "(rank" not in result.stdout
