"""Token grounding for training the shapes model: each caption word's cross-attention is pulled onto
the pixels the word describes.

Why: ST-Layout modulation steers *where* each local prompt's tokens are attended, which changes an
edit only if the model paints an object from the tokens its pixels attend to. Stable Diffusion learns
that from scale; a small model trained briefly on short captions does not: it reads the whole
caption from the end-of-text and padding tokens (which the causal text encoder fills with every
word) at every pixel, so the plain map of "red" covered 6 % of a disc (docs/shapes.md). The world
knows which pixels every word describes (:func:`~stmod.backbones.shapes.world.caption_words`), so
training adds three grounding losses to the diffusion loss, the first two TokenCompose's (Wang et al.,
*TokenCompose*, CVPR 2024):

* token: for each grounded word, ``(1 − share of its attention mass on its pixels)²``;
* pixel: the binary cross-entropy between its attention probabilities and its pixels;
* cell (ours): for each latent cell that is mostly one grounded word's, ``−log`` of the attention it
  gives to the words that describe it. The two losses above look at one word's map at a time and
  leave a cell free to attend to the background word or the padding (measured on a model fine-tuned
  with them alone: inside a red square, half the attention went to "grass" and 8 % to the padding);
  this is the loss that makes a cell read its own words.

Token and pixel losses are averaged over the grounded words, the cell loss over the covered cells,
all three over the cross-attention layers at :data:`GROUNDED_SIDES`, using the head-mean attention
probabilities. :class:`CrossAttentionMaps` records those during training through diffusers attention
processors it installs and restores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stmod.backbones.shapes import world

__all__ = ["GROUNDED_SIDES", "MAX_WORDS", "word_targets", "grounding_losses", "CrossAttentionMaps"]

#: Latent sides (cells) of the cross-attention layers whose maps are grounded: the 16×16, 8×8 and
#: 4×4 levels of the 128-pixel shapes model; the 2×2 middle block is too coarse to say anything.
GROUNDED_SIDES: tuple[int, ...] = (16, 8, 4)
#: Most words in a world caption (three objects with parts take 25) — the width of the targets.
MAX_WORDS = 28


def word_targets(words: list[tuple[str, world.WordOwner | None]], bodies: np.ndarray, parts: np.ndarray,
                 side: int) -> np.ndarray:
    """Per caption word: float32 ``(MAX_WORDS, side, side)``, the share of each cell's pixels it describes
    (all zeros for articles, joining words, hidden objects and the unused rows)."""
    if len(words) > MAX_WORDS:
        raise ValueError(f"a caption of {len(words)} words is over MAX_WORDS={MAX_WORDS}")
    height, width = bodies.shape[1:]
    targets = np.zeros((MAX_WORDS, side, side), np.float32)
    for i, (_, owner) in enumerate(words):
        if owner is None:
            continue
        pixels = world.word_pixels(owner, bodies, parts)
        targets[i] = pixels.reshape(side, height // side, side, width // side).mean(axis=(1, 3))
    return targets


def grounding_losses(maps: list[torch.Tensor], targets: torch.Tensor,
                     grounded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(token, pixel, cell)`` losses, each averaged over layers (module docstring).

    :param maps: per layer, head-mean cross-attention probabilities ``(B, side², T)`` (token 0 is the
        start token, so word ``i`` is token ``i + 1``).
    :param targets: ``(B, MAX_WORDS, S, S)`` shares (:func:`word_targets`), pooled to each layer's side.
    :param grounded: bool ``(B, MAX_WORDS)``; a batch without a grounded word gives zeros.
    """
    weight = grounded.to(targets.dtype)
    count = weight.sum().clamp_min(1.0)
    token_total, pixel_total, cell_total = targets.new_zeros(()), targets.new_zeros(()), targets.new_zeros(())
    for probs in maps:
        side = int(round(probs.shape[1] ** 0.5))
        target = F.avg_pool2d(targets, targets.shape[-1] // side).flatten(2)            # (B, W, N)
        attention = probs[:, :, 1:MAX_WORDS + 1].transpose(1, 2).to(targets.dtype)     # (B, W, N)
        inside = (attention * target).sum(-1) / attention.sum(-1).clamp_min(1e-12)
        token_total = token_total + ((1 - inside).pow(2) * weight).sum() / count
        bce = F.binary_cross_entropy(attention.clamp(1e-6, 1 - 1e-6), target, reduction="none").mean(-1)
        pixel_total = pixel_total + (bce * weight).sum() / count
        owned = (target >= 0.5).to(targets.dtype) * weight[..., None]                 # (B, W, N)
        covered = owned.amax(dim=1)                                                   # (B, N)
        mass = (attention * owned).sum(dim=1).clamp_min(1e-6)
        cell_total = cell_total - (mass.log() * covered).sum() / covered.sum().clamp_min(1.0)
    layers = max(len(maps), 1)
    return token_total / layers, pixel_total / layers, cell_total / layers


class _RecordingProcessor:
    """Cross-attention computed explicitly, its head-mean probabilities kept for the grounding loss.

    Follows diffusers' ``AttnProcessor.__call__`` (the plain, non-SDPA processor): the same
    projections, norms and residual; the probabilities come from ``attn.get_attention_scores``.
    """

    def __init__(self, sink: CrossAttentionMaps) -> None:
        self._sink = sink

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        if encoder_hidden_states is None or hidden_states.ndim != 3 or attention_mask is not None \
                or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("grounding records the UNet's plain cross-attention (3-d states, no masks or norms)")
        residual = hidden_states
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)                    # (B·heads, N, T)
        side = int(round(hidden_states.shape[1] ** 0.5))
        if side in self._sink.sides:
            self._sink.maps.append(probs.view(-1, attn.heads, *probs.shape[1:]).mean(dim=1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class CrossAttentionMaps:
    """Records the head-mean cross-attention probabilities of a UNet's layers at ``sides``.

    ``with maps.install(unet):`` swaps recording processors into every cross-attention layer
    (``…attn2``) and puts the UNet's own processors back afterwards; :meth:`take` returns the maps of
    the forward passes since the last call and forgets them.
    """

    def __init__(self, sides: tuple[int, ...] = GROUNDED_SIDES) -> None:
        self.sides = sides
        self.maps: list[torch.Tensor] = []

    @contextlib.contextmanager
    def install(self, unet: Any) -> Iterator[CrossAttentionMaps]:
        original = unet.attn_processors
        recording = {name: _RecordingProcessor(self) if name.endswith("attn2.processor") else proc
                     for name, proc in original.items()}
        unet.set_attn_processor(recording)
        try:
            yield self
        finally:
            unet.set_attn_processor(original)
            self.maps = []

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps
