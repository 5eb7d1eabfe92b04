"""``stmod-run batch MANIFEST.yaml``: many edits, resumable, on one process or sharded over many.

Under ``torchrun --nproc_per_node N -m stmod batch MANIFEST.yaml`` (or ``accelerate launch``) each
process runs its share; see :mod:`stmod.plugins.batch.manifest` for the manifest and the sharding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING

from stmod.plugins.eval.command import add_eval_arguments, eval_options

if TYPE_CHECKING:  # the batch modules import torch: only when the command runs
    from stmod.plugins.batch.manifest import DistInfo

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
    add_eval_arguments(parser.add_argument_group("metrics with --eval (as stmod-run eval)"))


def _plan(args: argparse.Namespace, session, manifest, dist: DistInfo) -> int:
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.batch.manifest import BatchState, group_jobs, shard_groups
    from stmod.plugins.batch.run import validate_jobs

    validate_jobs(manifest, Editor(session.registry, progress=False, cache=False))
    state = BatchState(manifest.output)
    groups = group_jobs(manifest.jobs)
    shards = shard_groups(groups, dist.world_size)
    rank_of = {job.name: r for r, jobs in enumerate(shards) for job in jobs}
    session.echo(f"{len(manifest.jobs)} jobs in {len(groups)} clip groups -> {manifest.output} "
                 f"({dist.world_size} process{'es' if dist.world_size > 1 else ''})")
    for group in groups:
        session.echo(f"group {group[0].group} (rank {rank_of[group[0].name]}):")
        for job in group:
            session.echo(f"  {job.name:<40} {state.status(job)}")
    return 0


def run(args: argparse.Namespace, session) -> int:
    session.status(f"batch: {args.manifest}: loading the pipeline...")
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.batch.manifest import BatchError, BatchState, DistInfo, load_manifest, require_batch_root
    from stmod.plugins.batch.run import run_batch

    manifest = load_manifest(args.manifest)
    require_batch_root(manifest.output)  # before any job runs: a user's batch.json there is never replaced
    dist = DistInfo.from_env(session.env)
    if args.summary:
        summary = BatchState(manifest.output).merge(manifest, world_size=dist.world_size)
        session.echo(f"{manifest.output / 'batch.json'}: {summary['counts']}")
        return 0
    if args.plan:
        return _plan(args, session, manifest, dist)
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
