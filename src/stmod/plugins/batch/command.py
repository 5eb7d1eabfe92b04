"""``stmod-run batch MANIFEST.yaml``: many edits, resumable, on one process, sharded over many, or on Ray.

Under ``torchrun --nproc_per_node N -m stmod batch MANIFEST.yaml`` (or ``accelerate launch``) each
process runs its share; see :mod:`stmod.plugins.batch.manifest` for the manifest and the sharding.
``--engine ray`` hands the groups to a pool of Ray workers instead (:mod:`stmod.plugins.batch.ray_engine`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stmod.core.errors import UsageError
from stmod.plugins.eval.command import add_eval_arguments, eval_options

if TYPE_CHECKING:  # the batch modules import torch: only when the command runs
    from stmod.cli import Session
    from stmod.plugins.batch.manifest import DistInfo, Manifest
    from stmod.plugins.batch.ray_engine import RayOptions

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, metavar="MANIFEST.yaml", help="batch manifest (see docs/evaluation.md)")
    parser.add_argument("--plan", action="store_true",
                        help="validate every job and print the groups, shards and status; run nothing")
    parser.add_argument("--summary", action="store_true", help="only rebuild OUTPUT/batch.json from the files")
    parser.add_argument("--skip-failed", action="store_true", help="do not retry jobs that failed before")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the inversion cache")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--eval", action="store_true", help="compute metrics for each finished job (see eval)")
    ray = parser.add_argument_group("engine (see docs/scale.md)")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process (or its torchrun / accelerate shard); ray: a pool of Ray workers "
                          "that pull clip groups as they free up (pip install 'stmod[ray]')")
    ray.add_argument("--address", metavar="auto|ray://HOST:PORT",
                     help="with --engine ray: the Ray cluster to join (default: RAY_ADDRESS, else the one 'ray start' "
                          "started here, else a new local Ray)")
    ray.add_argument("--gpus-per-job", type=float, metavar="N",
                     help="with --engine ray: GPUs each worker reserves (default 0; 0.5 shares a GPU)")
    ray.add_argument("--workers", type=int, metavar="N",
                     help="with --engine ray: workers in the pool (default: as many as the cluster holds)")
    add_eval_arguments(parser.add_argument_group("metrics with --eval (as stmod-run eval)"))


def _plan(args: argparse.Namespace, session: Session, manifest: Manifest, dist: DistInfo) -> int:
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.batch.manifest import BatchState, group_jobs, shard_groups
    from stmod.plugins.batch.run import validate_jobs

    validate_jobs(manifest, Editor(session.registry, progress=False, cache=False))
    state = BatchState(manifest.output)
    groups = group_jobs(manifest.jobs)
    shards = shard_groups(groups, dist.world_size)
    rank_of = {job.name: r for r, jobs in enumerate(shards) for job in jobs}
    where = "Ray workers, as they free up" if args.engine == "ray" else (
        f"{dist.world_size} process{'es' if dist.world_size > 1 else ''}")
    session.echo(f"{len(manifest.jobs)} jobs in {len(groups)} clip groups -> {manifest.output} ({where})")
    for group in groups:
        who = "" if args.engine == "ray" else f" (rank {rank_of[group[0].name]})"
        session.echo(f"group {group[0].group}{who}:")
        for job in group:
            session.echo(f"  {job.name:<40} {state.status(job)}")
    return 0


def _ray_options(args: argparse.Namespace, dist: DistInfo) -> RayOptions | None:
    """The :class:`RayOptions` of ``--engine ray`` (checked before anything loads), or ``None`` for local."""
    ray_only = {"--address": args.address, "--gpus-per-job": args.gpus_per_job, "--workers": args.workers}
    if args.engine == "local":
        given = [flag for flag, value in ray_only.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --engine ray; add --engine ray or drop them")
        return None
    if dist.world_size > 1:
        raise UsageError(f"--engine ray schedules the jobs itself; run it once, not under torchrun / accelerate "
                         f"launch (WORLD_SIZE={dist.world_size})")
    from stmod.plugins.batch.ray_engine import RayOptions, import_ray

    if not (args.plan or args.summary):
        import_ray()  # without the extra: say how to install it, before anything else
    return RayOptions(address=args.address, workers=args.workers, gpus_per_job=args.gpus_per_job or 0.0)


def _run_on_ray(args: argparse.Namespace, session: Session, manifest: Any, options: RayOptions,
                evaluator_options: Any) -> Any:
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.batch.ray_engine import WorkerSetup, run_batch_on_ray

    setup = WorkerSetup.from_env(getattr(args, "plugins", ()), session.env, cache=not args.no_cache,
                                 eval_options=evaluator_options)
    return run_batch_on_ray(manifest, setup=setup, options=options, retry_failed=not args.skip_failed,
                            progress=not args.quiet, validator=Editor(session.registry, progress=False, cache=False))


def run(args: argparse.Namespace, session: Session) -> int:
    session.status(f"batch: {args.manifest}: loading the pipeline...")
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.batch.manifest import BatchError, BatchState, DistInfo, load_manifest, require_batch_root
    from stmod.plugins.batch.run import run_batch

    dist = DistInfo.from_env(session.env)
    ray_options = _ray_options(args, dist)
    manifest = load_manifest(args.manifest)
    require_batch_root(manifest.output)  # before any job runs: a user's batch.json there is never replaced
    if args.summary:
        summary = BatchState(manifest.output).merge(manifest, world_size=dist.world_size)
        session.echo(f"{manifest.output / 'batch.json'}: {summary['counts']}")
        return 0
    if args.plan:
        return _plan(args, session, manifest, dist)
    if ray_options is not None:
        report = _run_on_ray(args, session, manifest, ray_options, eval_options(args) if args.eval else None)
        who = f"ray, {report.world_size} worker{'s' if report.world_size > 1 else ''}: "
    else:
        evaluator = None
        if args.eval:
            from stmod.plugins.eval.evaluate import Evaluator

            evaluator = Evaluator(eval_options(args))
        editor = Editor(session.registry, progress=False, cache=False if args.no_cache else None)
        report = run_batch(manifest, editor, dist=dist, evaluator=evaluator, retry_failed=not args.skip_failed,
                           progress=not args.quiet, env=session.env)
        who = f"rank {report.rank}/{report.world_size}: " if report.world_size > 1 else ""
    session.echo(f"{who}{report.assigned} jobs: {report.done} done, {report.failed} failed, {report.skipped} "
                 f"skipped (finished before); summary {manifest.output / 'batch.json'} {report.summary['counts']}")
    if report.failed:
        raise BatchError(f"{report.failed} job(s) failed; errors in {manifest.output / '.batch' / 'errors'}; "
                         "rerun the same command to retry them (finished jobs are skipped)")
    return 0
