"""``stmod-run layout JOB.yaml``: compute a job's layout only and write it as masks.

What is written is described in :mod:`stmod.core.io.layout_outputs`.

No diffusion model runs, except the inversion a ``kmeans`` layout needs (read from the inversion
cache when possible). The job's output folder (or ``--out``) is written atomically and never
replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from stmod.core.errors import environment_errors
from stmod.plugins.commands.jobargs import add_job_arguments, load_job_from_args

if TYPE_CHECKING:
    from stmod.cli import Session


def configure(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the inversion cache (kmeans)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, session: Session) -> int:
    spec = load_job_from_args(args, session.registry)
    session.status(f"layout: {spec.video.path.name} -> {spec.output}: loading the pipeline...")
    # The pipeline (torch, PIL) loads only once there is a job to lay out.
    from stmod.core.io.layout_outputs import write_layout_outputs
    from stmod.core.pipeline.components import claim_output
    from stmod.core.pipeline.editor import Editor

    editor = Editor(session.registry, progress=not args.quiet, cache=False if args.no_cache else None)
    result = editor.layout(spec)
    with claim_output(spec), environment_errors(spec.output):  # checked again under the folder's lock
        record = write_layout_outputs(spec, result)
    regions = ", ".join(f"{name} {100 * info['pixels']:.0f}%" for name, info in record["regions"].items()) or "none"
    session.echo(f"wrote {spec.output} ({len(result.clip.indices)} frames; regions: {regions})")
    if record["clusters"]:
        session.echo(f"  see {spec.output / 'clusters.mp4'} for the K-Means cluster ids and the words naming them")
    return 0
