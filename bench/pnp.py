"""PnP feature injection: memory (peak RSS, records on disk) and time against the same edit without it.

Not a test. Each row is one edit of the demo's synthetic clip through the real ``Editor`` on the CPU,
in a fresh subprocess so its peak RSS is its own:

* ``off`` — no PnP;
* ``disk`` — ``pnp`` with the inversion cache on: one float16 file per injected step in the store;
* ``ram`` — ``pnp`` without the cache: the records stay in RAM.

Backbones: ``tiny`` (the test model) and ``sd15`` — SD 1.5's full architecture (UNet, ControlNet, VAE,
CLIP ViT-L) with random weights (``bench/edit.py``'s builder; the cost does not depend on the
weights). Then one SD 1.5 UNet call timed without PnP, recording and injecting, interleaved in one
process (the edits' times vary with the machine's load; the per-call times show the hooks' own cost).
Below, the records' bytes computed from SD 1.5's shapes at 512² and 16 frames,
beside the official code's (both CFG halves, all 49 steps, CPU RAM)::

    .venv/bin/python bench/pnp.py                                  # tiny and sd15, 16 frames, 128²
    .venv/bin/python bench/pnp.py --backbones tiny --frames 16 --size 128 --steps 4 --inject-step 4
    .venv/bin/python bench/pnp.py --backbones "" --overhead 3 --size 64   # only the per-call timing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _child import run_again  # bench/, the script's folder, is first on sys.path

MB, GB = 10**6, 10**9  # decimal, as the official figure (29 GB)


def one(backbone: str, mode: str, args: argparse.Namespace) -> dict:
    """One edit; its seconds per phase, peak RSS and the PnP records it left on disk."""
    import attrs

    from stmod.core.config import load_job
    from stmod.core.pipeline.cache import InversionCache
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.commands.demo import write_demo_inputs
    from stmod.plugins.manager import make_plugin_manager

    work = Path(tempfile.mkdtemp(prefix="stmod-pnp-", dir=args.work))
    job = write_demo_inputs(work / "inputs", frames=args.frames, size=(args.size, args.size), steps=args.steps)
    spec = load_job(job)
    changes: dict = {"steps": args.steps, "save_attention": False, "output": work / "out", "overwrite": True}
    if backbone == "sd15":
        sys.path.insert(0, str(Path(__file__).parent))
        from edit import build_random_sd15

        folder = build_random_sd15(Path(args.work) / "sd15-random")
        changes["backbone"] = attrs.evolve(spec.backbone, name="sd15", options={"model": str(folder), "device": "cpu"})
        changes["control"] = (attrs.evolve(spec.control[0], model=str(folder / "controlnet")),)
    if mode != "off":
        changes["extensions"] = load_job(job, {"extensions": [{"name": "pnp", "inject_step": args.inject_step}]}).extensions
    cache = InversionCache(work / "cache") if mode == "disk" else False
    editor = Editor(make_plugin_manager().registry, progress=False, cache=cache)
    began = time.perf_counter()
    run = editor.run(attrs.evolve(spec, **changes)).run
    files = list((work / "cache").rglob("step-*.pt")) if mode == "disk" else []
    return {"backbone": backbone, "mode": mode, "seconds": time.perf_counter() - began,
            "invert": run["phases"].get("invert", 0.0), "denoise": run["phases"].get("denoise", 0.0),
            "peak_rss": run["peak_rss_bytes"], "store": sum(f.stat().st_size for f in files), "files": len(files)}


def hook_overhead(args: argparse.Namespace) -> list[str]:
    """Seconds of one random-weight SD 1.5 UNet call (``--frames`` frames at ``--size``) without PnP, recording
    and injecting, interleaved ``--overhead`` times in this process, so the machine's load hits all alike."""
    import types

    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    from stmod.core.types import ExtensionInput
    from stmod.plugins.extensions.pnp import PnPExtension, PnPOptions

    sys.path.insert(0, str(Path(__file__).parent))
    from edit import build_random_sd15

    unet = UNet2DConditionModel.from_pretrained(build_random_sd15(Path(args.work) / "sd15-random") / "unet").float()
    side = args.size // 8
    x, text = torch.randn(args.frames, 4, side, side), torch.randn(args.frames, 77, 768)

    def call(mode: str) -> float:
        pnp, spec = PnPExtension(PnPOptions(inject_step=1)), types.SimpleNamespace(steps=1)
        pnp.check(spec)
        pnp.prepare(ExtensionInput(spec=spec, frames=np.zeros((args.frames, 8, 8, 3), np.uint8), latent_size=(side, side),
                                   num_frames=args.frames, store=None, device=torch.device("cpu"), dtype=torch.float32))
        with torch.no_grad(), pnp.install(unet.eval(), role="unet"):
            for phase in ("invert", "denoise")[: {"off": 0, "record": 1, "inject": 2}[mode]]:
                pnp.step(phase=phase, step_index=0, timestep=981, branches=("cond",))
                if phase == "invert" and mode == "inject":
                    unet(x, 981, encoder_hidden_states=text)  # the record to inject
            began = time.perf_counter()
            unet(x, 981, encoder_hidden_states=text)
            return time.perf_counter() - began

    rows = [{mode: call(mode) for mode in ("off", "record", "inject")} for _ in range(args.overhead)]
    return ["One SD 1.5 UNet call (random weights), seconds, interleaved:", "| try | off | record | inject |",
            "|---|---|---|---|", *(f"| {i} | {r['off']:.2f} | {r['record']:.2f} | {r['inject']:.2f} |"
                                    for i, r in enumerate(rows))]


def official_note() -> list[str]:
    from stmod.plugins.extensions.pnp_places import sd15_step_bytes

    ours, official = sd15_step_bytes(frames=16), sd15_step_bytes(frames=16, branches=2)
    return [
        "SD 1.5, 512², 16 frames (computed from the shapes; float16):",
        "| | per step | steps kept | total | where |",
        "|---|---|---|---|---|",
        f"| official (both CFG halves, every step) | {official / MB:.1f} MB | 49 | {49 * official / GB:.1f} GB | CPU RAM |",
        *(f"| stmod inject_step {n} | {ours / MB:.1f} MB | {n} | {n * ours / GB:.2f} GB | disk; RAM holds 1 step |"
          for n in (5, 10, 40)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="tiny,sd15")
    p.add_argument("--modes", default="off,disk,ram")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="square edit size in pixels")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--inject-step", type=int, default=4)
    p.add_argument("--overhead", type=int, default=3, help="tries of the per-call timing (0: none)")
    p.add_argument("--work", default=None, help="working folder (kept; default: a temporary one)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # BACKBONE:MODE, in the child process
    args = p.parse_args(argv)
    args.work = args.work or tempfile.mkdtemp(prefix="stmod-pnp-bench-")
    if args.one:
        print(json.dumps(one(*args.one.split(":"), args)))
        return 0
    passed = ["--frames", str(args.frames), "--size", str(args.size), "--steps", str(args.steps),
              "--inject-step", str(args.inject_step), "--work", args.work]
    print(f"PnP on the CPU ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}): {args.frames} frames, "
          f"{args.size}², {args.steps}+{args.steps} steps, inject_step {args.inject_step}")
    print("| backbone | mode | seconds | invert s | denoise s | peak RSS MB | records on disk MB (files) |")
    print("|---|---|---|---|---|---|---|")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    for backbone in filter(None, args.backbones.split(",")):
        for mode in args.modes.split(","):
            r, failure = run_again(__file__, [*passed, "--one", f"{backbone}:{mode}"], env=env)
            if r is None:
                print(f"| {backbone} | {mode} | failed: {failure} |")
                continue
            print(f"| {backbone} | {mode} | {r['seconds']:.1f} | {r['invert']:.1f} | {r['denoise']:.1f} | "
                  f"{r['peak_rss'] / MB:.0f} | {r['store'] / MB:.1f} ({r['files']}) |", flush=True)
    print()
    if args.overhead:
        print("\n".join(hook_overhead(args)), end="\n\n")
    print("\n".join(official_note()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
