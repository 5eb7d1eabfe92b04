"""An independent set of shapes-world edit cases: clips the world's own renderer did not draw.

``bench/quality.py --cases independent`` runs these beside the generator's cases
(:func:`stmod.backbones.shapes.edits.benchmark_cases`), so that a figure measured there is not a property of
one renderer, one set of textures and one clip length. What differs from the world's renderer
(:func:`stmod.backbones.shapes.world.render`):

* **drawing**: OpenCV's anti-aliased primitives at the frame's own resolution (not 2× supersampled
  coverage), a ring's width and a stripe's height of their own, a triangle pointing up or down;
* **textures**: each background drawn anew — grass as blade strokes over a two-tone field, sand as
  speckles and ripples, sky as a vertical gradient with soft clouds, snow as drifts with blue shadows —
  in shades near, not equal to, the world's;
* **colours**: each object's colour moved by up to ±14 per channel from the palette (always within the
  distance that :func:`~stmod.backbones.shapes.world.colour_classes` reads back);
* **geometry**: sizes 0.2–0.4 of the frame, any start position, straight paths at their own speeds that
  stop at the borders (no bounce), 8 to 12 frames per clip.

The words and the edit kinds are the benchmark's (``class``, ``instance``, ``part``, ``object``,
``crossing``), so every case is a sentence the ``shapes`` model knows and has one right answer,
measured against the exact masks this renderer returns.
"""

from __future__ import annotations

import cv2
import numpy as np
from attrs import field, frozen

from stmod.backbones.shapes import edits, world
from stmod.core.types import as_tuple

__all__ = ["DrawnThing", "DrawnScene", "independent_cases", "make_independent_case"]

#: Frames per clip are drawn from this range (inclusive).
FRAME_RANGE = (8, 12)


@frozen(kw_only=True)
class DrawnThing:
    """An object as this renderer draws it: shape, RGB colour, size (fraction of the frame height),
    start and velocity (fractions per frame), an optional part (``dot``/``stripe``, its RGB colour)."""

    shape: str
    rgb: tuple[int, int, int]
    size: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    part: str | None = None
    part_rgb: tuple[int, int, int] = (0, 0, 0)
    #: ring width / stripe height as a share of the size; a triangle's direction (1 up, −1 down)
    detail: float = 0.25
    pointing: int = 1

    def centre(self, t: float) -> tuple[float, float]:
        half = self.size / 2
        x, y = (float(np.clip(p + t * v, half, 1 - half)) for p, v in zip(self.start, self.velocity))
        return x, y


@frozen(kw_only=True)
class DrawnScene:
    """A background name, a texture seed and objects, later ones over earlier ones."""

    background: str
    things: tuple[DrawnThing, ...] = field(converter=as_tuple)
    seed: int = 0

    def render_clip(self, frames: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
        """``(images uint8 (F, H, W, 3), bodies bool (F, K, H, W), parts bool (F, K, H, W))``, as
        :func:`stmod.backbones.shapes.world.render_clip` returns them."""
        width, height = size
        texture = _texture(self.background, height, width, self.seed)
        images, bodies, parts = [], [], []
        for t in range(frames):
            image = texture.copy()
            owner = np.full((height, width), -1, np.int16)
            is_part = np.zeros((height, width), bool)
            for k, thing in enumerate(self.things):
                body_cover, part_cover = _draw(thing, t, width, height)
                _paint(image, body_cover, thing.rgb)
                owner[body_cover > 0.5], is_part[body_cover > 0.5] = k, False
                if part_cover is not None:
                    part_cover = np.minimum(part_cover, body_cover)
                    _paint(image, part_cover, thing.part_rgb)
                    is_part[part_cover > 0.5] = True
            images.append(image.round().astype(np.uint8))
            bodies.append(np.stack([(owner == k) & ~is_part for k in range(len(self.things))]))
            parts.append(np.stack([(owner == k) & is_part for k in range(len(self.things))]))
        return np.stack(images), np.stack(bodies), np.stack(parts)


def _paint(image: np.ndarray, cover: np.ndarray, rgb: tuple[int, int, int]) -> None:
    image += cover[..., None] * (np.asarray(rgb, np.float32) - image)


def _draw(thing: DrawnThing, t: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Coverage in [0, 1] (OpenCV anti-aliasing, 4 bits of sub-pixel precision) of the body and the part."""
    shift, scale = 4, 16
    cx, cy = thing.centre(t)
    cx, cy, r = cx * width, cy * height, thing.size * height / 2

    def canvas() -> np.ndarray:
        return np.zeros((height, width), np.uint8)

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(x * scale)), int(round(y * scale))

    body = canvas()
    if thing.shape == "disc":
        cv2.circle(body, pt(cx, cy), int(round(r * scale)), 255, -1, cv2.LINE_AA, shift)
    elif thing.shape == "ring":
        width_px = max(2.0, thing.detail * 2 * r)
        cv2.circle(body, pt(cx, cy), int(round((r - width_px / 2) * scale)), 255, int(round(width_px)),
                   cv2.LINE_AA, shift)
    elif thing.shape == "square":
        corners = np.array([pt(cx - r, cy - r), pt(cx + r, cy - r), pt(cx + r, cy + r), pt(cx - r, cy + r)])
        cv2.fillPoly(body, [corners], 255, cv2.LINE_AA, shift)
    else:  # triangle
        d = thing.pointing
        corners = np.array([pt(cx, cy - d * r), pt(cx + r, cy + d * r), pt(cx - r, cy + d * r)])
        cv2.fillPoly(body, [corners], 255, cv2.LINE_AA, shift)
    if thing.part is None:
        return body / 255.0, None
    part = canvas()
    if thing.part == "dot":
        cv2.circle(part, pt(cx, cy), int(round(0.32 * r * scale)), 255, -1, cv2.LINE_AA, shift)
    else:
        half = max(1.5, thing.detail * r)
        rows = np.array([pt(cx - r, cy - half), pt(cx + r, cy - half), pt(cx + r, cy + half), pt(cx - r, cy + half)])
        cv2.fillPoly(part, [rows], 255, cv2.LINE_AA, shift)
    return body / 255.0, part / 255.0


def _texture(kind: str, height: int, width: int, seed: int) -> np.ndarray:
    """float32 ``(H, W, 3)`` background, drawn differently from :func:`stmod.backbones.shapes.world.background`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image: np.ndarray
    if kind == "grass":
        base = np.where(((xx + 3 * np.sin(yy / 9)) // 11 % 2)[..., None] == 0, (70, 125, 55), (82, 140, 62))
        image = base.astype(np.float32)
        for _ in range(height * width // 60):  # blades: short dark strokes
            x, y = rng.integers(0, width), rng.integers(0, height)
            cv2.line(image, (int(x), int(y)), (int(x + rng.integers(-2, 3)), int(y - rng.integers(3, 7))),
                     (52, 100, 40), 1, cv2.LINE_AA)
    elif kind == "sand":
        ripples = 6 * np.sin(yy / 5 + 0.8 * np.sin(xx / 17))[..., None]
        image = np.asarray((205, 180, 128), np.float32) + ripples + rng.normal(0, 7, (height, width, 1))
    elif kind == "sky":
        image = np.stack([110 + 60 * yy / height, 160 + 50 * yy / height, 235 + 0 * yy], axis=-1)
        for _ in range(3):  # soft clouds
            outline = np.zeros((height, width), np.float32)
            cv2.ellipse(outline, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                        (int(rng.integers(10, 30)), int(rng.integers(5, 12))), 0, 0, 360, 1.0, -1)
            cloud = cv2.GaussianBlur(outline, (0, 0), 4)[..., None]
            image = image + cloud * (np.float32(245) - image) * 0.8
    else:  # snow
        drifts = 8 * np.sin(xx / 13 + yy / 29)[..., None]
        image = np.asarray((236, 240, 246), np.float32) + drifts - 10 * (rng.random((height, width, 1)) < 0.03)
        image[..., 2:] += 4
    return np.clip(image, 0, 255).astype(np.float32)


def _rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + j, 0, 255)) for c, j in zip(world.COLOURS[colour], rng.integers(-14, 15, 3)))
    return r, g, b


def _thing(rng: np.random.Generator, shape: str, colour: str, *, size: float | None = None,
           start: tuple[float, float] | None = None, velocity: tuple[float, float] | None = None,
           part: tuple[str, str] | None = None) -> DrawnThing:
    size = size if size is not None else float(rng.uniform(0.2, 0.4))
    if start is None:
        start = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)))
    if velocity is None:
        velocity = (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02)))
    return DrawnThing(shape=shape, rgb=_rgb(rng, colour), size=size, start=start, velocity=velocity,
                      part=part[0] if part else None, part_rgb=_rgb(rng, part[1]) if part else (0, 0, 0),
                      detail=float(rng.uniform(0.2, 0.32)), pointing=int(rng.choice([1, -1])))


def _two(rng: np.random.Generator, shape: str, colour: str, *, crossing: bool) -> tuple[DrawnThing, DrawnThing]:
    size = float(rng.uniform(0.2, 0.34))
    if crossing:  # they swap sides within the clip, one passing in front of the other
        y = float(rng.uniform(0.35, 0.65))
        speed = float(rng.uniform(0.06, 0.09))
        return (_thing(rng, shape, colour, size=size, start=(0.2, y), velocity=(speed, 0.0)),
                _thing(rng, shape, colour, size=size, start=(0.8, y + rng.uniform(-0.05, 0.05)),
                       velocity=(-speed, 0.0)))
    left = _thing(rng, shape, colour, size=size, start=(float(rng.uniform(0.18, 0.35)), float(rng.uniform(0.2, 0.8))))
    right = _thing(rng, shape, colour, size=size, start=(float(rng.uniform(0.65, 0.82)), float(rng.uniform(0.2, 0.8))))
    return left, right


def make_independent_case(kind: str, seed: int) -> edits.EditCase:
    """The independent edit of ``kind`` drawn from ``seed``: the benchmark's words, this module's drawing."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, edits.KINDS.index(kind), 7919]))
    bg = str(rng.choice(world.BACKGROUNDS))
    shape = str(rng.choice(world.SHAPES))
    frames = int(rng.integers(FRAME_RANGE[0], FRAME_RANGE[1] + 1))
    name, texture = f"independent-{kind}-{seed:02d}", int(rng.integers(1 << 31))
    if kind in ("class", "instance", "crossing"):
        source, new1, new2 = (str(c) for c in rng.choice(list(world.COLOURS), 3, replace=False))
        scene = DrawnScene(background=bg, things=_two(rng, shape, source, crossing=kind == "crossing"), seed=texture)
        src = f"two {source} {shape}s on {bg}"
        if kind == "class":
            region = edits.CaseRegion(name=f"{shape}s", prompt=f"{new1} {shape}s", colour=new1, things=(0, 1))
            return edits.EditCase(name=name, kind=kind, scene=scene, source_prompt=src, frames=frames,
                                  prompt=f"two {new1} {shape}s on {bg}", regions=(region,))
        regions = (edits.CaseRegion(name="left", prompt=f"{new1} {shape}", colour=new1, things=(0,)),
                   edits.CaseRegion(name="right", prompt=f"{new2} {shape}", colour=new2, things=(1,)))
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        words = " and ".join(edits.article(regions[i].prompt) for i in order)
        return edits.EditCase(name=name, kind=kind, scene=scene, source_prompt=src, prompt=f"{words} on {bg}",
                              regions=regions, frames=frames)
    if kind == "part":
        body, part_colour, new = (str(c) for c in rng.choice(list(world.COLOURS), 3, replace=False))
        part = str(rng.choice(world.PARTS))
        shape = str(rng.choice(["square", "disc"]))  # a ring's hole and a triangle's tip leave a part too small
        thing = _thing(rng, shape, body, size=float(rng.uniform(0.34, 0.44)), part=(part, part_colour))
        scene = DrawnScene(background=bg, things=(thing,), seed=texture)
        stem = f"{edits.article(body)} {shape} with"
        region = edits.CaseRegion(name=part, prompt=f"{new} {part}", colour=new, things=(0,), covers="part")
        return edits.EditCase(name=name, kind=kind, scene=scene, frames=frames, regions=(region,),
                              source_prompt=f"{stem} {edits.article(part_colour)} {part} on {bg}",
                              prompt=f"{stem} {edits.article(new)} {part} on {bg}")
    if kind == "object":
        first, second, new = (str(c) for c in rng.choice(list(world.COLOURS), 3, replace=False))
        other = str(rng.choice([s for s in world.SHAPES if s != shape]))
        a = _thing(rng, shape, first, start=(float(rng.uniform(0.2, 0.35)), float(rng.uniform(0.25, 0.75))))
        b = _thing(rng, other, second, start=(float(rng.uniform(0.65, 0.8)), float(rng.uniform(0.25, 0.75))))
        scene = DrawnScene(background=bg, things=(a, b), seed=texture)
        region = edits.CaseRegion(name=shape, prompt=f"{new} {shape}", colour=new, things=(0,))
        return edits.EditCase(name=name, kind=kind, scene=scene, frames=frames, regions=(region,),
                              source_prompt=f"{edits.article(first)} {shape} and {edits.article(second)} {other} on {bg}",
                              prompt=f"{edits.article(new)} {shape} and {edits.article(second)} {other} on {bg}")
    raise ValueError(f"unknown edit kind {kind!r}; choose one of {', '.join(edits.KINDS)}")


def independent_cases(per_kind: int = 6, *, kinds: tuple[str, ...] = edits.KINDS, seed: int = 0) -> list[edits.EditCase]:
    """``per_kind`` independent cases of each kind, seeds ``seed … seed + per_kind − 1``."""
    return [make_independent_case(kind, seed + i) for kind in kinds for i in range(per_kind)]
