"""Background PSNR with and without the pixel composite after decoding, on ``shapes`` and on ``tiny``.

The latent blends keep the latents outside the regions equal to the source's (``latent``: the inversion
trajectory's; exactly so at the last step), yet a VAE decoder is not local: its GroupNorm statistics and
mid-block attention carry what the edit put inside the regions across the whole frame. This measures what
the user receives outside the regions, for the demo's edit (two discs on grass, 8 frames, 20 steps), with
the blenders' ``composite`` on (the default) and off, on the trained ``shapes`` model and on ``tiny`` (random
weights of an SD-1.5-shaped model: its decoder has SD 1.5's GroupNorm and mid-block attention)::

    .venv/bin/python bench/composite.py                  # both backbones, both blends
    .venv/bin/python bench/composite.py --frames 4 --steps 10

Columns: the background PSNR outside the objects grown by 2 px (``metrics.background_psnr``, as the
benchmark reports it) and outside the composite's band (regions grown by ``composite_dilate`` and the
feather's reach), where the output must equal the input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs
import numpy as np

from stmod.backbones.shapes import metrics
from stmod.backbones.shapes.demo import DEMO_CASE, write_demo_inputs
from stmod.core.config import load_job
from stmod.core.pipeline.cache import InversionCache
from stmod.core.pipeline.editor import Editor
from stmod.core.types import ComponentRef
from stmod.plugins.blenders import BlendOptions, composite_weights
from stmod.testing import fresh_plugin_manager


def _psnr(source: np.ndarray, result: np.ndarray, keep: np.ndarray) -> float:
    diff = source.astype(np.float64)[keep] - result.astype(np.float64)[keep]
    mse = float(np.mean(diff**2)) if diff.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--backbones", default="shapes,tiny")
    p.add_argument("--blends", default="latent,videograin")
    p.add_argument("--out", type=Path, default=Path("bench-composite"))
    args = p.parse_args(argv)
    out = args.out.absolute()
    job = write_demo_inputs(out / "inputs", frames=args.frames, steps=args.steps)
    editor = Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(out / "cache"))
    base = load_job(job)
    _, bodies, parts = DEMO_CASE.render(args.frames)
    objects = (bodies | parts).any(axis=1)
    options = BlendOptions()
    band = composite_weights(objects, options.composite_dilate, options.composite_feather) == 0
    print(f"demo edit, {args.frames} frames, {args.steps} steps, guidance {base.guidance}")
    print("| backbone | blend | composite | bg PSNR (objects + 2 px) | bg PSNR (outside the band) | "
          "pixels equal to the source outside the band |")
    print("|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        for blend in args.blends.split(","):
            for composite in (False, True):
                spec = attrs.evolve(base, backbone=ComponentRef(name=backbone), overwrite=True,
                                    blend=ComponentRef(name=blend, options={"composite": composite}),
                                    output=out / "runs" / f"{backbone}-{blend}-{composite}")
                result = editor.run(spec)
                equal = float((result.frames[band] == result.source[band]).all(axis=-1).mean())
                print(f"| {backbone} | {blend} | {'on' if composite else 'off'} | "
                      f"{metrics.background_psnr(result.source, result.frames, objects):.1f} | "
                      f"{_psnr(result.source, result.frames, band):.1f} | {100 * equal:.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
