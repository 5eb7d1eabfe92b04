"""What guidance does to the latents, and what the decoder makes of it (issue 23, item 4).

For the demo's edit and a few benchmark cases, on the ``shapes`` model, at guidance 1, 7.5, 7.5 with
``guidance_rescale`` 0.7 and 7.5 with ``inversion: direct``: the denoised latents without any blend (what
the model makes everywhere) against the source's clean latents — magnitude (RMS), mean and per-channel
spread inside the regions and outside, and how far the outside moved (RMS of the difference) — and the
background PSNR outside the composite's band when the latent blend keeps the outside latents and the pixel
composite is off (how much the decoder carries the inside's statistics across the frame)::

    .venv/bin/python bench/latent_stats.py                       # the demo + 3 cases, 8 frames, 20 steps
    .venv/bin/python bench/latent_stats.py --cases 0 --frames 4 --steps 10

Prints one table (means over the clips) and writes ``latent_stats.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import yaml

import stmod.core.pipeline.editor as editor_module
from stmod.backbones.shapes import edits
from stmod.backbones.shapes.demo import DEMO_CASE, DEMO_CONTROL
from stmod.core.config import load_job
from stmod.core.pipeline.cache import InversionCache
from stmod.plugins.blenders import BlendOptions, composite_weights
from stmod.testing import fresh_plugin_manager

#: name → job changes (on top of the case's job)
SETTINGS: dict[str, dict] = {
    "guidance 1": {"guidance": 1.0},
    "guidance 7.5": {"guidance": 7.5},
    "7.5, rescale 0.7": {"guidance": 7.5, "guidance_rescale": 0.7},
    "7.5, direct inversion": {"guidance": 7.5, "inversion": "direct"},
}


def latent_stats(latents: torch.Tensor, source: torch.Tensor, inside: torch.Tensor) -> dict[str, float]:
    """RMS and mean per-channel spread of ``latents`` and ``source`` (``(F, C, h, w)``) inside the cells
    ``inside`` (bool ``(F, 1, h, w)``) and outside, how far the channel means moved (mean over channels of
    the absolute shift), and the RMS of their difference outside."""
    out: dict[str, float] = {}
    for where, cells in (("in", inside), ("out", ~inside)):
        edit, src = (z.permute(1, 0, 2, 3)[:, cells[:, 0]].double() for z in (latents, source))  # (C, cells)
        out[f"{where}: rms edit"] = float(edit.pow(2).mean().sqrt())
        out[f"{where}: rms source"] = float(src.pow(2).mean().sqrt())
        out[f"{where}: channel std edit"] = float(edit.std(dim=1).mean())
        out[f"{where}: channel std source"] = float(src.std(dim=1).mean())
        out[f"{where}: channel mean shift"] = float((edit.mean(dim=1) - src.mean(dim=1)).abs().mean())
    moved = (latents - source).permute(1, 0, 2, 3)[:, ~inside[:, 0]].double()
    out["out: rms moved"] = float(moved.pow(2).mean().sqrt())
    return out


def _psnr(source: np.ndarray, result: np.ndarray, keep: np.ndarray) -> float:
    diff = source.astype(np.float64)[keep] - result.astype(np.float64)[keep]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _run(job_path: Path, changes: dict, cache: InversionCache) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Edit the job with ``changes``; its frames, denoised latents and clean source latents."""
    job = yaml.safe_load(job_path.read_text())
    job.update(changes, overwrite=True)
    edited = job_path.with_name(f"job-{abs(hash(json.dumps(changes, sort_keys=True)))}.yaml")
    edited.write_text(yaml.safe_dump(job))
    seen: dict[str, torch.Tensor] = {}
    real_denoise, real_inversion = editor_module.denoise, editor_module.cached_inversion

    def spy_denoise(*args, **kwargs):
        seen["latents"] = real_denoise(*args, **kwargs)
        return seen["latents"]

    def spy_inversion(*args, **kwargs):
        inversion = real_inversion(*args, **kwargs)
        seen["x0"] = inversion.trajectory[0]
        return inversion

    editor_module.denoise, editor_module.cached_inversion = spy_denoise, spy_inversion
    try:
        result = editor_module.Editor(fresh_plugin_manager().registry, progress=False, cache=cache).run(load_job(edited))
    finally:
        editor_module.denoise, editor_module.cached_inversion = real_denoise, real_inversion
    return result.frames, seen["latents"], seen["x0"]


def measure(case: edits.EditCase, folder: Path, frames: int, steps: int, cache: InversionCache) -> dict[str, dict]:
    """Every setting's statistics and background PSNR for one case."""
    job_path = edits.write_case(folder, case, frames=frames, steps=steps, extra={"control": DEMO_CONTROL})
    source, bodies, parts = case.render(frames)
    objects = (bodies | parts).any(axis=1)
    options = BlendOptions()
    band = composite_weights(objects, options.composite_dilate, options.composite_feather) == 0
    rows = {}
    for name, changes in SETTINGS.items():
        out = str(folder / "out" / name.replace(" ", "_").replace(",", ""))
        _, latents, x0 = _run(job_path, {**changes, "blend": "none", "output": out + "-free"}, cache)
        cells = torch.nn.functional.max_pool2d(torch.from_numpy(objects).float()[:, None], 8) > 0  # 8×: the VAE's
        stats = latent_stats(latents, x0, cells)
        kept, _, _ = _run(job_path, {**changes, "blend": {"name": "latent", "composite": False}, "output": out + "-kept"},
                          cache)
        rows[name] = {**stats, "bg PSNR outside the band, no composite": _psnr(source, kept, band)}
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cases", type=int, default=3, help="benchmark cases besides the demo (instance kind)")
    p.add_argument("--out", type=Path, default=Path("bench-latent-stats"))
    args = p.parse_args(argv)
    out = args.out.absolute()
    cache = InversionCache(out / "cache")
    cases = [DEMO_CASE, *edits.benchmark_cases(per_kind=args.cases, kinds=("instance",))]
    per_case = {case.name: measure(case, out / case.name, args.frames, args.steps, cache) for case in cases}
    columns = list(next(iter(per_case.values()))["guidance 1"])
    means = {s: {c: float(np.mean([per_case[k][s][c] for k in per_case])) for c in columns} for s in SETTINGS}
    print(f"shapes model, {len(cases)} clips (the demo + {len(cases) - 1} instance cases), {args.frames} frames, "
          f"{args.steps} steps, ControlNet on; means over the clips")
    print("| setting | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for setting, values in means.items():
        print(f"| {setting} | " + " | ".join(f"{values[c]:.3f}" if c.startswith(("in", "out")) else f"{values[c]:.1f}"
                                            for c in columns) + " |")
    (out / "latent_stats.json").write_text(json.dumps({"frames": args.frames, "steps": args.steps,
                                                        "cases": per_case, "means": means}, indent=1))
    print(f"wrote {out / 'latent_stats.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
