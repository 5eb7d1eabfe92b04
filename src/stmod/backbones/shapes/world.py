"""The shapes world: seeded scenes of coloured shapes over textured backgrounds, with captions and masks.

Pure numpy. A :class:`Scene` is a background and a few :class:`Thing` objects, each with a shape
(:data:`SHAPES`), a colour (:data:`COLOURS`), a size, an optional part of another colour (a dot or a
stripe) and a straight, bouncing path. :func:`render` draws any frame of it with exact per-object
masks (what is visible after occlusion, at 2× supersampling); :func:`caption` describes it in plain
English ("a red square and a blue disc on grass"). The same scenes feed the training of the
``shapes`` model and the quality benchmark, whose metrics read colours back with
:func:`colour_classes`.

Objects are listed in a caption in random order, never left to right: the words carry no position,
so a model trained on them cannot place "the red square" by word order, and binding two local
prompts to two identical objects is left to the layout — the instance-level problem the method
exists to solve.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from attrs import evolve, field, frozen, validators

from stmod.core.types import as_tuple

__all__ = [
    "COLOURS", "SHAPES", "BACKGROUNDS", "PARTS", "WORDS", "Part", "Thing", "Scene", "Frame",
    "render", "render_clip", "caption", "caption_words", "WordOwner", "word_pixels",
    "random_scene", "random_thing", "colour_classes", "palette",
]

#: The palette: name → RGB. Pairwise distances are ≥ 120, so a colour is read back unambiguously.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (240, 225, 30),
    "green": (30, 185, 50),
    "blue": (30, 70, 230),
    "purple": (150, 40, 200),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("square", "disc", "triangle", "ring")
PARTS: tuple[str, ...] = ("dot", "stripe")
BACKGROUNDS: tuple[str, ...] = ("grass", "sand", "sky", "snow")

#: Every word a caption can use (each becomes one token of the ``shapes`` tokenizer).
WORDS: tuple[str, ...] = (
    ("a", "an", "and", "on", "with", "two")
    + tuple(COLOURS) + SHAPES + tuple(s + "s" for s in SHAPES) + PARTS + BACKGROUNDS
)


@frozen(kw_only=True)
class Part:
    """A part of an object in another colour: a ``dot`` at its centre or a horizontal ``stripe``."""

    kind: str = field(validator=validators.in_(PARTS))
    colour: str = field(validator=validators.in_(tuple(COLOURS)))


@frozen(kw_only=True)
class Thing:
    """One object: its look and its path ``centre(t) = start + t·velocity``, bounced off the borders.

    Positions and sizes are fractions of the frame (width for x, height for y and size), so a scene
    renders at any resolution.
    """

    shape: str = field(validator=validators.in_(SHAPES))
    colour: str = field(validator=validators.in_(tuple(COLOURS)))
    size: float = field(validator=[validators.gt(0.05), validators.lt(0.6)])
    start: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    part: Part | None = None

    def centre(self, t: float) -> tuple[float, float]:
        """The centre at frame ``t``; the path reflects at the borders so the object stays inside."""
        half = self.size / 2
        (x, y), (vx, vy) = self.start, self.velocity
        return _bounce(x + t * vx, half, 1 - half), _bounce(y + t * vy, half, 1 - half)


@frozen(kw_only=True)
class Scene:
    """A background and objects; later objects are drawn over earlier ones."""

    background: str = field(validator=validators.in_(BACKGROUNDS))
    things: tuple[Thing, ...] = field(converter=as_tuple)
    seed: int = 0


@frozen(kw_only=True)
class Frame:
    """A rendered frame: ``image`` uint8 ``(H, W, 3)``; bool ``(K, H, W)`` visible ``bodies`` (object
    without its part), ``parts`` (empty for objects without one) and ``objects`` (body ∪ part)."""

    image: np.ndarray = field(eq=False)
    bodies: np.ndarray = field(eq=False)
    parts: np.ndarray = field(eq=False)

    @property
    def objects(self) -> np.ndarray:
        return self.bodies | self.parts


def _bounce(value: float, low: float, high: float) -> float:
    if high <= low:
        return (low + high) / 2
    span = high - low
    phase = (value - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


# -- backgrounds ----------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a random ``cells``-grid upsampled bilinearly (smooth, cheap, seeded)."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    y = np.linspace(0, cells, height, endpoint=False)
    x = np.linspace(0, cells, width, endpoint=False)
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bottom = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def background(kind: str, height: int, width: int, seed: int) -> np.ndarray:
    """A textured background, float32 ``(H, W, 3)`` in [0, 255]; the texture is seeded by ``seed``.

    Textures are gentle (a few percent of the range): they make preservation measurable without
    dominating the picture.
    """
    rng = np.random.default_rng(seed)
    coarse = _smooth_noise(rng, height, width, 4)[..., None]
    fine = _smooth_noise(rng, height, width, 16)[..., None]
    yy = np.linspace(0, 1, height)[:, None, None]
    if kind == "grass":
        base, tex = np.array([85, 110, 45]), 14 * coarse + 8 * fine
    elif kind == "sand":
        ripples = np.sin(np.linspace(0, 9 * np.pi, height))[:, None, None] * 0.5 + 0.5 * fine
        base, tex = np.array([205, 180, 125]), 10 * coarse + 8 * ripples
    elif kind == "sky":
        base = np.array([110, 160, 225]) + (yy * np.array([40, 30, 10]))
        tex = 10 * np.clip(coarse, 0, 1) * np.array([1.0, 1.0, 0.5])
    elif kind == "snow":
        base, tex = np.array([195, 205, 222]), 6 * coarse + 3 * fine
    else:
        raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")
    return np.clip(base + tex, 0, 255).astype(np.float32)


# -- shapes -----------------------------------------------------------------------------------------

def _coverage(shape: str, cx: float, cy: float, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Bool coverage of a shape of diameter ``size`` (pixels) centred at ``(cx, cy)`` on a pixel grid."""
    dx, dy, r = xx - cx, yy - cy, size / 2
    if shape == "square":
        return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
    if shape == "triangle":  # upright, apex at the top
        top, bottom = cy - r, cy + 0.8 * r
        h = (yy - top) / (bottom - top)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= h * r)
    raise ValueError(f"unknown shape {shape!r}")


def _part_coverage(part: Part, shape: str, cx: float, cy: float, size: float,
                   yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    if part.kind == "dot":
        # A ring's hole sits at its centre: put its dot on the band instead.
        oy = -0.37 * size if shape == "ring" else (0.15 * size if shape == "triangle" else 0.0)
        return (xx - cx) ** 2 + (yy - cy - oy) ** 2 <= (0.17 * size) ** 2
    offset = 0.15 * size if shape == "triangle" else 0.0
    return np.abs(yy - cy - offset) <= 0.12 * size


def render(scene: Scene, t: float, size: tuple[int, int] = (128, 128)) -> Frame:
    """Frame ``t`` of ``scene`` at ``size = (width, height)``, anti-aliased by 2× supersampling.

    A pixel belongs to an object's mask when more than half of it shows that object.
    """
    width, height = size
    s = 2
    yy, xx = np.mgrid[0:height * s, 0:width * s].astype(np.float32) + 0.5
    image = background(scene.background, height * s, width * s, scene.seed)
    owner = np.full((height * s, width * s), -1, np.int16)       # which object each subpixel shows
    is_part = np.zeros((height * s, width * s), bool)
    for k, thing in enumerate(scene.things):
        cx, cy = thing.centre(t)
        cx, cy, diameter = cx * width * s, cy * height * s, thing.size * height * s
        body = _coverage(thing.shape, cx, cy, diameter, yy, xx)
        image[body] = COLOURS[thing.colour]
        owner[body] = k
        is_part[body] = False
        if thing.part is not None:
            part = body & _part_coverage(thing.part, thing.shape, cx, cy, diameter, yy, xx)
            image[part] = COLOURS[thing.part.colour]
            is_part[part] = True
    image = image.reshape(height, s, width, s, 3).mean(axis=(1, 3))
    k_count = len(scene.things)
    bodies = np.zeros((k_count, height, width), bool)
    parts = np.zeros((k_count, height, width), bool)
    for k in range(k_count):
        mine = owner == k
        bodies[k] = (mine & ~is_part).reshape(height, s, width, s).mean(axis=(1, 3)) > 0.5
        parts[k] = (mine & is_part).reshape(height, s, width, s).mean(axis=(1, 3)) > 0.5
    return Frame(image=np.round(image).astype(np.uint8), bodies=bodies, parts=parts)


def render_clip(scene: Scene, frames: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 (F, H, W, 3), bodies bool (F, K, H, W), parts bool (F, K, H, W))`` of frames 0…F−1."""
    rendered = [render(scene, float(t), size) for t in range(frames)]
    return (np.stack([f.image for f in rendered]), np.stack([f.bodies for f in rendered]),
            np.stack([f.parts for f in rendered]))


# -- captions ---------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@frozen(kw_only=True)
class WordOwner:
    """What a caption word describes: pixels of ``things`` (``covers``: ``object`` = body ∪ part,
    ``body`` or ``part``), or the ``background`` (pixels of no object; ``things`` is empty)."""

    things: tuple[int, ...] = field(converter=as_tuple)
    covers: str = field(validator=validators.in_(("object", "body", "part", "background")))


def _describe(thing: Thing, k: int) -> list[tuple[str, WordOwner | None]]:
    words = [(_article(thing.colour), None), (thing.colour, WordOwner(things=(k,), covers="body")),
             (thing.shape, WordOwner(things=(k,), covers="object"))]
    if thing.part is not None:
        part = WordOwner(things=(k,), covers="part")
        words += [("with", None), (_article(thing.part.colour), None), (thing.part.colour, part),
                  (thing.part.kind, part)]
    return words


def caption_words(scene: Scene, rng: np.random.Generator | None = None) -> list[tuple[str, WordOwner | None]]:
    """The words of :func:`caption` (the same ``rng`` draws), each with what it describes (``None``
    for articles and joining words)."""
    things = list(scene.things)
    on = [("on", None), (scene.background, WordOwner(things=(), covers="background"))]
    if len(things) == 2 and things[0].part is None and things[1].part is None and \
            (things[0].shape, things[0].colour) == (things[1].shape, things[1].colour):
        both = (0, 1)
        return [("two", None), (things[0].colour, WordOwner(things=both, covers="body")),
                (things[0].shape + "s", WordOwner(things=both, covers="object"))] + on
    order = rng.permutation(len(things)) if rng is not None else range(len(things))
    words: list[tuple[str, WordOwner | None]] = []
    for n, i in enumerate(order):
        words += ([("and", None)] if n else []) + _describe(things[i], int(i))
    return words + on


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """Plain English for ``scene``: its objects in random order (in scene order without ``rng``),
    ``two <colour> <shape>s`` for two identical part-less objects, then ``on <background>``."""
    return " ".join(word for word, _ in caption_words(scene, rng))


def word_pixels(owner: WordOwner, bodies: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """Bool ``(H, W)``: the pixels ``owner`` describes in a frame's ``bodies``/``parts`` ``(K, H, W)``."""
    objects = bodies | parts
    if owner.covers == "background":
        return ~objects.any(axis=0)
    pick = {"object": objects, "body": bodies, "part": parts}[owner.covers]
    return pick[list(owner.things)].any(axis=0)


# -- random scenes --------------------------------------------------------------------------------

def random_thing(rng: np.random.Generator, *, shape: str | None = None, colour: str | None = None,
                 part_probability: float = 0.25, speed: float = 0.03) -> Thing:
    """A random object (shape and colour fixed when given) with a random path of at most ``speed``
    frame-widths per frame."""
    colour = colour or str(rng.choice(list(COLOURS)))
    part = None
    if rng.random() < part_probability:
        others = [c for c in COLOURS if c != colour]
        part = Part(kind=str(rng.choice(PARTS)), colour=str(rng.choice(others)))
    size = float(rng.uniform(0.22, 0.36))
    return Thing(shape=shape or str(rng.choice(SHAPES)), colour=colour, size=size,
                 start=tuple(rng.uniform(size / 2, 1 - size / 2, 2)),
                 velocity=tuple(rng.uniform(-speed, speed, 2)), part=part)


def random_scene(rng: np.random.Generator, *, max_things: int = 3, identical_probability: float = 0.2) -> Scene:
    """A random scene of 1…``max_things`` objects; with ``identical_probability`` two identical ones."""
    bg = str(rng.choice(BACKGROUNDS))
    seed = int(rng.integers(1 << 31))
    if max_things >= 2 and rng.random() < identical_probability:
        first = random_thing(rng, part_probability=0)
        second = random_thing(rng, shape=first.shape, colour=first.colour, part_probability=0)
        return Scene(background=bg, things=(first, evolve(second, size=first.size)), seed=seed)
    count = int(rng.choice(np.arange(1, max_things + 1), p=_count_weights(max_things)))
    return Scene(background=bg, things=tuple(random_thing(rng) for _ in range(count)), seed=seed)


def _count_weights(max_things: int) -> np.ndarray:
    # Mostly one or two objects (the edits' cases), some crowded scenes.
    weights = np.array([0.35, 0.5] + [0.15] * (max_things - 2))[:max_things]
    return weights / weights.sum()


# -- reading colours back ---------------------------------------------------------------------------

def palette(names: Sequence[str] = tuple(COLOURS)) -> np.ndarray:
    """float32 ``(C, 3)`` RGB of the named colours."""
    return np.array([COLOURS[n] for n in names], np.float32)


def colour_classes(image: np.ndarray, *, max_distance: float = 60.0) -> np.ndarray:
    """int ``(…)`` index into :data:`COLOURS` of each pixel's nearest palette colour, or −1 when none
    is within ``max_distance`` (RGB Euclidean: backgrounds and blends read as −1)."""
    rgb = image.astype(np.float32)[..., None, :]
    dist = np.linalg.norm(rgb - palette(), axis=-1)
    nearest = dist.argmin(axis=-1)
    return np.where(dist.min(axis=-1) <= max_distance, nearest, -1)
