"""Benchmark a batch's engines: jobs per minute with 1 and 2 workers, ``--engine local`` against ``ray``.

Not a test. A manifest of ``--clips`` clips × ``--prompts`` prompts on the tiny backbone (CPU, random
weights: the edit's cost is tiny, so what differs is what each engine adds per job), run four ways:

* ``local`` 1 worker: one ``stmod-run batch`` process;
* ``local`` 2 workers: two processes, ``RANK=0/1 WORLD_SIZE=2`` (files only, no rendezvous);
* ``ray`` 1 and 2 workers: ``stmod-run batch --engine ray --workers N`` against one Ray started
  beforehand with ``ray.init(address="local", num_cpus=...)``; its start-up is reported apart.

Each run writes a fresh output root under ``--work``; the inversion cache is off (``--no-cache``) so
every job does the same work. Wall time includes each process's imports and model loading, as a
user's run does. Prints a Markdown table (and ``--json``). Needs ``pip install 'stmod[ray]'``.

    python bench/batch.py --clips 4 --prompts 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def write_manifest(folder: Path, clips: int, prompts: int, steps: int, output: str) -> Path:
    """``clips`` × ``prompts`` tiny-backbone jobs on one synthetic clip (clips differ by start frame)."""
    from conftest import write_clip  # the tests' synthetic clip writer

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "clip.mp4").exists():
        write_clip(folder / "clip.mp4", frames=clips + 2)
    colours = ["red", "blue", "green", "yellow", "white", "black"][:prompts]
    data = {"output": output,
            "base": {"video": {"path": "clip.mp4", "frames": 2, "size": [64, 64]}, "steps": steps,
                     "prompt": "a red cat", "regions": {"cat": "red cat"}, "layout": {"name": "full-frame"},
                     "backbone": {"name": "tiny"}, "save_attention": False},
            "clips": {f"c{i}": {"video": {"start": i}} for i in range(clips)},
            "prompts": {c: {"prompt": f"a {c} cat", "regions": {"cat": f"{c} cat"}} for c in colours}}
    path = folder / f"{output}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _command(manifest: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stmod", "-p", "stmod.testing", "batch", str(manifest), "--quiet", "--no-cache",
            *extra]


def run_local(manifest: Path, workers: int, env: dict[str, str]) -> float:
    """Seconds for ``workers`` local processes (RANK/WORLD_SIZE) to finish the manifest."""
    start = time.perf_counter()
    procs = [subprocess.Popen(_command(manifest), env={**env, "RANK": str(r), "WORLD_SIZE": str(workers)})
             for r in range(workers)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"local run of {manifest} failed")
    return time.perf_counter() - start


def run_ray(manifest: Path, workers: int, env: dict[str, str], address: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(_command(manifest, "--engine", "ray", "--address", address, "--workers", str(workers)),
                          env=env)
    if done.returncode != 0:
        raise SystemExit(f"ray run of {manifest} failed")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for inputs and outputs (default: a temp one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    import ray

    work = args.work or Path(tempfile.mkdtemp(prefix="stmod-bench-batch-"))
    jobs = args.clips * args.prompts
    started = time.perf_counter()
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray_start = time.perf_counter() - started
    # After ray.init: it sets RAY_AUTH_MODE=token here, which the CLI's processes need to join this Ray.
    env = {**os.environ, "STMOD_LOAD_PLUGINS": "", "HF_HUB_OFFLINE": "1", "STMOD_CACHE_DIR": str(work / "cache")}
    rows = []
    try:
        for engine in ("local", "ray"):
            for workers in (1, 2):
                manifest = write_manifest(work, args.clips, args.prompts, args.steps, f"runs-{engine}-{workers}")
                seconds = (run_local(manifest, workers, env) if engine == "local"
                           else run_ray(manifest, workers, env, context.address_info["address"]))
                rows.append({"engine": engine, "workers": workers, "jobs": jobs, "seconds": round(seconds, 1),
                             "jobs_per_minute": round(60 * jobs / seconds, 2)})
    finally:
        ray.shutdown()
    print(f"{jobs} tiny-model jobs ({args.clips} clips x {args.prompts} prompts, {args.steps} steps), CPU; "
          f"Ray start {ray_start:.1f} s (not counted)\n")
    print("| engine | workers | seconds | jobs/min |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['workers']} | {row['seconds']} | {row['jobs_per_minute']} |")
    for workers in (1, 2):
        local, on_ray = (next(r for r in rows if r["engine"] == e and r["workers"] == workers) for e in ("local", "ray"))
        print(f"\nray - local, {workers} worker(s): {(on_ray['seconds'] - local['seconds']) / jobs:+.2f} s per job")
    if args.json:
        args.json.write_text(json.dumps({"ray_start_seconds": round(ray_start, 1), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
