"""Command-line flags that override a job file (shared by ``check``, ``edit`` and friends).

Flags become an override mapping merged into the job file's mapping before validation, so a bad flag
value gets the same clear error as a bad key in the file. Paths given on the command line are taken
relative to the current directory; paths in the job file relative to the file's folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from stmod.core.config import job_from_mapping, load_job
from stmod.core.errors import UsageError
from stmod.core.registry import Registry
from stmod.core.types import EditSpec

__all__ = ["add_job_arguments", "job_overrides", "load_job_from_args"]


def _region(text: str) -> tuple[str, str]:
    name, sep, prompt = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=\"local prompt\", got {text!r}")
    return name.strip(), prompt


def _size(text: str) -> list[int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 512x512, got {text!r}") from None
    return [width, height]


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
    g.add_argument("--backbone", metavar="NAME", help="backbone component")
    g.add_argument("--layout", metavar="NAME", help="layout provider component (replaces the job's layout)")
    g.add_argument("--blend", metavar="NAME", help="blender component")
    g.add_argument("--modulator", metavar="NAME", help="attention modulator component (default st-layout)")
    g.add_argument("--preset", choices=("videograin", "paper"), help="modulation preset")
    g.add_argument("--start", type=int, help="first source frame")
    g.add_argument("--every", type=int, help="take every N-th frame")
    g.add_argument("--frames", type=int, help="number of frames to edit")
    g.add_argument("--size", type=_size, metavar="WxH", help="edit size in pixels, multiples of 64")
    g.add_argument("--seed", type=int)
    g.add_argument("--steps", type=int, help="DDIM steps for inversion and denoising")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--device", help="backbone device: cpu, cuda, cuda:1, auto")
    g.add_argument("--out", type=_abs_path, metavar="DIR", help="output folder")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output folder")
    g.add_argument("--save-attention", action="store_true", default=None,
                   help="write cross-attention maps of each local prompt to attention/")
    g.add_argument("--allow-unsupported", action="store_true",
                   help="run an official VideoGrain config without the features stmod does not implement "
                        "(FLATTEN, PnP, FreeU, ...), each logged as dropped")


def job_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The override mapping described by the flags in ``args`` (only flags that were given)."""
    out: dict[str, Any] = {}
    video = {key: getattr(args, attr) for key, attr in
             (("path", "video"), ("start", "start"), ("every", "every"), ("frames", "frames"), ("size", "size"))
             if getattr(args, attr) is not None}
    if video:
        out["video"] = video
    for key, attr in (("prompt", "prompt"), ("source_prompt", "source_prompt"), ("negative_prompt", "negative_prompt"),
                      ("seed", "seed"), ("steps", "steps"), ("guidance", "guidance"), ("output", "out"),
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
    if args.backbone or args.device:
        out["backbone"] = {k: v for k, v in (("name", args.backbone), ("device", args.device)) if v}
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
        return load_job(Path(args.job), overrides, allow_unsupported=args.allow_unsupported,
                        formats=registry.job_formats.values())
    return job_from_mapping(overrides, base_dir=Path.cwd(), source="command line")
