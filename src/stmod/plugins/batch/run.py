"""Running a batch in this process: validate everything, take this rank's shard, run, record, merge.

:func:`run_batch` is what ``stmod-run batch`` calls; from Python::

    from stmod.plugins.batch.manifest import load_manifest
    from stmod.plugins.batch.run import run_batch
    from stmod import Editor

    editor = Editor.from_plugins(progress=False)
    report = run_batch(load_manifest("batch.yaml"), editor)

Several processes (``torchrun --nproc_per_node N -m stmod batch batch.yaml``) each run their shard
(see :mod:`stmod.plugins.batch.manifest`). When the launcher provides a rendezvous (``MASTER_ADDR``/``MASTER_PORT``)
the processes join a gloo group only to check that they all planned the same jobs and to let rank 0
write the final summary after a barrier; every rank also merges the summary from the files when its
shard is done, so a crashed or timed-out peer never costs a finished result or the summary.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from stmod.plugins.batch.manifest import BatchError, BatchJob, BatchState, DistInfo, Manifest, group_jobs, shard_groups
from stmod.core.config import dump_job
from stmod.core.errors import StmodError

__all__ = ["BatchReport", "plan_digest", "validate_jobs", "run_job", "evaluate_job", "run_batch"]

log = logging.getLogger(__name__)

#: How long a finished rank waits at the final barrier for the slowest one (shards may differ by hours).
BARRIER_TIMEOUT_S = 7 * 24 * 3600


@attrs.frozen(kw_only=True)
class BatchReport:
    """What this process did: jobs run (done / failed), skipped as finished, and the merged summary."""

    rank: int
    world_size: int
    assigned: int
    done: int
    failed: int
    skipped: int
    summary: dict[str, Any]


def plan_digest(manifest: Manifest) -> str:
    """A hash of every job (name, group, resolved job): equal on every rank that read the same manifest."""
    h = hashlib.sha256()
    for job in manifest.jobs:
        h.update(f"{job.name}\0{job.group}\0{dump_job(job.spec)}\0".encode())
    return h.hexdigest()[:16]


def validate_jobs(manifest: Manifest, editor: Any) -> None:
    """Check every job (files, components, prompts) before anything runs.

    :raises BatchError: naming how many jobs are invalid and the first problem (all are logged).
    """
    problems = []
    for job in manifest.jobs:
        try:
            editor.build(job.spec)
        except StmodError as exc:
            problems.append(f"job {job.name!r}: {exc}")
            log.error("%s", problems[-1])
    if problems:
        raise BatchError(f"{len(problems)} of {len(manifest.jobs)} jobs are invalid, nothing was run; first: "
                         f"{problems[0]}")


def _join_group(dist: DistInfo, env: Mapping[str, str]) -> tuple[bool, bool]:
    """``(group available, created here)``: join a gloo group when launched with a rendezvous."""
    if dist.world_size == 1 or not torch.distributed.is_available():
        return False, False
    import torch.distributed as td

    if td.is_initialized():
        return True, False
    if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        log.info("no MASTER_ADDR/MASTER_PORT: ranks coordinate through files only")
        return False, False
    td.init_process_group("gloo", rank=dist.rank, world_size=dist.world_size,
                          timeout=_dt.timedelta(seconds=BARRIER_TIMEOUT_S))
    return True, True


def _check_same_plan(manifest: Manifest, dist: DistInfo) -> None:
    import torch.distributed as td

    digests: list[Any] = [None] * dist.world_size
    td.all_gather_object(digests, plan_digest(manifest))
    if len(set(digests)) != 1:
        raise BatchError(f"the ranks planned different jobs (plan digests {digests}); start every rank with the "
                         "same manifest and working directory")


def _use_local_gpu(dist: DistInfo) -> None:
    if torch.cuda.is_available():
        device = dist.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(device)
        log.info("rank %d uses cuda:%d", dist.rank, device)


def run_job(job: BatchJob, editor: Any, state: BatchState, dist: DistInfo, evaluator: Any) -> bool:
    """Run ``job``; record success or failure (and its metrics with an ``evaluator``). Returns whether it
    succeeded. Every engine runs a job through this, so the files a job leaves do not depend on the engine."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # peak GPU memory per job, not per process
    start = time.perf_counter()
    try:
        editor.run(job.spec)
    except Exception as exc:  # a failed job is recorded and the others go on
        path = state.record_failure(job, exc, rank=dist.rank)
        state.log(job, "failed", dist=dist, seconds=time.perf_counter() - start)
        log.error("job %s failed: %s (details in %s)", job.name, " ".join(str(exc).split()), path)
        return False
    state.clear_failure(job)
    state.log(job, "done", dist=dist, seconds=time.perf_counter() - start)
    if evaluator is not None:
        evaluate_job(job, evaluator, state, dist)
    return True


def evaluate_job(job: BatchJob, evaluator: Any, state: BatchState, dist: DistInfo) -> None:
    """Add the metrics a finished job lacks to its ``run.json``; a metric problem is logged, never fatal."""
    try:
        evaluator.evaluate_folder(job.spec.output)
    except Exception as exc:  # the edit is done; a metric problem must not fail it
        state.log(job, "eval-failed", dist=dist)
        log.warning("job %s: evaluation failed: %s", job.name, " ".join(str(exc).split()))


def _run_shard(mine: list[BatchJob], editor: Any, state: BatchState, dist: DistInfo, evaluator: Any,
               retry_failed: bool, progress: bool) -> tuple[int, int, int]:
    """Run (or skip) each job of this rank's shard; returns ``(done, failed, skipped)``."""
    done = failed = skipped = 0
    desc = "batch" if dist.world_size == 1 else f"batch rank {dist.rank}/{dist.world_size}"
    with tqdm(total=len(mine), desc=desc, unit="job", disable=not progress, position=dist.rank) as bar:
        for job in mine:
            status = state.status(job)
            if status == "done" or (status == "failed" and not retry_failed):
                skipped += 1
                if status == "done" and evaluator is not None:
                    evaluate_job(job, evaluator, state, dist)
            elif run_job(job, editor, state, dist, evaluator):
                done += 1
            else:
                failed += 1
            if status == "stale":
                log.warning("job %s: its output folder held another job definition; it was re-run", job.name)
            bar.set_postfix(done=done, failed=failed, skipped=skipped)
            bar.update()
    return done, failed, skipped


def _merge_summary(manifest: Manifest, state: BatchState, dist: DistInfo, grouped: bool) -> dict[str, Any]:
    """Merge the summary from the files; in a process group rank 0 merges again after the barrier."""
    summary = state.merge(manifest, world_size=dist.world_size)
    if grouped:
        import torch.distributed as td

        try:
            td.barrier()
            if dist.rank == 0:
                summary = state.merge(manifest, world_size=dist.world_size)
        except RuntimeError as exc:  # a peer died or timed out: the file merge above still stands
            log.warning("barrier failed (%s); batch.json holds what was finished", exc)
    return summary


def run_batch(
    manifest: Manifest,
    editor: Any,
    *,
    dist: DistInfo = DistInfo(),
    evaluator: Any = None,
    retry_failed: bool = True,
    progress: bool = True,
    env: Mapping[str, str] | None = None,
) -> BatchReport:
    """Run this rank's shard of ``manifest`` with ``editor`` (an :class:`~stmod.core.pipeline.editor.Editor`).

    Finished jobs are skipped; jobs whose output belongs to another job definition are re-run;
    failed jobs are retried unless ``retry_failed`` is false. ``evaluator`` (an
    :class:`~stmod.plugins.eval.evaluate.Evaluator`) adds metrics to each finished job's ``run.json``.

    :raises BatchError: before running anything when a job is invalid or the ranks disagree on the plan.
    """
    env = os.environ if env is None else env
    _use_local_gpu(dist)  # before anything touches CUDA: "cuda" / "auto" devices then mean this rank's GPU
    validate_jobs(manifest, editor)
    mine = shard_groups(group_jobs(manifest.jobs), dist.world_size)[dist.rank]
    if evaluator is not None:
        evaluator.prepare()
    state = BatchState(manifest.output)
    with state.claim(manifest, rank=dist.rank):
        done, failed, skipped, summary = _run_claimed(manifest, editor, state, dist, evaluator, mine, retry_failed,
                                                      progress, env)
    return BatchReport(rank=dist.rank, world_size=dist.world_size, assigned=len(mine), done=done, failed=failed,
                       skipped=skipped, summary=summary)


def _run_claimed(manifest: Manifest, editor: Any, state: BatchState, dist: DistInfo, evaluator: Any,
                 mine: list[BatchJob], retry_failed: bool, progress: bool,
                 env: Mapping[str, str]) -> tuple[int, int, int, dict[str, Any]]:
    """Run this rank's shard while holding the batch's lock; ``(done, failed, skipped, summary)``."""
    grouped, created = _join_group(dist, env)
    try:
        if grouped:
            _check_same_plan(manifest, dist)
        log.info("rank %d/%d: %d of %d jobs", dist.rank, dist.world_size, len(mine), len(manifest.jobs))
        done, failed, skipped = _run_shard(mine, editor, state, dist, evaluator, retry_failed, progress)
        summary = _merge_summary(manifest, state, dist, grouped)
    finally:
        if created:
            import torch.distributed as td

            td.destroy_process_group()
    return done, failed, skipped, summary
