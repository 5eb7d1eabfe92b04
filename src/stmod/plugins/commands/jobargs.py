"""Command-line flags that override a job file (shared by ``check``, ``edit`` and friends).

Flags become an override mapping merged into the job file's mapping before validation, so a bad flag
value gets the same clear error as a bad key in the file. Paths given on the command line are taken
relative to the current directory; paths in the job file relative to the file's folder.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import attrs

from stmod.core.config import job_from_mapping, load_job, load_mapping
from stmod.core.errors import CheckpointError, StmodError, UsageError
from stmod.core.protocols import size_multiple
from stmod.core.registry import Registry
from stmod.core.types import EditSpec

__all__ = ["add_job_arguments", "job_overrides", "load_job_from_args", "model_location", "weights_placed"]


def _region(text: str) -> tuple[str, str]:
    name, sep, prompt = text.partition("=")
    if not sep or not name.strip(" "):
        raise argparse.ArgumentTypeError(f"expected NAME=\"local prompt\", got {text!r}")
    # spaces around "=" are layout; a newline or tab is part of the name, which the name rule then refuses
    return name.strip(" "), prompt


def _size(text: str) -> list[int] | str:
    if text.strip().lower() == "keep":
        return "keep"
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x512, or keep, got {text!r}") from None
    return [width, height]


def _control(text: str) -> dict[str, Any]:
    annotator, sep, scale = text.partition("=")
    if not annotator.strip():
        raise argparse.ArgumentTypeError(f"expected ANNOTATOR or ANNOTATOR=SCALE such as canny=0.8, got {text!r}")
    if not sep:
        return {"annotator": annotator.strip()}
    try:
        return {"annotator": annotator.strip(), "scale": float(scale)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"the scale of {text!r} is not a number; e.g. canny=0.8") from None


def model_location(text: str) -> str:
    """A model given on the command line: an existing path is taken relative to the current directory
    (the job file's folder is what paths inside the file are relative to); anything else is a hub id."""
    path = Path(text).expanduser()
    return str(path.absolute()) if path.exists() else text


def _abs_path(text: str) -> str:
    return str(Path(text).expanduser().absolute())


def add_job_arguments(parser: argparse.ArgumentParser, *, job_required: bool = False) -> None:
    """Add ``JOB`` and the override flags to ``parser``."""
    parser.add_argument("job", metavar="JOB.yaml", nargs=None if job_required else "?",
                        help="job file" + ("" if job_required else " (optional when flags describe the whole job)"))
    g = parser.add_argument_group("job overrides (take precedence over the job file)")
    g.add_argument("--video", type=_abs_path, help="clip: mp4/mov/webm/gif file or a folder of frames")
    g.add_argument("--prompt", help="global target prompt")
    g.add_argument("--source-prompt", help="prompt describing the source clip (used for inversion)")
    g.add_argument("--negative-prompt", help="negative prompt")
    g.add_argument("--region", action="append", type=_region, default=[], metavar='NAME="local prompt"',
                   help="a region and its local prompt (repeatable; NAME must match a mask)")
    g.add_argument("--masks", type=_abs_path, metavar="DIR", help="use the 'masks' layout with this folder")
    g.add_argument("--backbone", metavar="NAME", help="backbone component (default sd15; see stmod-run list backbones)")
    g.add_argument("--layout", metavar="NAME", help="layout provider component (replaces the job's layout)")
    g.add_argument("--blend", metavar="NAME", help="blender component: none (default), latent, videograin")
    g.add_argument("--modulator", metavar="NAME", help="attention modulator component (default st-layout)")
    g.add_argument("--preset", choices=("videograin", "paper"), help="modulation preset (default videograin)")
    g.add_argument("--start", type=int, help="first source frame (default 0)")
    g.add_argument("--every", type=int, help="take every N-th frame (default 1)")
    g.add_argument("--frames", type=int, help="number of frames to edit (default: all from --start)")
    g.add_argument("--size", type=_size, metavar="WxH|keep",
                   help="edit size in pixels, multiples of 64 for SD 1.5 backbones, 16 for wan (job default "
                        "512x512); keep: the clip's own size, rounded down to those multiples")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--steps", type=int, help="DDIM steps for inversion and denoising (default 50)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--inversion", choices=("plain", "direct", "negative-prompt"),
                   help="how denoising keeps to the inversion: plain (official), direct (per-step drift corrections), "
                        "negative-prompt; the last two need --source-prompt (default plain; docs/guide.md)")
    g.add_argument("--device", help="backbone device: cpu, cuda, cuda:1, auto (default auto: CUDA when available)")
    g.add_argument("--model", type=model_location, metavar="ID|DIR|FILE",
                   help="backbone weights: hub id, diffusers folder or .safetensors (sd15; default "
                        "stable-diffusion-v1-5/stable-diffusion-v1-5)")
    g.add_argument("--dtype", choices=("auto", "float16", "bfloat16", "float32"),
                   help="backbone dtype (sd15; default auto: float16 on CUDA, float32 on CPU)")
    g.add_argument("--cpu-offload", action="store_true", default=None,
                   help="keep the models on the CPU, each moved to the GPU when it runs, through accelerate's hooks "
                        "(sd15; nothing to do without a GPU)")
    g.add_argument("--vae-tiling", action="store_true", default=None, help="tiled VAE for large frames (sd15)")
    g.add_argument("--control", action="append", type=_control, default=[], metavar="ANNOTATOR[=SCALE]",
                   help="a ControlNet condition, e.g. canny or depth=0.8 (repeatable; replaces the job's control; "
                        "scale default 1.0)")
    g.add_argument("--out", type=_abs_path, metavar="DIR", help="output folder (default ./stmod-out)")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output folder")
    g.add_argument("--save-attention", action="store_true", default=None,
                   help="write cross-attention maps of each local prompt to attention/")
    g.add_argument("--no-control", action="store_true", default=None,
                   help="drop the job's ControlNet conditions (e.g. to try an official config without its "
                        "ControlNet weights)")
    g.add_argument("--annotator-weights", type=_abs_path, metavar="DIR",
                   help="a folder of annotator weights (depth, openpose), looked in after the job's own weights "
                        "locations (an official config's ./annotator/ckpts, then the HF cache)")
    g.add_argument("--allow-unsupported", action="store_true",
                   help="run an official VideoGrain config without the features stmod does not implement, "
                        "each logged as dropped")
    g.add_argument("--prompt-index", type=int, metavar="K",
                   help="which of an official VideoGrain config's editing_prompts to edit (default 0, the first)")


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The override mapping described by the flags in ``args`` (only flags that were given)."""
    out: dict[str, Any] = {}
    video = {key: getattr(args, attr) for key, attr in
             (("path", "video"), ("start", "start"), ("every", "every"), ("frames", "frames"), ("size", "size"))
             if getattr(args, attr) is not None and getattr(args, attr) != "keep"}
    if video:
        out["video"] = video
    for key, attr in (("prompt", "prompt"), ("source_prompt", "source_prompt"), ("negative_prompt", "negative_prompt"),
                      ("seed", "seed"), ("steps", "steps"), ("guidance", "guidance"), ("inversion", "inversion"), ("output", "out"),
                      ("overwrite", "overwrite"), ("save_attention", "save_attention")):
        if getattr(args, attr) is not None:
            out[key] = getattr(args, attr)
    if args.region:
        out["regions"] = dict(args.region)
    if args.layout and args.masks:
        raise UsageError("--layout and --masks both choose the layout; give one of them")
    if args.layout:
        out["layout"] = args.layout
    if args.masks:
        out["layout"] = {"name": "masks", "dir": args.masks}
    backbone = {k: v for k, v in (("name", args.backbone), ("device", args.device), ("model", args.model),
                                  ("dtype", args.dtype), ("cpu_offload", args.cpu_offload),
                                  ("vae_tiling", args.vae_tiling)) if v is not None}
    if backbone:
        out["backbone"] = backbone
    if args.control and args.no_control:
        raise UsageError("--control and --no-control contradict each other; give one of them")
    if args.control:
        out["control"] = list(args.control)
    if args.no_control:
        out["control"] = []
    if args.blend:
        out["blend"] = {"name": args.blend}
    if args.modulator:
        out["modulator"] = {"name": args.modulator}
    if args.preset:
        out["modulation"] = {"preset": args.preset}
    return out


def load_job_from_args(args: argparse.Namespace, registry: Registry) -> EditSpec:
    """The validated job described by ``JOB.yaml`` (if given, in any registered format) plus the override flags."""
    overrides = job_overrides(args)
    if args.job:
        spec = load_job(Path(args.job), overrides, allow_unsupported=args.allow_unsupported,
                        prompt_index=args.prompt_index, formats=registry.job_formats.values())
    elif args.prompt_index is not None:
        raise UsageError("--prompt-index chooses among the editing prompts of a job file; give the file")
    else:
        spec = job_from_mapping(overrides, base_dir=Path.cwd(), source="command line")
    if getattr(args, "annotator_weights", None):
        spec = _with_annotator_weights(spec, args.annotator_weights, registry)
    return _keep_size(spec, registry) if getattr(args, "size", None) == "keep" else spec


def _with_annotator_weights(spec: EditSpec, folder: str, registry: Registry) -> EditSpec:
    """``--annotator-weights DIR``: ``DIR`` appended to the ``weights`` of every control entry whose
    annotator takes weights (the list of locations looked in per file, in order)."""
    controls, extended = [], False
    for control in spec.control:
        options = None
        with contextlib.suppress(StmodError):  # an unknown annotator: check names it
            options = registry.info("annotator", control.annotator.name).options
        field = attrs.fields_dict(options).get("weights") if options is not None else None
        if field is None:
            controls.append(control)
            continue
        current = control.annotator.options.get("weights", field.default)
        listed = list(current) if isinstance(current, (list, tuple)) else [current]
        annotator = attrs.evolve(control.annotator, options={**control.annotator.options, "weights": [*listed, folder]})
        controls.append(attrs.evolve(control, annotator=annotator))
        extended = True
    if not extended:
        raise UsageError(f"--annotator-weights {folder}: no control entry of this job has an annotator that takes "
                         "weights (depth, openpose); drop the flag")
    return attrs.evolve(spec, control=tuple(controls))


def _keep_size(spec: EditSpec, registry: Registry) -> EditSpec:
    """``--size keep``: the clip's own size, rounded down to the multiples the job's backbone takes (64 for
    SD 1.5, 16 for Wan: :func:`~stmod.core.protocols.size_multiple`): no upscaling, a thin crop."""
    from stmod.core.io.video import probe_video  # reads the clip's header only

    info = probe_video(spec.video.path)
    backbone = registry.create("backbone", spec.backbone.name, spec.backbone.options,
                               place=f"backbone ({spec.backbone.name})")  # its options only: no weights load
    step = size_multiple(backbone)
    size = (max(64, info.width // step * step), max(64, info.height // step * step))
    return attrs.evolve(spec, video=attrs.evolve(spec.video, size=size))


@contextlib.contextmanager
def weights_placed(args: argparse.Namespace, registry: Registry) -> Iterator[None]:
    """Missing weights raised in the block say, for a job file in a registered format (an official
    VideoGrain config), where that format's documentation puts them (its ``places``)."""
    try:
        yield
    except CheckpointError as error:
        places = _format_places(Path(args.job), registry) if getattr(args, "job", None) else {}
        if not places:
            raise
        raise error.placed(places) from None


def _format_places(path: Path, registry: Registry) -> dict[str, str]:
    with contextlib.suppress(StmodError, OSError):
        data = load_mapping(path)
        for fmt in registry.job_formats.values():
            if fmt.detect(data):
                return dict(fmt.places)
    return {}
