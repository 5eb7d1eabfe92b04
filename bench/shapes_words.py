"""Has the shapes model learned its words? Text-to-image from noise, colours read back.

For every palette colour, prompts "a <colour> <shape> on <background>" are sampled from noise with
diffusers' own ``StableDiffusionPipeline`` (no stmod code in the loop), and the dominant palette colour
of each image is compared with the prompt's. Editing cannot work better than this: a model that does
not draw "red" from noise will not paint a region red. Prints a table per colour and the total::

    .venv/bin/python bench/shapes_words.py                 # the shipped model
    .venv/bin/python bench/shapes_words.py --model shapes-train/model --samples 4
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from stmod.backbones.shapes import SHIPPED_MODEL, world


def dominant_colour(image: np.ndarray) -> str | None:
    classes = world.colour_classes(image)
    found = classes[classes >= 0]
    return list(world.COLOURS)[np.bincount(found, minlength=len(world.COLOURS)).argmax()] if found.size else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL), help="a shapes model folder (default: the shipped one)")
    p.add_argument("--samples", type=int, default=2, help="images per prompt (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    rows, hits, total = {}, 0, 0
    for colour in world.COLOURS:
        correct = 0
        for i in range(len(world.SHAPES)):
            prompt = f"a {colour} {world.SHAPES[i]} on {rng.choice(world.BACKGROUNDS)}".replace("a orange", "an orange")
            images = pipe([prompt] * args.samples, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          height=128, width=128, generator=torch.Generator().manual_seed(i), output_type="np").images
            correct += sum(dominant_colour((im * 255).round().astype(np.uint8)) == colour for im in images)
        rows[colour] = correct / (len(world.SHAPES) * args.samples)
        hits, total = hits + correct, total + len(world.SHAPES) * args.samples
    print("| colour | images whose dominant colour is the prompt's |")
    print("|---|---|")
    for colour, share in rows.items():
        print(f"| {colour} | {share:.2f} |")
    print(f"total: {hits}/{total} = {hits / total:.2f} (chance with 8 colours: 0.12)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"per_colour": rows, "total": hits / total, "model": args.model}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
