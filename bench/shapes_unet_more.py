"""Continue the shipped ``shapes`` model's UNet and text encoder for more steps: the experiment behind
docs/shapes.md's "Longer training and stronger grounding" (does a longer UNet stage, or a stronger grounding
loss, make the model bind colours to the right objects?).

Starts from the shipped EMA weights, runs the training's own UNet stage (``stmod.backbones.shapes.train``:
the same data, losses and batch) as a second cosine cycle of ``--steps`` at ``--lr``, and exports a model
folder with the shipped VAE and ControlNet beside the new UNet, for ``bench/quality.py --model``. Not the
shipping command: a model made so is the shipped one plus this cycle, not one command from scratch.

    python bench/shapes_unet_more.py --work more --steps 2400 --lr 5e-4 [--grounding-weight 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from stmod.backbones.shapes import SHIPPED_MODEL, train

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="data cache, checkpoints; the model goes to WORK/model")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--grounding-weight", type=float, default=1.0)
    p.add_argument("--images", type=int, default=16000, help="world frames (default: the training's %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = SHIPPED_MODEL
    cfg = train.TrainConfig(train._parser().parse_args([
        "--work", str(args.work), "--unet-steps", str(args.steps), "--unet-lr", str(args.lr),
        "--grounding-weight", str(args.grounding_weight), "--images", str(args.images)]))
    args.work.mkdir(parents=True, exist_ok=True)
    data, _ = train._load_world(args.work, cfg, max(1, args.threads)).split(64)  # the shipped training's frames
    cfg.seed = 1  # then the cycle draws batches and noise from a stream the first cycle did not use
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    controlnet = ControlNetModel.from_pretrained(base, subfolder=train.CONTROLNET_FOLDER)
    latents = train.encode_latents(vae, data.images) * vae.config.scaling_factor
    ema, seconds = train.train_unet(unet, text_encoder, tokenizer, latents, data, cfg, args.work)
    ema.copy_to(unet.parameters())
    info = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    info.pop("files", None)
    info["unet_more"] = {"steps": args.steps, "lr": args.lr, "grounding_weight": args.grounding_weight,
                         "threads": args.threads, "seconds": round(seconds, 1)}
    train.export(args.work / "model", vae, unet, text_encoder, tokenizer, info, controlnet=controlnet)
    print(f"wrote {args.work / 'model'} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
