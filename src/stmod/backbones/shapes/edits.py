"""Edits of shapes-world clips with known answers: the cases of ``bench/quality.py``, the tests and the demo.

An :class:`EditCase` is a scene, the prompt that describes its source, the target prompt and the
edited regions, each with the local prompt, the colour it must turn into and the part of an object
it covers. :func:`write_case` writes it as stmod inputs (lossless PNG frames, one mask folder per
region, a job file); :func:`case_masks` gives the exact masks the metrics use.

The kinds follow the paper's granularities:

* ``class``: two identical objects, one region over both, one new colour ("two red squares").
* ``instance``: two identical objects, each its own new colour ("a red square and a blue square").
* ``part``: only an object's dot or stripe changes colour; the body is kept.
* ``object``: one of two different objects changes colour; the other and the background are kept.
* ``crossing``: two identical objects whose paths cross (one occludes the other), each its own colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from attrs import evolve, field, frozen, validators

from stmod.backbones.shapes import world
from stmod.core.types import as_tuple

__all__ = ["KINDS", "CaseRegion", "EditCase", "SceneRenderer", "article", "make_case", "benchmark_cases", "case_masks", "write_case"]

KINDS: tuple[str, ...] = ("class", "instance", "part", "object", "crossing")


@frozen(kw_only=True)
class CaseRegion:
    """An edited region: the objects it covers, which of their pixels, its local prompt and target colour."""

    name: str
    prompt: str
    colour: str = field(validator=validators.in_(tuple(world.COLOURS)))
    things: tuple[int, ...] = field(converter=as_tuple)
    #: ``object`` (body and part), ``body`` or ``part``.
    covers: str = field(default="object", validator=validators.in_(("object", "body", "part")))


class SceneRenderer(Protocol):
    """A scene drawn by another renderer than the world's."""

    def render_clip(self, frames: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images uint8 (F, H, W, 3), bodies bool (F, K, H, W), parts bool (F, K, H, W))``."""


@frozen(kw_only=True)
class EditCase:
    """A clip of the world and an edit of it with a known right answer."""

    name: str
    kind: str = field(validator=validators.in_(KINDS))
    #: a :class:`world.Scene`, or any scene with ``render_clip(frames, size)`` returning what
    #: :func:`world.render_clip` returns (the independent set's :class:`~.independent.DrawnScene`)
    scene: world.Scene | SceneRenderer
    source_prompt: str
    prompt: str
    regions: tuple[CaseRegion, ...] = field(converter=as_tuple)
    #: the clip's own frame count (``None``: the caller's, as for the benchmark's cases)
    frames: int | None = None

    def render(self, frames: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(images, bodies, parts)`` of the clip (see :func:`world.render_clip`)."""
        if isinstance(self.scene, world.Scene):
            return world.render_clip(self.scene, frames, size)
        return self.scene.render_clip(frames, size)


def _colours(rng: np.random.Generator, count: int, exclude: tuple[str, ...] = ()) -> list[str]:
    choices = [c for c in world.COLOURS if c not in exclude]
    return [str(c) for c in rng.choice(choices, count, replace=False)]


def article(word: str) -> str:
    """``word`` with its indefinite article."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _pair(rng: np.random.Generator, shape: str, colour: str, *, crossing: bool) -> tuple[world.Thing, world.Thing]:
    """Two identical objects, left and right; when ``crossing`` they swap sides during the clip."""
    size = float(rng.uniform(0.26, 0.32))
    y1, y2 = (0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.06, 0.06)) if crossing else \
        tuple(rng.uniform(0.3, 0.7, 2))
    speed = 0.075 if crossing else 0.015
    left = world.Thing(shape=shape, colour=colour, size=size, start=(0.2, y1), velocity=(speed, rng.uniform(-.01, .01)))
    right = world.Thing(shape=shape, colour=colour, size=size, start=(0.8, y2), velocity=(-speed, rng.uniform(-.01, .01)))
    return left, right


def make_case(kind: str, seed: int) -> EditCase:
    """The edit of ``kind`` drawn from ``seed`` (the same seed always gives the same case)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, KINDS.index(kind)]))
    bg = str(rng.choice(world.BACKGROUNDS))
    texture = int(rng.integers(1 << 31))
    shape = str(rng.choice(world.SHAPES))
    name = f"{kind}-{seed:02d}"
    if kind in ("class", "instance", "crossing"):
        source, new1, new2 = _colours(rng, 3)
        things = _pair(rng, shape, source, crossing=kind == "crossing")
        scene = world.Scene(background=bg, things=things, seed=texture)
        src = f"two {source} {shape}s on {bg}"
        if kind == "class":
            region = CaseRegion(name=f"{shape}s", prompt=f"{new1} {shape}s", colour=new1, things=(0, 1))
            return EditCase(name=name, kind=kind, scene=scene, source_prompt=src,
                            prompt=f"two {new1} {shape}s on {bg}", regions=(region,))
        regions = (CaseRegion(name="left", prompt=f"{new1} {shape}", colour=new1, things=(0,)),
                   CaseRegion(name="right", prompt=f"{new2} {shape}", colour=new2, things=(1,)))
        order = [0, 1] if rng.random() < 0.5 else [1, 0]  # the words never say which is on the left
        words = " and ".join(article(regions[i].prompt) for i in order)
        return EditCase(name=name, kind=kind, scene=scene, source_prompt=src, prompt=f"{words} on {bg}",
                        regions=regions)
    if kind == "part":
        body, part_colour, new = _colours(rng, 3)
        part = world.Part(kind=str(rng.choice(world.PARTS)), colour=part_colour)
        thing = evolve(world.random_thing(rng, shape=shape, colour=body, part_probability=0, speed=0.02),
                       part=part, size=float(rng.uniform(0.34, 0.42)))
        scene = world.Scene(background=bg, things=(thing,), seed=texture)
        stem = f"{article(body)} {shape} with"
        region = CaseRegion(name=part.kind, prompt=f"{new} {part.kind}", colour=new, things=(0,), covers="part")
        return EditCase(name=name, kind=kind, scene=scene, source_prompt=f"{stem} {article(part_colour)} {part.kind} on {bg}",
                        prompt=f"{stem} {article(new)} {part.kind} on {bg}", regions=(region,))
    if kind == "object":
        first, second, new = _colours(rng, 3)
        other = str(rng.choice([s for s in world.SHAPES if s != shape]))
        a = world.random_thing(rng, shape=shape, colour=first, part_probability=0, speed=0.02)
        b = world.random_thing(rng, shape=other, colour=second, part_probability=0, speed=0.02)
        a, b = evolve(a, start=(0.27, a.start[1])), evolve(b, start=(0.73, b.start[1]))
        scene = world.Scene(background=bg, things=(a, b), seed=texture)
        region = CaseRegion(name=shape, prompt=f"{new} {shape}", colour=new, things=(0,))
        return EditCase(name=name, kind=kind, scene=scene,
                        source_prompt=f"{article(first)} {shape} and {article(second)} {other} on {bg}",
                        prompt=f"{article(new)} {shape} and {article(second)} {other} on {bg}", regions=(region,))
    raise ValueError(f"unknown edit kind {kind!r}; choose one of {', '.join(KINDS)}")


def benchmark_cases(per_kind: int = 6, *, kinds: tuple[str, ...] = KINDS, seed: int = 0) -> list[EditCase]:
    """``per_kind`` cases of each kind, seeds ``seed … seed + per_kind − 1``."""
    return [make_case(kind, seed + i) for kind in kinds for i in range(per_kind)]


def case_masks(case: EditCase, bodies: np.ndarray, parts: np.ndarray) -> dict[str, np.ndarray]:
    """Bool ``(F, H, W)`` mask of each region from the clip's ``bodies``/``parts`` ``(F, K, H, W)``."""
    out = {}
    for region in case.regions:
        pick = {"object": bodies | parts, "body": bodies, "part": parts}[region.covers]
        out[region.name] = pick[:, list(region.things)].any(axis=1)
    return out


def write_case(folder: Path, case: EditCase, *, frames: int = 8, size: tuple[int, int] = (128, 128),
               steps: int = 20, blend: str = "latent", modulation: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``frames/``, ``masks/<region>/`` (PNG) and ``job.yaml`` for ``case`` (``frames`` of them unless the
    case has its own count; ``modulation``: keys added to the job's modulation; ``extra``: further job keys,
    e.g. ``control``); returns the job path."""
    from stmod.core.io.video import write_frames

    frames = case.frames or frames
    clip, bodies, parts = case.render(frames, size)
    folder.mkdir(parents=True, exist_ok=True)
    write_frames(folder / "frames", clip)
    for name, mask in case_masks(case, bodies, parts).items():
        write_frames(folder / "masks" / name, np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=3))
    job = {
        "video": {"path": "frames", "frames": frames, "size": list(size)},
        "prompt": case.prompt,
        "source_prompt": case.source_prompt,
        "regions": {r.name: r.prompt for r in case.regions},
        "layout": {"name": "masks", "dir": "masks"},
        "backbone": {"name": "shapes"},
        "blend": blend,
        "modulation": {"preset": "videograin", "end_step": max(1, (steps * 3) // 10), **(modulation or {})},
        "steps": steps,
        "guidance": 7.5,
        "seed": 0,
        "output": "result",
        **(extra or {}),
    }
    path = folder / "job.yaml"
    path.write_text(f"# {case.kind} edit {case.name} of the shapes world\n" + yaml.safe_dump(job, sort_keys=False),
                    encoding="utf-8")
    return path
