"""Captioned shapes-world clips for training the ``shapes-wan`` model.

A clip is :data:`CLIP_FRAMES` frames (``1 + 4k``: the Wan VAE's compression gives ``1 + k`` latent
frames: the first frame alone, then groups of four). Besides the frames each clip carries what the
losses weigh, per latent frame (its frame group averaged, as :func:`latent_groups` says):

* ``pixels``: per frame the pixels that show an object (bits packed along the width);
* ``objects``: per latent cell (8×8 pixels) the share of its pixels that show an object;
* ``word_cells``: per caption word, per transformer token (a 2×2 patch of latent cells: 16×16 pixels) the
  share of its pixels the word describes (:func:`stmod.backbones.shapes.grounding.word_targets`).
"""

from __future__ import annotations

from multiprocessing import Pool

import numpy as np
from attrs import field, frozen
from tqdm.auto import tqdm

from stmod.backbones.shapes import grounding, world
from stmod.backbones.shapes.train import ARTICLE_DROPOUT, IMAGE_SIZE, LATENT_FACTOR

__all__ = ["CLIP_FRAMES", "TOKEN_SIDE", "WorldClips", "latent_groups", "make_clips"]

#: Frames of a training clip (3 latent frames); the benchmark edits clips of this length.
CLIP_FRAMES = 9
#: Transformer tokens per side of a latent frame (8× VAE, 2×2 patches: 16 pixels a token).
TOKEN_SIDE = IMAGE_SIZE // LATENT_FACTOR // 2


def latent_groups(frames: int) -> list[list[int]]:
    """The frames behind each latent frame of a ``1 + 4k``-frame clip: ``[[0], [1..4], [5..8], …]``."""
    return [[0]] + [list(range(1 + 4 * i, 5 + 4 * i)) for i in range((frames - 1) // 4)]


@frozen(kw_only=True)
class WorldClips:
    """``images`` uint8 ``(N, F, H, W, 3)``, ``captions``, ``pixels`` uint8 ``(N, F, H, W/8)`` (packed object
    pixels), ``objects`` uint8 ``(N, f, h, w)`` (share ×255 of
    each latent cell showing an object) and ``word_cells`` uint8 ``(N, f, MAX_WORDS, s, s)`` (share ×255 of
    each token's pixels each word describes)."""

    images: np.ndarray = field(eq=False)
    captions: list[str] = field(eq=False)
    pixels: np.ndarray = field(eq=False)
    objects: np.ndarray = field(eq=False)
    word_cells: np.ndarray = field(eq=False)

    def split(self, held_out: int) -> tuple[WorldClips, WorldClips]:
        """``(all but the last held_out clips, the last held_out)``."""
        def part(sl: slice) -> WorldClips:
            return WorldClips(images=self.images[sl], captions=self.captions[sl], pixels=self.pixels[sl],
                              objects=self.objects[sl],
                              word_cells=self.word_cells[sl])
        return part(slice(None, -held_out)), part(slice(-held_out, None))

    def pixel_objects(self, index: np.ndarray | int) -> np.ndarray:
        """bool ``(…, F, H, W)``: the pixels of clips ``index`` that show an object."""
        return np.unpackbits(self.pixels[index], axis=-1, count=IMAGE_SIZE).astype(bool)


def _render_clip(args: tuple[int, int, int]) -> tuple[np.ndarray, str, np.ndarray, np.ndarray, np.ndarray]:
    seed, index, frames = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 1]))
    scene = world.random_scene(rng)
    images, bodies, parts = world.render_clip(scene, frames, (IMAGE_SIZE, IMAGE_SIZE))
    words = world.caption_words(scene, rng)
    if rng.random() < ARTICLE_DROPOUT:
        words = [(word, owner) for word, owner in words if word not in ("a", "an")]
    latent = IMAGE_SIZE // LATENT_FACTOR
    objects, cells = [], []
    for group in latent_groups(frames):
        shown = (bodies[group] | parts[group]).any(axis=1)                                   # (g, H, W)
        share = shown.reshape(len(group), latent, LATENT_FACTOR, latent, LATENT_FACTOR).mean(axis=(0, 2, 4))
        objects.append(np.round(share * 255).astype(np.uint8))
        targets = np.mean([grounding.word_targets(words, bodies[t], parts[t], TOKEN_SIDE) for t in group], axis=0)
        cells.append(np.round(targets * 255).astype(np.uint8))
    pixels = np.packbits((bodies | parts).any(axis=1), axis=-1)
    return images, " ".join(w for w, _ in words), pixels, np.stack(objects), np.stack(cells)


def make_clips(count: int, seed: int, *, frames: int = CLIP_FRAMES, workers: int = 1) -> WorldClips:
    """``count`` captioned world clips. Clip ``i`` depends only on ``(seed, i)``, whatever the workers."""
    jobs = [(seed, i, frames) for i in range(count)]
    if workers > 1:
        with Pool(workers) as pool:
            items = list(tqdm(pool.imap(_render_clip, jobs, chunksize=16), total=count, desc="world clips"))
    else:
        items = [_render_clip(job) for job in tqdm(jobs, desc="world clips")]
    return WorldClips(images=np.stack([it[0] for it in items]), captions=[it[1] for it in items],
                      pixels=np.stack([it[2] for it in items]), objects=np.stack([it[3] for it in items]),
                      word_cells=np.stack([it[4] for it in items]))
