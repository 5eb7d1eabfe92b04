"""``stmod-run check JOB.yaml``: validate a job and its files without loading a model.

It runs :meth:`Editor.prepare`, the validation ``edit`` runs before loading weights, so a job that
``check`` calls valid fails in ``edit`` only for what needs the model (or the inversion's features).
Then it prints the predicted peak memory and seconds per phase (:mod:`stmod.core.budget`, no weights
load) and, on a GPU the job would not fit, a warning with the changes that would fit.
"""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from stmod.core.config import dump_job
from stmod.plugins.commands.jobargs import add_job_arguments, load_job_from_args, weights_placed

if TYPE_CHECKING:
    from stmod.cli import Session
    from stmod.core.pipeline.editor import Prepared
    from stmod.core.types import EditSpec


def _gib(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected free GPU memory in GiB such as 24, got {text!r}") from None
    if not 0 < value <= 2**20:
        raise argparse.ArgumentTypeError(f"--gpu-memory {text}: must be above 0 and at most 1048576 GiB")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser)
    parser.add_argument("--print", action="store_true", dest="print_job",
                        help="print the resolved job (file + flags + defaults) as YAML")
    parser.add_argument("--gpu-memory", type=_gib, metavar="GIB", default=None,
                        help="predict against a GPU with this much free memory (GiB) instead of the visible one; "
                             "plans the job on CUDA even where it would run on the CPU (e.g. --gpu-memory 24)")
    # the global -v/--verbose, also accepted after the command; SUPPRESS keeps a count given before it
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="print the prediction's whole table (parts of the peak, attention working set)")


def describe_window(spec: EditSpec) -> str:
    """Which denoising steps the modulation covers, and why (the job's ``end_step`` or the default share)."""
    from stmod.core.types import MODULATED_FRACTION

    start, end = spec.modulation_window
    steps = f"denoising steps {start}-{end - 1} of {spec.steps}" if end > start else f"no step of {spec.steps}"
    why = (f"end_step {spec.modulation.end_step} from the job" if spec.modulation.end_step is not None
           else f"end_step unset: the first {MODULATED_FRACTION:.0%} of the steps")
    return f"modulation: {steps} ({why})"


def overlap_lines(spec: EditSpec, prepared: Prepared) -> list[str]:
    """What the job's ``layout_overlap`` rule did to overlapping masks, with pixel counts (none when the
    layout waits for the inversion's features, as K-Means does)."""
    from stmod.core.pipeline.compose import overlap_report

    if prepared.layout is None or not prepared.parts:
        return []
    return overlap_report([part for _, part in sorted(prepared.parts.items())], prepared.layout,
                          spec.layout_overlap, frame_indices=prepared.request.frame_indices)


def run(args: argparse.Namespace, session: Session) -> int:
    spec = load_job_from_args(args, session.registry)
    session.status(f"check: {args.job or 'job'}: reading {spec.video.path.name}, building the components and the "
                   "layout (no weights load)...")
    from stmod.core.pipeline.editor import Editor  # torch: only once there is a job to check

    from stmod.core.errors import OutputExistsError
    from stmod.core.pipeline.components import check_output_folder
    from stmod.plugins.commands.prediction import prediction_lines

    with weights_placed(args, session.registry):  # every missing weights file at once, each with where to put it
        prepared = Editor(session.registry, progress=False, cache=False).prepare(spec, check_output=False)
    if args.print_job:
        session.echo(dump_job(spec).rstrip())
    regions = ", ".join(f"{r.name}={r.prompt!r}" for r in spec.regions) or "none"
    session.echo(f"ok: {args.job or 'job'} is valid ({spec.video.path.name}; regions: {regions})")
    session.echo(describe_window(spec))
    for line in overlap_lines(spec, prepared):
        session.echo(line)
    from stmod.core.io.video import sound_track_note

    sound = sound_track_note(prepared.clip.info)
    if sound:
        session.echo(f"note: {sound}")
    try:  # the job is fine; its output folder is what a run would find, worth saying but not an error here
        check_output_folder(spec)
    except OutputExistsError:
        session.echo(f"note: the output folder {spec.output} exists: edit needs --overwrite to replace it, or --out DIR")
    for line in prediction_lines(spec, prepared.components.backbone, len(prepared.clip.indices),
                                 gpu_memory_gib=args.gpu_memory, verbose=getattr(args, "verbose", 0) > 0):
        session.echo(line)
    return 0
