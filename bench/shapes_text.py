"""How much does the shapes model's UNet listen to its text? ε error with the right, empty and a wrong caption.

World frames the model never saw (seed 123) are encoded, noised to timestep t with SD's schedule,
and the UNet (diffusers' own, no stmod code in the loop) predicts the noise three times: with the
frame's caption, with the empty caption (the unconditional branch of classifier-free guidance) and
with "a red square on grass". A model that uses its text has a clearly lower error with the right
caption and a higher one with the wrong caption; a model that ignores it has three equal columns::

    .venv/bin/python bench/shapes_text.py                          # the shipped model
    .venv/bin/python bench/shapes_text.py --model shapes-train/model --frames 16
"""

from __future__ import annotations

import argparse

import torch

from stmod.backbones.shapes import SHIPPED_MODEL
from stmod.backbones.shapes.train import _to_tensor, make_dataset, noise_scheduler

WRONG = "a red square on grass"


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="a shapes model folder (default: the shipped one)")
    p.add_argument("--frames", type=int, default=8, help="held-out world frames (default: %(default)s)")
    p.add_argument("--timesteps", default="100,400,700,900")
    args = p.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    images, captions, _ = make_dataset(args.frames, seed=123, workers=1)

    def embed(texts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    latents = pipe.vae.encode(_to_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor
    texts = {"right": embed(captions), "empty": embed([""] * len(captions)), "wrong": embed([WRONG] * len(captions))}
    schedule, generator = noise_scheduler(), torch.Generator().manual_seed(0)
    print("| t | right caption | empty caption | wrong caption | right / empty |")
    print("|---|---|---|---|---|")
    for t in (int(v) for v in args.timesteps.split(",")):
        noise = torch.randn(latents.shape, generator=generator)
        steps = torch.full((len(latents),), t)
        noisy = schedule.add_noise(latents, noise, steps)
        error = {k: (pipe.unet(noisy, steps, e).sample - noise).pow(2).mean().item() for k, e in texts.items()}
        print(f"| {t} | {error['right']:.4f} | {error['empty']:.4f} | {error['wrong']:.4f} | "
              f"{error['right'] / error['empty']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
