"""The demo edit: two identical white discs on grass become a red one and a blue one, the grass kept.

It is the instance-level problem in its plainest form: the prompt "a red disc and a blue disc on
grass" does not say which disc is which, the two masks do. :func:`write_demo_inputs` writes the clip
(lossless PNG frames), the masks and the job; :func:`demo_scores` reads the result back against the
world's exact masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stmod.backbones.shapes import edits, metrics, world

__all__ = ["DEMO_CASE", "DEMO_CONTROL", "DEMO_MODULATION", "DEMO_GUIDANCE_INTERVAL", "write_demo_inputs",
           "demo_scores"]

DEMO_CASE = edits.EditCase(
    name="demo",
    kind="instance",
    scene=world.Scene(background="grass", seed=7, things=(
        world.Thing(shape="disc", colour="white", size=0.3, start=(0.24, 0.42), velocity=(0.012, 0.01)),
        world.Thing(shape="disc", colour="white", size=0.3, start=(0.76, 0.58), velocity=(-0.012, -0.01)),
    )),
    source_prompt="two white discs on grass",
    prompt="a red disc and a blue disc on grass",
    regions=(edits.CaseRegion(name="left_disc", prompt="red disc", colour="red", things=(0,)),
             edits.CaseRegion(name="right_disc", prompt="blue disc", colour="blue", things=(1,))),
)


#: The demo's structure guidance: the shipped model's ControlNet on the ``canny`` annotator's edges.
DEMO_CONTROL = [{"annotator": "canny", "scale": 1.0}]
#: The ``paper`` preset with masks downsampled by area. At the shapes model's 16×16 latents the finest layers
#: are where each object's colour is painted, and the ``videograin`` preset (the official code) leaves them
#: stock; ``paper`` modulates them (most of its gain) and conditions on the global prompt. Area downsampling
#: keeps each disc's whole area in its region (the official nearest one shifts masks half a cell down-right).
#: Measured in docs/shapes.md, "The finest layers, and guidance while colours are decided".
DEMO_MODULATION = {"preset": "paper", "mask_downsample": "area"}
#: Guidance in the first half of the steps only, where the colours are decided; the second half follows the
#: conditional prediction, as the inversion did, so the discs come back solid instead of patched.
DEMO_GUIDANCE_INTERVAL = [0, 0.5]


def write_demo_inputs(folder: Path, *, frames: int = 8, steps: int = 20) -> Path:
    """Write the demo's frames, masks and job (:data:`DEMO_CONTROL`, :data:`DEMO_MODULATION`,
    :data:`DEMO_GUIDANCE_INTERVAL`) into ``folder``; returns the job path."""
    return edits.write_case(folder, DEMO_CASE, frames=frames, steps=steps, modulation=DEMO_MODULATION,
                            extra={"control": DEMO_CONTROL, "guidance_interval": DEMO_GUIDANCE_INTERVAL})


def demo_scores(source: np.ndarray, result: np.ndarray) -> dict[str, dict[str, float]]:
    """Per region: attribute accuracy, shape IoU, clean frames and leakage of an edit of the demo clip; plus
    background PSNR."""
    _, bodies, parts = DEMO_CASE.render(len(result), (result.shape[2], result.shape[1]))
    masks = edits.case_masks(DEMO_CASE, bodies, parts)
    colours = {r.name: r.colour for r in DEMO_CASE.regions}
    leak = metrics.leakage(source, result, masks, colours)
    scores = {r.name: {"accuracy": metrics.attribute_accuracy(result, masks[r.name], r.colour),
                       "shape_iou": metrics.shape_iou(result, masks[r.name], r.colour),
                       "clean": metrics.clean_frames(result, masks[r.name], r.colour),
                       "leakage": leak[r.name]} for r in DEMO_CASE.regions}
    scores["background"] = {"psnr": metrics.background_psnr(source, result, (bodies | parts).any(axis=1))}
    return scores
