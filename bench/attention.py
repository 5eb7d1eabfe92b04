"""Benchmark of one modulated spatio-temporal self-attention call (not a test).

Compares, on the same inputs (F frames × N tokens form one sequence of L = F·N tokens, 8 heads,
head dim 80, three moving regions plus uncovered background, ξ(981)·0.3 strength):

(a) ``plain``    — ``F.scaled_dot_product_attention`` over the whole video (the unmodulated engine path);
(b) ``ours``     — :func:`stmod.core.st_layout.kernels.modulated_attention` (two passes, no L×L tensor),
                   labels from :func:`stmod.core.st_layout.labels.level_layout`;
(c) ``official`` — the official code's style: a dense fp16 ``(L, L)`` condition map ``Σ_s m_s m_sᵀ``
                   and, per head, a materialised score slice modulated in place, softmax, ``@V``.

Time is wall-clock of the attention call: (a) and (b) best of ``--repeats`` runs, alternated in one
process so that load changes on a shared machine hit both alike, at each of ``--threads`` (the
ratio's range over the repeats is printed too); (c) one run. The timing table also states the
layout's share of *uniform* query rows (relation row all-negative or all-positive: the background
in the ``videograin`` preset), which skip the row-extrema pass, and times the cross-attention path of
the same layout (per frame, N queries × 77 text keys, each region's local prompt 2 tokens):
``plain`` SDPA, ``ours`` (:func:`~stmod.core.st_layout.kernels.modulated_attention_few_keys`) and
``explicit`` (:func:`~stmod.core.st_layout.kernels.modulated_attention_explicit`, the recording path). Per-run
precomputation (our codes, the official map) is excluded from time but its memory is counted.

Peak extra memory = the most memory in use during the call (labels/map, temporaries, output) minus
what was in use before (inputs already existed). How it is measured:

* CPU: each variant runs in a **fresh subprocess** started with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc
  then maps every allocation ≥ 64 KiB separately and returns it on free, so resident memory follows
  live memory). After a small warm-up call (thread pools, lazy init), the child resets its resident
  high-water mark (``/proc/self/clear_refs`` ← 5) and reports ``VmHWM − VmRSS(before)``. This sees
  everything, including buffers inside ATen kernels. As a cross-check the child also runs the call once
  under a ``TorchDispatchMode`` that adds up the bytes of every new tensor storage an ATen op returns
  and subtracts them when the storage is freed (peak of live tensor bytes; blind to kernel-internal
  scratch). Both are printed; the ratio uses the resident (RSS) figure.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation
  before the call.

Usage: ``python bench/attention.py`` (CPU, F=16, 32×32; plus fp16 GPU sizes when CUDA is present),
``--quick`` for a small run, ``--repeats N``, ``--threads 1 2`` (CPU thread counts timed),
``--time-only`` (skip the memory children and the official variant), ``--budget-mb M`` (our
working-memory budget).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from stmod.core.st_layout.kernels import (
    modulated_attention,
    modulated_attention_explicit,
    modulated_attention_few_keys,
    uniform_rows,
)
from stmod.core.st_layout.labels import level_layout, rules_for, time_weight
from stmod.core.st_layout.triton_kernel import key_tiles, token_order

from _child import run_again  # bench/, the script's folder, is first on sys.path

HEADS, HEAD_DIM, STRENGTH, TEXT = 8, 80, 0.3, 77
#: Token spans of the three regions' local prompts in the bench's (imaginary) global prompt.
SPANS = [(1, 3), (4, 6), (7, 9)]
VARIANTS = ("plain", "ours", "official")
#: Our kernel's variants and their ``use_triton``: ``ours`` picks (Triton on CUDA when importable);
#: ``triton-sorted`` is the Triton kernel with the tokens in region-code order (as the engine runs it).
OURS = {"ours": None, "two-pass": False, "triton": True, "triton-sorted": True}


def make_inputs(frames: int, grid: tuple[int, int], dtype: torch.dtype, device: str, seed: int = 0):
    """Random q, k, v ``(1, H, F·N, d)`` and bool region masks ``(F, 3, h, w)`` (some pixels in none)."""
    g = torch.Generator().manual_seed(seed)
    length = frames * grid[0] * grid[1]
    q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, generator=g).to(device, dtype) for _ in range(3))
    h, w = grid
    masks = torch.zeros(frames, 3, h, w, dtype=torch.bool)
    for f in range(frames):
        shift = f * w // (4 * frames)
        masks[f, 0, h // 8 : h // 2, w // 8 + shift : w // 2 + shift] = True
        masks[f, 1, h // 2 :, w // 3 : w - w // 8] = True
        masks[f, 2, : h // 8] = True
    return q, k, v, masks


def prepare(variant: str, masks: torch.Tensor, device: str, dtype: torch.dtype) -> Any:
    """Per-run precomputation: our per-token codes, or the official dense map and size column."""
    if variant in OURS:
        layout = level_layout(masks, masks.shape[-2:], rules=rules_for("videograin"), spans=SPANS).to(device)
        codes = layout.self_codes.reshape(1, -1)
        return layout, token_order(codes, codes) if variant == "triton-sorted" else None
    if variant == "official":
        frames, regions = masks.shape[:2]
        flat = masks.permute(1, 0, 2, 3).reshape(regions, -1).to(device, torch.float16)
        dense = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float16, device=device)
        for s in range(regions):  # Σ_s m_s m_sᵀ, accumulated (the official builds an (s, L, L) product)
            dense.addr_(flat[s], flat[s])
        area = flat.sum(1, keepdim=True)  # region sizes over the video
        size = 1 - (flat * area).sum(0) / (frames * frames * masks.shape[-2] * masks.shape[-1])
        return dense[None], size.view(1, -1, 1).to(torch.float16)
    return None


def run(variant: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prepared: Any, budget: int) -> torch.Tensor:
    """One attention call of ``variant``; returns ``(1, H, L, d)``."""
    xi = time_weight(981)
    if variant == "plain":
        return F.scaled_dot_product_attention(q, k, v)
    if variant in OURS:
        layout, order = prepared
        lam = (xi * STRENGTH * layout.self_size).reshape(1, -1)
        codes = layout.self_codes.reshape(1, -1)
        return modulated_attention(q, k, v, strength=lam, query_codes=codes, key_codes=codes,
                                   relation=layout.self_relation, budget_bytes=budget, use_triton=OURS[variant],
                                   order=order)
    sreg_map, reg_size = prepared
    scale = q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    for h in range(q.shape[1]):  # official _sliced_attention: one head per slice, full (L, L) scores
        sim = torch.baddbmm(torch.empty(1, q.shape[2], k.shape[2], dtype=q.dtype, device=q.device),
                            q[:, h], k[:, h].transpose(-1, -2), beta=0, alpha=scale)
        min_value = sim.min(-1)[0].unsqueeze(-1)
        max_value = sim.max(-1)[0].unsqueeze(-1)
        mask = sreg_map.repeat(1, 1, 1)
        size_reg = reg_size.repeat(1, 1, 1)
        sim += (mask > 0) * size_reg * STRENGTH * xi * (max_value - sim)
        sim -= ~(mask > 0) * size_reg * STRENGTH * xi * (sim - min_value)
        out[:, h] = torch.bmm(sim.softmax(dim=-1).to(v.dtype), v[:, h])
        del sim, mask, size_reg, min_value, max_value
    return out


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created by ATen ops while active (freed storages are subtracted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, ptr: int, nbytes: int) -> None:
        self._seen.discard(ptr)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and ptr not in self._seen:
                    self._seen.add(ptr)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, ptr, nbytes)
        return out


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _timed(fn: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one variant's memory (and time) on CPU in this fresh process."""
    torch.manual_seed(0)
    budget = int(args.budget_mb * 2**20)
    wq, wk, wv, wm = make_inputs(1, (8, 8), torch.float32, "cpu")
    run(args.child, wq, wk, wv, prepare(args.child, wm, "cpu", torch.float32), budget)  # warm-up
    q, k, v, masks = make_inputs(args.frames, (args.grid, args.grid), torch.float32, "cpu")
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    prepared = prepare(args.child, masks, "cpu", torch.float32)
    seconds = _timed(lambda: run(args.child, q, k, v, prepared, budget), "cpu")
    rss = _status("VmHWM") - before
    del prepared
    with LiveTensorBytes() as probe:
        run(args.child, q, k, v, prepare(args.child, masks, "cpu", torch.float32), budget)
    return {"variant": args.child, "seconds": seconds, "rss": rss, "tracked": probe.peak}


def _cross_runs(layout: Any, frames: int, budget: int) -> dict[str, Callable[[], Any]]:
    """The cross-attention calls of the layout, per frame: ``(F, H, N, d)`` queries × 77 text keys."""
    g = torch.Generator().manual_seed(1)
    n = layout.pixel_codes.shape[1]
    q = torch.randn(frames, HEADS, n, HEAD_DIM, generator=g)
    k, v = (torch.randn(frames, HEADS, TEXT, HEAD_DIM, generator=g) for _ in range(2))
    labels = {"strength": time_weight(981) * layout.cross_size, "query_codes": layout.pixel_codes,
              "key_codes": layout.text_codes[None], "relation": layout.cross_relation, "budget_bytes": budget}
    return {"plain": lambda: F.scaled_dot_product_attention(q, k, v),
            "ours": lambda: modulated_attention_few_keys(q, k, v, **labels),
            "explicit": lambda: modulated_attention_explicit(q, k, v, **labels)}


def timing_child(args: argparse.Namespace) -> dict[str, Any]:
    """Best-of-N times of ``plain`` and ``ours`` (self and cross), alternated so that load changes hit
    both alike, with the per-repeat ratios and the share of uniform query rows."""
    torch.set_num_threads(args.threads[0])
    budget = int(args.budget_mb * 2**20)
    q, k, v, masks = make_inputs(args.frames, (args.grid, args.grid), torch.float32, "cpu")
    prepared = {name: prepare(name, masks, "cpu", torch.float32) for name in ("plain", "ours")}
    layout = prepared["ours"][0]
    codes = layout.self_codes.reshape(1, -1)
    share = uniform_rows(layout.self_size.reshape(1, -1), codes, codes, layout.self_relation).float().mean()
    runs = {name: (lambda name=name: run(name, q, k, v, prepared[name], budget)) for name in prepared}
    runs.update({f"cross {name}": fn for name, fn in _cross_runs(layout, args.frames, budget).items()})
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn, "cpu"))
    return {"threads": torch.get_num_threads(), "uniform_share": float(share), "times": times}


def _ratio(times: dict[str, list[float]], top: str, bottom: str) -> str:
    ratios = [a / b for a, b in zip(times[top], times[bottom])]
    return f"{min(times[top]) / min(times[bottom]):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def print_timing(frames: int, grid: int, rows: list[dict[str, Any]]) -> None:
    """The timing table: one line per thread count (best-of times, best ratio [per-repeat range])."""
    print(f"\nCPU fp32 timing, F={frames}, {grid}x{grid} (L={frames * grid * grid}), {HEADS} heads, head dim "
          f"{HEAD_DIM}; uniform (background) query rows: {rows[0]['uniform_share']:.0%}")
    print(f"{'threads':<8}{'plain s':>9}{'ours s':>9}{'ours/plain [range]':>22}"
          f"{'x plain ms':>12}{'x ours ms':>11}{'x ours/plain [range]':>22}{'x explicit/plain':>18}")
    for r in rows:
        t = r["times"]
        print(f"{r['threads']:<8}{min(t['plain']):>9.2f}{min(t['ours']):>9.2f}{_ratio(t, 'ours', 'plain'):>22}"
              f"{min(t['cross plain']) * 1e3:>12.1f}{min(t['cross ours']) * 1e3:>11.1f}"
              f"{_ratio(t, 'cross ours', 'cross plain'):>22}{_ratio(t, 'cross explicit', 'cross plain'):>18}")
    print("(x = cross-attention, per frame, 77 text keys; target ours/plain <= 1.5 with two threads)")


def _child_json(args: list[str], env: dict[str, str]) -> Any:
    return run_again(__file__, args, env=env, check=True)[0]


def cpu_table(frames: int, grid: int, repeats: int, budget_mb: float) -> dict[str, dict[str, Any]]:
    """Memory (and one-run time) of each variant, each in a fresh subprocess."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    common = ["--frames", str(frames), "--grid", str(grid), "--repeats", str(repeats), "--budget-mb", str(budget_mb)]
    return {variant: _child_json(["--child", variant, *common], env) for variant in VARIANTS}


def timing_rows(frames: int, grid: int, repeats: int, budget_mb: float, threads: list[int]) -> list[dict[str, Any]]:
    common = ["--frames", str(frames), "--grid", str(grid), "--repeats", str(repeats), "--budget-mb", str(budget_mb)]
    return [_child_json(["--child", "timing", "--threads", str(n), *common], dict(os.environ)) for n in threads]


def cuda_row(variant: str, frames: int, grid: int, repeats: int, budget: int) -> dict[str, Any]:
    q, k, v, masks = make_inputs(frames, (grid, grid), torch.float16, "cuda")
    run(variant, q[:, :, :64], k[:, :, :64], v[:, :, :64], prepare(variant, masks[:1, :, :8, :8], "cuda",
        torch.float16), budget)  # warm-up (kernels, cuBLAS handles)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        prepared = prepare(variant, masks, "cuda", torch.float16)
        seconds = min(_timed(lambda: run(variant, q, k, v, prepared, budget), "cuda") for _ in range(repeats))
        peak = torch.cuda.max_memory_allocated() - before
    except torch.OutOfMemoryError:
        return {"variant": variant, "seconds": math.nan, "cuda": math.nan, "oom": True}
    finally:
        prepared = None
        torch.cuda.empty_cache()
    return {"variant": variant, "seconds": seconds, "cuda": peak}


def cuda_kernels(sizes: list[tuple[int, int]], repeats: int, budget: int) -> None:
    """fp16 CUDA table of plain SDPA, our two-pass kernel and the Triton kernel on the tokens as they
    come and sorted by region code (time, peak, max |Δ| to the two-pass kernel)."""
    names = ("plain", "two-pass", "triton", "triton-sorted")
    for frames, grid in sizes:
        rows = {name: cuda_row(name, frames, grid, repeats, budget) for name in names}
        q, k, v, masks = make_inputs(frames, (grid, grid), torch.float16, "cuda")
        base = run("two-pass", q, k, v, prepare("two-pass", masks, "cuda", torch.float16), budget).float()
        diffs = {name: (run(name, q, k, v, prepare(name, masks, "cuda", torch.float16), budget).float() - base)
                 .abs().max().item() for name in ("triton", "triton-sorted")}
        layout, order = prepare("triton-sorted", masks, "cuda", torch.float16)
        tiles = [key_tiles(layout.self_codes.reshape(1, -1)), order.tiles]
        print(f"\nCUDA fp16 ({torch.cuda.get_device_name()}), F={frames}, {grid}x{grid} "
              f"(L={frames * grid * grid} tokens), {HEADS} heads, head dim {HEAD_DIM}; single-code key tiles: "
              + ", ".join(f"{t.single.numel()}/{t.single.numel() + t.mixed.numel()} {how}"
                          for t, how in zip(tiles, ("as they come", "sorted"))))
        print(f"{'variant':<10}{'time (ms)':>12}{'x plain':>9}{'peak extra (GB)':>18}")
        for name in names:
            r = rows[name]
            print(f"{name:<10}{r['seconds'] * 1e3:>12.2f}{r['seconds'] / rows['plain']['seconds']:>9.2f}"
                  f"{r['cuda'] / 1e9:>18.3f}")
        print(f"max |triton - two-pass| = {diffs['triton']:.2e}, "
              f"max |triton-sorted - two-pass| = {diffs['triton-sorted']:.2e}")
        del q, k, v, base
        torch.cuda.empty_cache()


def _print_cpu(frames: int, grid: int, results: dict[str, dict[str, Any]]) -> None:
    length = frames * grid * grid
    print(f"\nCPU fp32, F={frames}, {grid}x{grid} latents per frame (L={length} tokens), {HEADS} heads, "
          f"head dim {HEAD_DIM}, {torch.get_num_threads()} threads")
    print(f"{'variant':<10}{'time (s)':>10}{'peak extra RSS (MiB)':>23}{'tracked tensors (MiB)':>24}")
    for name in VARIANTS:
        r = results[name]
        print(f"{name:<10}{r['seconds']:>10.2f}{r['rss'] / 2**20:>23.1f}{r['tracked'] / 2**20:>24.1f}")
    ours, official = results["ours"], results["official"]
    print(f"ours / official memory:   {ours['rss'] / official['rss']:.3f} RSS, "
          f"{ours['tracked'] / official['tracked']:.3f} tracked  (target <= 0.1)")


def _print_cuda(frames: int, grid: int, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\nCUDA fp16 ({torch.cuda.get_device_name()}), F={frames}, {grid}x{grid} "
          f"(L={frames * grid * grid} tokens)")
    print(f"{'variant':<10}{'time (ms)':>12}{'peak extra (GB)':>18}")
    for name in VARIANTS:
        r = rows[name]
        mem = "OOM" if r.get("oom") else f"{r['cuda'] / 1e9:.3f}"
        print(f"{name:<10}{r['seconds'] * 1e3:>12.1f}{mem:>18}")
    ours, plain, official = rows["ours"], rows["plain"], rows["official"]
    print(f"ours / plain time: {ours['seconds'] / plain['seconds']:.2f}", end="")
    if not official.get("oom"):
        print(f"   ours / official memory: {ours['cuda'] / official['cuda']:.3f}")
    else:
        print("   official: out of memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (F=4, 16x16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of plain and ours (best is kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to time")
    parser.add_argument("--cuda-kernels", action="store_true",
                        help="CUDA only: plain SDPA, two-pass and Triton at 16x64² and 32x32² (bench/gpu.sh)")
    parser.add_argument("--time-only", action="store_true", help="only the timing table (no memory, no official)")
    parser.add_argument("--budget-mb", type=float, default=256.0)
    parser.add_argument("--child", choices=(*VARIANTS, "timing"), help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, default=32, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(timing_child(args) if args.child == "timing" else child(args)))
        return
    if args.cuda_kernels:  # the GPU table only (bench/gpu.sh): no CPU timing on the lent machine
        if not torch.cuda.is_available():
            parser.error("--cuda-kernels needs a CUDA device")
        cuda_kernels([(16, 64), (32, 32)], args.repeats, int(args.budget_mb * 2**20))
        return
    frames, grid = (4, 16) if args.quick else (16, 32)
    print_timing(frames, grid, timing_rows(frames, grid, args.repeats, args.budget_mb, args.threads))
    if not args.time_only:
        _print_cpu(frames, grid, cpu_table(frames, grid, args.repeats, args.budget_mb))
    if torch.cuda.is_available():
        budget = int(args.budget_mb * 2**20)
        sizes = [(4, 16)] if args.quick else [(16, 32), (16, 64), (32, 32)]
        for f, g in sizes:
            _print_cuda(f, g, {v: cuda_row(v, f, g, args.repeats, budget) for v in VARIANTS})


if __name__ == "__main__":
    main()
