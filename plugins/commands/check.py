"""``stmod-run check JOB.yaml``: validate a job and its files without loading a model."""

from __future__ import annotations

import argparse

from stmod.plugins.commands.jobargs import add_job_arguments, load_job_from_args
from stmod.core.config import dump_job
from stmod.core.pipeline.components import check_job


def configure(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--print", action="store_true", dest="print_job",
                        help="print the resolved job (file + flags + defaults) as YAML")


def run(args: argparse.Namespace, session) -> int:
    spec = load_job_from_args(args)
    check_job(spec, session.registry)
    if args.print_job:
        session.echo(dump_job(spec).rstrip())
    regions = ", ".join(f"{r.name}={r.prompt!r}" for r in spec.regions) or "none"
    session.echo(f"ok: {args.job or 'job'} is valid ({spec.video.path.name}; regions: {regions})")
    return 0
