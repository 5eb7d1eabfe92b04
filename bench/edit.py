"""Benchmark a whole edit: time per phase, peak memory.

Not a test. Two modes:

* ``python bench/edit.py`` — the tiny backbone on the CPU (the demo's synthetic clip): seconds per
  phase, so regressions in orchestration, inversion or the engine show up without a GPU.
* ``python bench/edit.py --full-sd15`` (needs CUDA) — the full SD 1.5 + ControlNet architecture with
  random weights (cost does not depend on the weights), 512×512, 50 inversion + 50 denoising steps, at
  16 and 32 frames: total minutes and peak GPU memory. Targets: < 1.5 min and < 12 GB at 16 frames on
  an H100 (paper: 3.83 min / 15.94 GB on an A6000; the official code needs ≈ 23 GB).

Each configuration runs in this process after a warm-up is *not* done: the numbers include model
loading, as a user's run does; ``run.json`` of each run is kept under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import attrs
import torch

from stmod.core.config import load_job
from stmod.plugins.commands.demo import write_demo_inputs
from stmod.core.pipeline.editor import Editor
from stmod.plugins.manager import make_plugin_manager


def build_random_sd15(folder: Path) -> Path:
    """SD 1.5's architecture (UNet 860 M, VAE, CLIP ViT-L text encoder) + a ControlNet, random weights."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from stmod.backbones.tiny_tokenizer import write_tiny_clip_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    vocab = write_tiny_clip_tokenizer(folder / "tok-src")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok-src")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5 defaults
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, sample_size=512, layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=max(vocab, 49408), hidden_size=768, intermediate_size=3072,
                                        num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder)
    ControlNetModel.from_unet(unet).to(torch.float16).save_pretrained(folder / "controlnet")
    return folder


def run_once(editor: Editor, job: Path, changes: dict) -> dict:
    spec = attrs.evolve(load_job(job), overwrite=True, **changes)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = editor.run(spec)
    run = dict(result.run)
    run["wall_seconds"] = time.perf_counter() - start
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-sd15", action="store_true", help="SD 1.5 architecture on CUDA (random weights)")
    parser.add_argument("--frames", type=int, nargs="*", help="frame counts (default: 8 tiny; 16 32 full)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: 20 tiny; 50 full)")
    parser.add_argument("--size", type=int, help="square edit size (default: 128 tiny; 512 full)")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.full_sd15 and not torch.cuda.is_available():
        parser.error("--full-sd15 needs a CUDA device")
    frames = args.frames or ([16, 32] if args.full_sd15 else [8])
    steps = args.steps or (50 if args.full_sd15 else 20)
    size = args.size or (512 if args.full_sd15 else 128)
    work = args.work or Path(tempfile.mkdtemp(prefix="stmod-bench-"))
    os.environ.setdefault("STMOD_CACHE_DIR", str(work / "cache"))
    job = write_demo_inputs(work / "inputs", frames=max(frames), size=(size, size), steps=steps)
    editor = Editor(make_plugin_manager().registry, progress=False, cache=False)
    rows = []
    for count in frames:
        changes: dict = {"steps": steps, "save_attention": False, "output": work / f"out-{count}"}
        spec = load_job(job)
        changes["video"] = attrs.evolve(spec.video, frames=count)
        if args.full_sd15:
            folder = build_random_sd15(work / "sd15-random")
            changes["backbone"] = attrs.evolve(spec.backbone, name="sd15", options={"model": str(folder), "device": "cuda"})
            changes["control"] = (attrs.evolve(spec.control[0], model=str(folder / "controlnet")),)
        run = run_once(editor, job, changes)
        (work / f"run-{count}.json").write_text(json.dumps(run, indent=2))
        rows.append((count, run))

    phases = ["load", "encode", "invert", "denoise", "decode", "write"]
    device = "CUDA " + torch.cuda.get_device_name(0) if args.full_sd15 else f"CPU ({os.cpu_count()} cores)"
    print(f"\nedit benchmark — {'SD 1.5 + ControlNet (random weights)' if args.full_sd15 else 'tiny backbone'}, "
          f"{size}x{size}, {steps}+{steps} steps, {device}")
    print("| frames | " + " | ".join(f"{p} s" for p in phases) + " | total min | peak GPU GB | peak RSS GB |")
    print("|---" * (len(phases) + 4) + "|")
    for count, run in rows:
        gpu = run.get("peak_gpu_bytes")
        cells = [f"{run['phases'].get(p, 0.0):.1f}" for p in phases]
        print(f"| {count} | " + " | ".join(cells) + f" | {run['wall_seconds'] / 60:.2f} | "
              f"{gpu / 2**30 if gpu else float('nan'):.2f} | {run['peak_rss_bytes'] / 2**30:.2f} |")
    if args.full_sd15:
        sixteen = dict(rows).get(16)
        if sixteen:
            print(f"16 frames: {sixteen['wall_seconds'] / 60:.2f} min (target < 1.5), "
                  f"{sixteen['peak_gpu_bytes'] / 2**30:.2f} GB (target < 12)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
