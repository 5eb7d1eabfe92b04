"""Wan 2.1 with random weights: predicted against measured peak memory and seconds of each phase of an edit.

Not a test. The models are built in code (random weights: cost does not depend on them) straight on the
device — the transformer with the 1.3B config in bfloat16 and Wan's VAE in float32 — and driven through the
``wan`` backbone the way the editor drives them: VAE encode, inversion steps (cond branch, engine installed,
no regions), modulated denoising steps (two CFG branches, two regions, ``full`` attention over the latent
frames), VAE decode. No text encoder is built (umT5-XXL: 5.7 B parameters): random text rows stand in, and
the prediction leaves its weights out too. Each phase's peak is ``torch.cuda.max_memory_allocated`` since
the phase began (weights included), beside what ``stmod-run check`` predicts for the same shapes
(:mod:`stmod.core.budget.dit_estimate`); seconds per step after one untimed warm-up step (Triton autotuning)::

    .venv/bin/python bench/wan.py                              # CUDA: 1.3B config, 17 and 33 frames 480x832
    .venv/bin/python bench/wan.py --tiny --frames 5 --height 64 --width 64 --steps 1   # CPU smoke run

Prints one JSON line per frame count as it is measured (a timeout keeps the rows before it), then a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: Wan 2.1 T2V 1.3B transformer (diffusers' config keys).
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
PROMPT = "a red cat and a blue dog"


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """The ``wan`` backbone with random models set in place of loaded ones (nothing is read from disk)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from stmod.backbones.wan import WanBackbone, WanOptions
    from stmod.backbones.wan.text import StartMarkedTokenizer
    from stmod.backbones.wan.tiny import TINY_WAN_TRANSFORMER, TINY_WAN_VAE, tiny_tokenizer

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the cast below warns; it keeps fp32 parts as from_pretrained does
    torch.manual_seed(0)
    with device:  # parameters made on the device: no 6 GB float32 copy on the host
        transformer = WanTransformer3DModel(**(TINY_WAN_TRANSFORMER if tiny else WAN_1_3B))
        vae = AutoencoderKLWan(**TINY_WAN_VAE) if tiny else AutoencoderKLWan()  # diffusers' default: Wan 2.1's VAE
    backbone = WanBackbone(WanOptions(model="bench", device=str(device),
                                      dtype=str(dtype).removeprefix("torch.")))  # type: ignore[arg-type]
    transformer = transformer.to(dtype).eval().requires_grad_(False)
    keep = getattr(transformer, "_keep_in_fp32_modules", None) or ()  # norms, time embedding, rope: as loaded
    for name, param in transformer.named_parameters():
        if any(part in name.split(".") for part in keep):
            param.data = param.data.float()
    backbone.transformer = transformer
    backbone.vae = vae.float().eval().requires_grad_(False)
    backbone.tokenizer = StartMarkedTokenizer(tiny_tokenizer())
    backbone.scheduler_config = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    return backbone


def predict(backbone: Any, frames: int, height: int, width: int, steps: int) -> Any:
    """What ``stmod-run check`` predicts for these shapes and models (no text encoder: 0 parameters)."""
    import attrs

    from stmod.core.budget.estimate import estimate
    from stmod.core.budget.job import JobShape, ModelFootprint, focus_of
    from stmod.core.budget.sizes import Component
    from stmod.core.types import ModulationConfig

    def component(model: torch.nn.Module) -> Component:
        return Component(params=sum(p.numel() for p in model.parameters()), file_bytes=0, config=dict(model.config))

    cuda = backbone.device.type == "cuda"
    models = ModelFootprint(device="cuda" if cuda else "cpu", dtype_bytes=backbone.dtype.itemsize,
                            unet=component(backbone.transformer), vae=component(backbone.vae),
                            text_encoder=Component(params=0, file_bytes=0, config={}), denoiser="transformer",
                            time_ratio=4, vae_dtype_bytes=4,
                            kernel="triton" if _triton(backbone.device) else "two-pass")
    job = JobShape(frames=frames, height=height, width=width, steps=steps, modulated_steps=steps, codes=3, time_ratio=4)
    return estimate(attrs.evolve(job, focus=focus_of(ModulationConfig(), job.latent_frames)), models)


def _triton(device: torch.device) -> bool:
    from stmod.core.st_layout.kernels import triton_available

    return triton_available(device)


class Meter:
    """Seconds and peak memory of one phase: CUDA ``max_memory_allocated`` since it began, or peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.found = device, {}

    def run(self, name: str, work, repeats: int = 1) -> Any:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            out = work()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.found[name] = {"seconds": seconds, "per_step": seconds / repeats, "peak_bytes": peak}
        return out


def _modulator(backbone: Any, frames: int, height: int, width: int, steps: int, regions: bool) -> Any:
    from stmod.core.st_layout.modulator import EngineOptions, STLayoutModulator
    from stmod.core.tokens import find_token_spans
    from stmod.core.types import LayoutMasks, ModulationConfig, ModulationInput, Region

    latent = backbone.latent_frames
    config = ModulationConfig(end_step=steps).resolved(steps)  # every denoising step modulated
    modulator = STLayoutModulator(EngineOptions())
    if not regions:  # the inversion's: engine installed, no regions
        modulator.prepare(ModulationInput(masks=None, num_frames=latent, latent_size=(height // 8, width // 8),
                                          config=config, prompt=PROMPT))
        return modulator
    masks = torch.zeros(frames, 2, height, width, dtype=torch.bool)
    masks[:, 0, :, : width // 2], masks[:, 1, :, width // 2:] = True, True
    named = (Region(name="cat", prompt="red cat"), Region(name="dog", prompt="blue dog"))
    spans = find_token_spans(backbone.tokenizer, PROMPT, [r.prompt for r in named])
    modulator.prepare(ModulationInput(masks=backbone.latent_masks(LayoutMasks(masks=masks, names=("cat", "dog"))),
                                      num_frames=latent, latent_size=(height // 8, width // 8), regions=named,
                                      spans=spans, config=config, prompt=PROMPT, text_length=backbone.text_length))
    return modulator


def measure(backbone: Any, frames: int, height: int, width: int, steps: int) -> dict:
    """Encode, ``steps`` inversion and ``steps`` modulated denoising steps (each after a warm-up), decode."""
    meter = Meter(backbone.device)
    video = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        x = meter.run("encode", lambda: backbone.encode(video))
        f = len(x)
        dim = backbone.transformer.config.text_dim
        text = torch.randn(2, backbone.text_length, dim, device=backbone.device, dtype=backbone.dtype)
        for phase, branches in (("inversion", ("cond",)), ("denoising", ("uncond", "cond"))):
            modulator = _modulator(backbone, frames, height, width, steps, regions=phase == "denoising")
            latents = x.repeat(len(branches), 1, 1, 1)
            rows = text[-len(branches):].repeat_interleave(f, dim=0)
            kwargs = modulator.call_kwargs(phase="invert" if phase == "inversion" else "denoise", step_index=0,
                                           timestep=500, branches=branches)
            with modulator.install(backbone.attention_models()["unet"]):
                call = lambda: backbone.predict_noise(latents, 500, rows, cross_attention_kwargs=kwargs)  # noqa: E731
                call()  # warm-up: Triton autotuning, cuDNN plans
                meter.run(phase, call, repeats=steps)
        meter.run("decoding", lambda: backbone.decode(x))
    return meter.found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test configs (CPU smoke run) instead of 1.3B")
    parser.add_argument("--frames", type=int, nargs="*", default=[17, 33], help="1 + 4k frame counts")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per phase (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    bad = [f for f in args.frames if (f - 1) % 4]
    if bad:
        parser.error(f"--frames {bad[0]}: Wan's VAE takes 1 + 4k frames, e.g. {1 + 4 * ((bad[0] - 1) // 4)}")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone = build(args.tiny, device, dtype)
    rows = []
    for frames in args.frames:
        found = measure(backbone, frames, args.height, args.width, args.steps)
        predicted = predict(backbone, frames, args.height, args.width, args.steps)
        row = {"config": "tiny" if args.tiny else "1.3B", "frames": frames, "height": args.height, "width": args.width,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "measured": found,
               "predicted": {p.name: {"peak_bytes": p.peak_bytes, "per_step": (p.seconds or 0.0) / (
                   args.steps if p.name in ("inversion", "denoising") else 1)} for p in predicted.phases}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    _table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _table(rows: list[dict]) -> None:
    memory = "max_memory_allocated" if rows and rows[0]["device"] != "cpu" else "peak RSS (whole process)"
    print(f"\n| config | frames | phase | predicted GiB | measured {memory} GiB | ratio | predicted s/step | "
          "measured s/step | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for phase in ("encode", "inversion", "denoising", "decoding"):
            p, m = row["predicted"][phase], row["measured"][phase]
            print(f"| {row['config']} | {row['frames']} | {phase} | {p['peak_bytes'] / 2**30:.2f} | "
                  f"{m['peak_bytes'] / 2**30:.2f} | {m['peak_bytes'] / p['peak_bytes']:.2f} | {p['per_step']:.3g} | "
                  f"{m['per_step']:.3g} | {m['per_step'] / max(p['per_step'], 1e-9):.2f} |")


if __name__ == "__main__":
    sys.exit(main())
