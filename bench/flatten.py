"""FLATTEN trajectory attention: construction time, memory and per-step overhead (CPU), in one run.

* **Construction** at 16 frames: DIS flow of the 15 pairs, stmod's vectorised trajectories for levels
  0–3, and the plain-Python transcription of the official algorithm (the one the tests check against,
  loops over every f·h·w point) on the same flows, at 512² (latent 64², the official size) and smaller.
* **Per UNet call**, 16 frames × 2 CFG branches: the tiny backbone's UNet and the full-size SD 1.5 UNet
  with random weights (cost does not depend on the weights) at a small size, without FLATTEN and with
  it at levels [0] and [0, 1, 2]; each configuration in a child process, so its peak RSS is its own.
  The UNet runs with diffusers' stock (per-frame) processors: FLATTEN's hooks and cost do not depend
  on the processor, so its absolute overhead is what a ST-Layout edit pays too.
* **Tiny edit** through the editor (ST-Layout attention, inversion and denoising) with and without FLATTEN.

Run: ``OMP_NUM_THREADS=2 python bench/flatten.py [--size 128] [--frames 16]``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _child import run_again  # bench/, the script's folder, is first on sys.path

ROOT = Path(__file__).resolve().parents[1]


def _official():
    """The tests' plain-Python transcription of the official ``sample_trajectories_new``."""
    spec = importlib.util.spec_from_file_location("official_ref", ROOT / "tests/extensions/test_trajectories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.official_sequences


def construction(frames: int, sizes: list[int]) -> list[dict]:
    from stmod.core.levels import level_grid
    from stmod.core.trajectories import level_flows, level_trajectories
    from stmod.plugins.commands.demo import synthetic_clip
    from stmod.plugins.eval.flow import make_flow

    official = _official()
    rows = []
    for size in sizes:
        clip, _ = synthetic_clip(frames, (size, size), seed=0)
        start = time.perf_counter()
        flows = make_flow("dis").flow(clip[:-1], clip[1:])
        flow_s = time.perf_counter() - start
        latent = (size // 8, size // 8)
        start = time.perf_counter()
        tables = [level_trajectories(flows, grid=level_grid(latent, lv), radius=2 if lv == 0 else 1, seed=0, level=lv)
                  for lv in range(4)]
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        for lv in range(4):
            official(level_flows(flows, level_grid(latent, lv)), 2 if lv == 0 else 1, np.random.default_rng([0, lv]))
        official_s = time.perf_counter() - start
        rows.append({"size": size, "flow_s": flow_s, "ours_s": ours_s, "official_s": official_s,
                     "table_mb": sum(t.keys.nbytes + t.valid.nbytes for t in tables) / 2**20,
                     "longest": tables[0].longest})
    return rows


def _unet(kind: str):
    import torch
    from diffusers import UNet2DConditionModel

    if kind == "tiny":
        from stmod.backbones.tiny import default_tiny_folder

        return UNet2DConditionModel.from_pretrained(default_tiny_folder() / "unet").eval(), 32
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval(), 768


class KernelClock:
    """Seconds spent in the trajectory attention (wraps the function the extension calls): FLATTEN's
    own added work, measured directly — on a shared machine it is steadier than a difference of calls."""

    def __init__(self) -> None:
        from stmod.plugins.extensions import flatten

        self.seconds, self._module, self._kernel = 0.0, flatten, flatten.trajectory_attention

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self._kernel(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        flatten.trajectory_attention = timed

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def unet_calls(kind: str, frames: int, size: int, rounds: int) -> dict:
    """One child per UNet: peak-RSS steps (plain first, then each FLATTEN setting), then ``rounds``
    interleaved timings of every setting (the minimum is kept: the machine is shared)."""
    import torch

    from stmod.core.levels import level_grid
    from stmod.core.trajectories import level_trajectories
    from stmod.plugins.extensions.flatten import FlattenExtension, FlattenOptions

    unet, text_dim = _unet(kind)
    latent = (size // 8, size // 8)
    x, text = torch.randn(2 * frames, 4, *latent), torch.randn(2 * frames, 77, text_dim)
    flows = np.random.default_rng(0).normal(0, 3, (frames - 1, size, size, 2)).astype(np.float32)
    settings: dict[str, FlattenExtension | None] = {"none": None}
    for levels in ([0], [0, 1, 2]):
        extension = FlattenExtension(FlattenOptions(levels=tuple(levels)))
        extension._levels = {lv: level_trajectories(flows, grid=level_grid(latent, lv),
                                                    radius=extension.options.radius(lv), seed=0, level=lv)
                             for lv in levels}
        extension._frames, extension._latent = frames, latent
        settings[str(levels)] = extension

    clock = KernelClock()

    def call(extension: FlattenExtension | None) -> tuple[float, float]:
        with torch.inference_mode(), (extension.install(unet, role="unet") if extension else contextlib.nullcontext()):
            start = time.perf_counter()
            unet(x, 500, encoder_hidden_states=text)
            return time.perf_counter() - start, clock.take()

    call(None)
    rss = {}
    for name, extension in settings.items():
        call(extension)
        rss[name] = _rss_gb()
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    for _ in range(rounds):
        for name, extension in settings.items():
            seconds[name].append(call(extension))
    tables = {name: sum(t.keys.nbytes * 2 + t.valid.nbytes for t in e._levels.values()) / 2**20  # int64 on device
              for name, e in settings.items() if e is not None}
    return {"seconds": {k: min(t for t, _ in v) for k, v in seconds.items()},
            "kernel": {k: min(f for _, f in v) for k, v in seconds.items()}, "rss_gb": rss, "tables_mb": tables}


def tiny_edit(frames: int, size: int, steps: int) -> list[dict]:
    import attrs

    from stmod.backbones.tiny import default_tiny_folder
    from stmod.core.config import load_job
    from stmod.core.pipeline.editor import Editor
    from stmod.plugins.commands.demo import write_demo_inputs
    from stmod.plugins.manager import make_plugin_manager

    work = Path(tempfile.mkdtemp(prefix="stmod-flatten-"))
    job = write_demo_inputs(work / "inputs", frames=frames, size=(size, size), steps=steps)
    editor = Editor(make_plugin_manager().registry, progress=False, cache=False)
    base = load_job(job)
    folder = default_tiny_folder()
    rows: dict[str, dict] = {}
    clock = KernelClock()
    for label, extensions in 2 * [("none", []), ("flatten [0]", [{"name": "flatten", "levels": [0]}]),
                              ("flatten [0,1,2]", [{"name": "flatten", "levels": [0, 1, 2]}])]:
        spec = load_job(job, {"extensions": extensions, "steps": steps, "save_attention": False, "overwrite": True,
                              "output": str(work / "out"), "control": [],
                              "backbone": {"name": "sd15", "model": str(folder), "device": "cpu"}})
        spec = attrs.evolve(spec, video=attrs.evolve(base.video, frames=frames))
        start = time.perf_counter()
        result = editor.run(spec)
        phases = result.run["phases"]
        row = {"label": label, "invert": phases.get("invert", 0.0), "denoise": phases.get("denoise", 0.0),
               "total": time.perf_counter() - start, "flatten": clock.take()}
        if label not in rows or row["invert"] + row["denoise"] < rows[label]["invert"] + rows[label]["denoise"]:
            rows[label] = row
    return list(rows.values())


def _child(kind: str, args: argparse.Namespace) -> dict:
    return run_again(__file__, ["--child", kind, "--frames", str(args.frames), "--size", str(args.size),
                                "--rounds", str(args.rounds)], check=True)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128, help="square size of the UNet measurement (pixels)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timings per UNet setting")
    parser.add_argument("--steps", type=int, default=4, help="DDIM steps of the tiny edit")
    parser.add_argument("--construction-sizes", type=int, nargs="*", default=[128, 256, 512])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(unet_calls(args.child, args.frames, args.size, args.rounds)))
        return 0
    load = os.getloadavg()
    print(f"FLATTEN benchmark — {args.frames} frames, CPU ({os.cpu_count()} cores, load {load[0]:.1f} at start, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n")
    print("| size | DIS flow s | trajectories (stmod) s | official transcription s | speed-up | tables MiB | longest |")
    print("|---|---|---|---|---|---|---|")
    for row in construction(args.frames, args.construction_sizes):
        print(f"| {row['size']}² | {row['flow_s']:.2f} | {row['ours_s']:.3f} | {row['official_s']:.2f} | "
              f"{row['official_s'] / row['ours_s']:.0f}× | {row['table_mb']:.1f} | {row['longest']} |")
    print(f"\nUNet call, 2 CFG branches × {args.frames} frames, {args.size}² (latent {args.size // 8}²), "
          f"fastest of {args.rounds} interleaved rounds; peak RSS after plain calls, then after each setting:\n")
    print("| UNet | FLATTEN levels | s per call | of which FLATTEN s | FLATTEN / plain call | peak RSS GB | "
          "key tables MiB |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("tiny", "sd15"):
        row = _child(kind, args)
        plain = row["seconds"]["none"]
        for name, seconds in row["seconds"].items():
            kernel = row["kernel"][name]
            print(f"| {kind} | {name} | {seconds:.3f} | {kernel:.3f} | {100 * kernel / plain:.1f}% | "
                  f"{row['rss_gb'][name]:.2f} | {row['tables_mb'].get(name, 0.0):.2f} |")
    print(f"\ntiny edit through the editor (ST-Layout attention, {args.steps}+{args.steps} steps, 64², "
          f"{args.frames} frames):\n")
    print("| extensions | invert s | denoise s | of which FLATTEN s | total s |")
    print("|---|---|---|---|---|")
    for row in tiny_edit(args.frames, 64, args.steps):
        print(f"| {row['label']} | {row['invert']:.2f} | {row['denoise']:.2f} | {row['flatten']:.2f} | "
              f"{row['total']:.2f} |")
    print(f"\nload at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
