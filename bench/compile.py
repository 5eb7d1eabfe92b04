"""Benchmark: a UNet with the ST-Layout processors, eager vs ``torch.compile`` (not a test).

Builds a random-weight UNet (``--model tiny``: the tiny backbone's :data:`~stmod.backbones.tiny.TINY_UNET`;
``sd15``: SD 1.5's UNet config), installs the processors of a prepared ``st-layout`` modulator (two
moving regions with local prompts, the ``videograin`` preset) and runs ``--steps`` denoising calls
(timesteps 981, 961, …, both CFG branches, the last step outside the modulation window) eagerly and
through ``torch.compile(unet, backend=--backend)``. Printed per mode: the first call (compile) time,
the steady per-call time (median of the later calls that compiled nothing), the graphs compiled
(backend invocations: one per graph, so recompiles and graph breaks both count), the graph breaks, and
per step max |compiled − eager|.

Usage: ``python bench/compile.py`` (tiny, 2 frames, 16² latents, 5 steps), ``--model sd15 --latent 8``
(64² pixels), ``--frames``, ``--steps``, ``--backend aot_eager``, ``--threads``
(default 1: two threads on a shared two-core machine measured 2–3 s per eager tiny call, one 0.1 s).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from stmod.backbones.tiny import TINY_UNET
from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer
from stmod.core.st_layout.modulator import EngineOptions, ModulationPlan, STLayoutModulator
from stmod.core.types import LayoutMasks, ModulationConfig, Region

#: SD 1.5's UNet (diffusers' defaults are SD 1.x's but for the text width).
SD15_UNET = dict(cross_attention_dim=768, sample_size=64)


def build(model: str, frames: int, latent: int, steps: int) -> tuple[UNet2DConditionModel, STLayoutModulator, int]:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(TINY_UNET if model == "tiny" else SD15_UNET)).eval()
    size = latent * 8
    masks = torch.zeros(frames, 2, size, size, dtype=torch.bool)
    for f in range(frames):  # two moving rectangles, some background
        masks[f, 0, : size // 2, f : size // 2 + f] = True
        masks[f, 1, size // 2 :, size // 3 :] = True
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_tiny_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    plan = ModulationPlan.from_prompts(
        masks=LayoutMasks(masks=masks, names=("cat", "dog")), tokenizer=tokenizer,
        regions=[Region(name="cat", prompt="red cat"), Region(name="dog", prompt="dog")],
        prompt="a red cat and a dog in the park", latent_size=(latent, latent),
        config=ModulationConfig(end_step=steps - 1),
    )
    modulator = STLayoutModulator(EngineOptions())
    modulator.prepare(plan)
    return unet, modulator, unet.config.cross_attention_dim


def run_steps(call: Any, modulator: STLayoutModulator, inputs: tuple[torch.Tensor, torch.Tensor],
              steps: int, counts: dict[str, int] | None = None) -> tuple[list[float], list[torch.Tensor], list[bool]]:
    """Per call: wall time, output, and whether a graph was compiled during it (``counts`` grew)."""
    latents, text = inputs
    times, outputs, compiling = [], [], []
    for i in range(steps):
        t = 981 - 20 * i
        kwargs = modulator.call_kwargs(phase="denoise", step_index=i, timestep=t)
        before = counts["graphs"] if counts is not None else 0
        start = time.perf_counter()
        with torch.no_grad():
            outputs.append(call(latents, torch.tensor(t), encoder_hidden_states=text,
                                cross_attention_kwargs=kwargs).sample)
        times.append(time.perf_counter() - start)
        compiling.append(counts is not None and counts["graphs"] != before)
    return times, outputs, compiling


def counting_backend(name: str, counts: dict[str, int]) -> Any:
    """``name``'s dynamo backend, counting the graphs it is handed."""
    inner = torch._dynamo.lookup_backend(name)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        counts["graphs"] += 1
        return inner(gm, example_inputs)
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    unet, modulator, width = build(args.model, args.frames, args.latent, args.steps)
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2 * args.frames, 4, args.latent, args.latent, generator=g),
              torch.randn(2 * args.frames, 77, width, generator=g))
    counts = {"graphs": 0}
    with modulator.install(unet, role="unet"):
        eager_times, eager_out, _ = run_steps(unet, modulator, inputs, args.steps)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = torch.compile(unet, backend=counting_backend(args.backend, counts))
        compiled_times, compiled_out, compiling = run_steps(compiled, modulator, inputs, args.steps, counts)
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    diffs = [float((a - b).abs().max()) for a, b in zip(compiled_out, eager_out)]
    print(f"model {args.model}, {args.frames} frames, {args.latent}² latents, {args.steps} denoising steps "
          f"(modulated: 0–{args.steps - 2}), backend {args.backend}, {args.threads} threads")
    print(f"{'mode':10} {'first call s':>12} {'steady s/call':>14} {'graphs':>7} {'breaks':>7}")
    # steady: the median of the calls after the first that compiled nothing (eager: after the first)
    steady = {"eager": statistics.median(eager_times[1:] or eager_times),
              "compiled": statistics.median([t for t, c in zip(compiled_times[1:], compiling[1:]) if not c]
                                            or compiled_times)}
    for mode, times in (("eager", eager_times), ("compiled", compiled_times)):
        graphs, brk = (counts["graphs"], breaks) if mode == "compiled" else ("-", "-")
        print(f"{mode:10} {times[0]:12.2f} {steady[mode]:14.4f} {graphs!s:>7} {brk!s:>7}")
    print(f"steady eager ÷ compiled: {steady['eager'] / steady['compiled']:.2f}")
    print("calls that compiled:", [i for i, c in enumerate(compiling) if c])
    print("per-call s  eager:", " ".join(f"{t:.3f}" for t in eager_times))
    print("per-call s  compiled:", " ".join(f"{t:.3f}" for t in compiled_times))
    print("max |compiled − eager| per step:", " ".join(f"{d:.2e}" for d in diffs))
    if breaks:
        for reason, n in torch._dynamo.utils.counters["graph_break"].items():
            print(f"  graph break ×{n}: {reason[:160]}")


if __name__ == "__main__":
    main()
