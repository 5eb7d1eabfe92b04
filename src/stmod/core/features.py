"""Attention features recorded during DDIM inversion, for layouts found without masks (K-Means).

A layout provider with a ``feature_request`` (a :class:`FeatureRequest`, not ``None``) makes the
editor run the inversion *before* the layout, with an :class:`InversionFeatureRecorder` fed by the ``st-layout`` engine's UNet processors, and hand the
result to the provider as ``LayoutRequest.features`` (:class:`InversionFeatures`).

**What is recorded, per token of one UNet level** (``level`` 0 is the latent grid, 1 is half of it —
32×32 at 512², the resolution the official code clusters — and so on). On a transformer whose layers are
all at one grid (Wan 2.1: level 1, the 2×2 patch), the layers are its blocks and a request picks **one
block** (:attr:`FeatureRequest.block`; by default the middle one) instead of averaging them: a DiT's
blocks are not several layers of one role at one resolution as a UNet level's are, and which depth
carries object-level features is a property of the model (studies of DiT features find mid-depth blocks
best), so the block is a knob, not an average:

``self_rows``
    The token's self-attention *row over the keys of a few reference frames* (``reference_frames``,
    evenly spaced): ``softmax(q·kᵀ/√d)`` over each reference frame's keys, mean-pooled to at most
    ``key_grid × key_grid`` key cells, the reference frames side by side. Rows are averaged over
    heads, layers of that level and inversion steps (running sums, no per-step storage).
    Why rows, and why reference frames: a row says *which part of the picture a token attends to*,
    and tokens of one object attend to that object — so rows cluster by object (the official code
    and DiffSeg cluster rows too). Rows of different heads, layers and steps live in the same
    coordinates (key positions), so averaging them is meaningful, unlike raw query vectors whose
    spaces differ per layer. The official code takes each frame's rows over *its own* keys, so a
    moving object has different features in every frame; here every frame's tokens are described
    against the *same* reference keys, so one K-Means over all frames gives labels that agree across
    time.
``cross``
    The token's cross-attention probabilities over the 77 text positions of the source prompt
    (the conditional branch — the only one during inversion), averaged the same way. Used to name
    clusters by the source prompt's words.

Memory: O(F·h·w·(R·key_grid² + 77)) floats per request, on the model's device while recording;
the rows are computed in query chunks of bounded size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from attrs import field, frozen, validators

from stmod.core.errors import LayoutError
from stmod.core.levels import level_grid, level_of
from stmod.core.tokens import prompt_token_ids
from stmod.core.types import as_tuple

if TYPE_CHECKING:
    from stmod.core.protocols import LayoutProvider, Tokenizer

__all__ = [
    "FeatureRequest",
    "TransformerBlock",
    "FeatureMaps",
    "InversionFeatures",
    "InversionFeatureRecorder",
    "feature_requests",
    "prompt_words",
    "word_positions",
    "reference_positions",
]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def prompt_words(prompt: str) -> list[str]:
    """The words of ``prompt``, lower-cased, in order (punctuation dropped)."""
    return _WORD.findall(prompt.lower())


@frozen(kw_only=True)
class FeatureRequest:
    """Which inversion features a layout provider needs (part of the inversion cache key).

    :ivar level: UNet level whose attention is recorded: 0 = latent grid (64×64 at 512²), 1 = half
        (32×32, the official choice), ...
    :ivar reference_frames: how many evenly spaced frames the self-attention rows are taken over.
    :ivar key_grid: reference keys are mean-pooled to at most ``key_grid × key_grid`` cells.
    :ivar block: on a transformer backbone (layers named by :class:`TransformerBlock`), the block whose
        attention is recorded; ``None``: the middle block there, and every layer of ``level`` on a UNet.
    """

    level: int = field(default=1, validator=validators.ge(0))
    reference_frames: int = field(default=3, validator=validators.ge(1))
    key_grid: int = field(default=16, validator=validators.ge(1))
    block: int | None = field(default=None, validator=validators.optional(validators.ge(0)))

    def grid(self, latent_size: Sequence[int]) -> tuple[int, int]:
        """``(h, w)`` of this level for latents of ``latent_size`` (each level halves, rounding up)."""
        return level_grid(latent_size, self.level)

    def as_list(self) -> list[int]:
        # no block: the three numbers cache keys always had, so UNet entries stored before stay valid
        head = [self.level, self.reference_frames, self.key_grid]
        return head if self.block is None else [*head, self.block]

    @classmethod
    def from_list(cls, values: Sequence[int]) -> FeatureRequest:
        """The inverse of :meth:`as_list`."""
        level, refs, key_grid, *block = (int(v) for v in values)
        return cls(level=level, reference_frames=refs, key_grid=key_grid, block=block[0] if block else None)

    def takes(self, block: TransformerBlock | None) -> bool:
        """Whether a layer call of ``block`` (``None``: a UNet layer) is recorded for this request."""
        if block is None:
            return self.block is None
        return block.index == (block.count // 2 if self.block is None else self.block)


@frozen
class TransformerBlock:
    """Where a transformer backbone's attention call comes from: block ``index`` of ``count`` blocks."""

    index: int
    count: int


def reference_positions(frames: int, count: int) -> tuple[int, ...]:
    """``count`` evenly spaced frame positions out of ``frames`` (all of them when fewer)."""
    if count >= frames:
        return tuple(range(frames))
    if count == 1:
        return (frames // 2,)
    return tuple(sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)}))


def feature_requests(providers: Iterable[LayoutProvider]) -> tuple[FeatureRequest, ...]:
    """The distinct ``feature_request`` of the providers that have one (``()`` if none)."""
    found: list[FeatureRequest] = []
    for provider in providers:
        if provider.feature_request is not None and provider.feature_request not in found:
            found.append(provider.feature_request)
    return tuple(found)


@frozen(kw_only=True)
class FeatureMaps:
    """The features of one :class:`FeatureRequest` (see the module docs).

    :ivar grid: ``(h, w)`` of the level. ``reference``: positions of the reference frames.
    :ivar self_rows: float32 ``(F, h, w, R·kh·kw)``, non-negative; each reference frame's
        ``kh·kw`` block of a row sums to ``1 / (pooling area)`` (mean-pooled probabilities).
    :ivar cross: float32 ``(F, h, w, T)``; each row sums to 1 over the ``T`` text positions.
    :ivar self_calls, cross_calls: how many layer calls were averaged.
    """

    request: FeatureRequest
    grid: tuple[int, int] = field(converter=as_tuple)
    reference: tuple[int, ...] = field(converter=as_tuple)
    self_rows: torch.Tensor = field(eq=False)
    cross: torch.Tensor = field(eq=False)
    self_calls: int = 0
    cross_calls: int = 0


@frozen(kw_only=True)
class InversionFeatures:
    """What a feature-needing layout provider gets as ``LayoutRequest.features``.

    :ivar maps: one :class:`FeatureMaps` per requested :class:`FeatureRequest`.
    :ivar words: ``{word: token positions}`` of the source prompt (lower-cased words, every
        occurrence; position 0 is the start token), for naming clusters by words.
    :ivar prompt: the source prompt.
    :ivar levels: the UNet levels at which self-attention was seen (for error messages).
    :ivar blocks: how many transformer blocks the model has (0: a UNet), for error messages.
    :ivar frame_rows: per clip frame, the feature frame that describes it — ``()`` when they are the same
        frames (one latent per frame); on Wan, clip frame ``i`` is latent frame ``⌈i/4⌉``
        (:meth:`per_clip_frame`).
    """

    maps: tuple[FeatureMaps, ...] = field(converter=as_tuple)
    words: Mapping[str, tuple[int, ...]] = field(factory=dict)
    prompt: str = ""
    levels: tuple[int, ...] = field(default=(), converter=as_tuple)
    blocks: int = 0
    frame_rows: tuple[int, ...] = field(default=(), converter=as_tuple)

    def get(self, request: FeatureRequest) -> FeatureMaps:
        """The maps of ``request``; a :class:`LayoutError` when that level (block) had no attention layer."""
        for maps in self.maps:
            if maps.request == request and maps.self_calls and maps.cross_calls:
                return maps
        if request.block is not None and self.blocks:
            raise LayoutError(f"layout option block: {request.block} is not a block of the transformer (blocks "
                              f"0-{self.blocks - 1}); choose one of those")
        seen = ", ".join(map(str, self.levels)) or "none"
        raise LayoutError(f"no attention layer at UNet level {request.level} was recorded during inversion "
                          f"(levels with attention: {seen}); choose one of those with the option level")

    def per_clip_frame(self, labels: np.ndarray) -> np.ndarray:
        """Per-feature-frame ``labels`` ``(f, …)`` → one entry per clip frame ``(F, …)`` (:attr:`frame_rows`)."""
        return labels[list(self.frame_rows)] if self.frame_rows else labels

    def to_state(self) -> dict[str, Any]:
        """Plain data (lists, ints, CPU tensors) for the inversion cache; ``words`` and ``frame_rows`` (the
        backbone's, recomputed on load) are not kept."""
        return {"levels": list(self.levels), "blocks": self.blocks, "maps": [
            {"request": m.request.as_list(), "grid": list(m.grid), "reference": list(m.reference),
             "self": m.self_rows.cpu(), "cross": m.cross.cpu(), "calls": [m.self_calls, m.cross_calls]}
            for m in self.maps]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, words: Mapping[str, tuple[int, ...]] | None = None,
                   prompt: str = "", frame_rows: Sequence[int] = ()) -> InversionFeatures:
        """The inverse of :meth:`to_state`, with the source prompt's ``words`` and the clip's ``frame_rows``."""
        maps = []
        for m in state["maps"]:
            maps.append(FeatureMaps(
                request=FeatureRequest.from_list(m["request"]),
                grid=tuple(int(v) for v in m["grid"]), reference=tuple(int(v) for v in m["reference"]),
                self_rows=m["self"], cross=m["cross"], self_calls=int(m["calls"][0]), cross_calls=int(m["calls"][1])))
        return cls(maps=maps, words=dict(words or {}), prompt=prompt, levels=tuple(int(v) for v in state["levels"]),
                   blocks=int(state.get("blocks", 0)), frame_rows=tuple(frame_rows))


def word_positions(tokenizer: Tokenizer | None, prompt: str) -> dict[str, tuple[int, ...]]:
    """``{word: token positions}`` of ``prompt`` (see :func:`prompt_words`), matched in order.

    Each word is tokenized alone and looked up in the prompt's tokens after the previous word; a word
    the tokenizer splits differently in context is left out. ``{}`` without a tokenizer.
    """
    if tokenizer is None or not prompt.strip():
        return {}
    ids = prompt_token_ids(tokenizer, prompt)
    found: dict[str, list[int]] = {}
    cursor = 1
    for word in prompt_words(prompt):
        pieces = prompt_token_ids(tokenizer, word)[1:-1]
        n = len(pieces)
        start = next((j for j in range(cursor, len(ids) - n + 1) if n and ids[j:j + n] == pieces), None)
        if start is None:
            continue
        found.setdefault(word, []).extend(range(start, start + n))
        cursor = start + n
    return {word: tuple(positions) for word, positions in found.items()}


class _Sums:
    """Running sums of one request (allocated on first use, on the model's device)."""

    __slots__ = ("request", "grid", "reference", "key_grid", "rows", "cross", "self_calls", "cross_calls")

    def __init__(self, request: FeatureRequest, grid: tuple[int, int], reference: tuple[int, ...]) -> None:
        self.request, self.grid, self.reference = request, grid, reference
        self.key_grid = (min(grid[0], request.key_grid), min(grid[1], request.key_grid))
        self.rows: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.self_calls = self.cross_calls = 0


class InversionFeatureRecorder:
    """Accumulates :class:`FeatureMaps` from the UNet's attention calls during inversion.

    The engine calls :meth:`add_self` / :meth:`add_cross` for every UNet attention layer whose token
    count :meth:`wants`, with the conditional branch's ``q, k`` of one video.

    :param requests: what to record.
    :param num_frames: F. ``latent_size``: ``(h, w)`` of the latents.
    :param budget_elements: float32 elements of one chunk of attention scores (bounds peak memory).
    """

    def __init__(self, requests: Sequence[FeatureRequest], *, num_frames: int, latent_size: Sequence[int],
                 budget_elements: int = 2**24) -> None:
        self.num_frames = int(num_frames)
        self.latent_size = (int(latent_size[0]), int(latent_size[1]))
        self.budget = int(budget_elements)
        self._sums = [_Sums(r, r.grid(self.latent_size), reference_positions(self.num_frames, r.reference_frames))
                      for r in requests]
        self._levels: set[int] = set()
        self._blocks = 0

    def wants(self, tokens: int, block: TransformerBlock | None = None) -> bool:
        """Whether a layer with ``tokens`` tokens per frame (of transformer ``block``; ``None``: a UNet layer)
        is recorded (noting the level and the block count either way)."""
        level = level_of(tokens, self.latent_size)
        if level is not None:
            self._levels.add(level)
        if block is not None:
            self._blocks = max(self._blocks, block.count)
        return any(self._records(s, tokens, block) for s in self._sums)

    @staticmethod
    def _records(sums: _Sums, tokens: int, block: TransformerBlock | None) -> bool:
        return sums.grid[0] * sums.grid[1] == tokens and sums.request.takes(block)

    def _check(self, q: torch.Tensor) -> None:
        if q.ndim != 4 or q.shape[0] != self.num_frames:
            raise ValueError(f"expected (F={self.num_frames}, heads, tokens, dim) queries, got {tuple(q.shape)}")

    @torch.no_grad()
    def add_self(self, q: torch.Tensor, k: torch.Tensor, block: TransformerBlock | None = None) -> None:
        """One self-attention call: ``q, k`` ``(F, heads, N, d)`` of one video (any float dtype)."""
        self._check(q)
        frames, heads, n, d = q.shape
        for sums in self._sums:
            if not self._records(sums, n, block):
                continue
            kh, kw = sums.key_grid
            cells = kh * kw
            if sums.rows is None:
                sums.rows = torch.zeros(frames * n, len(sums.reference) * cells, device=q.device)
            queries = q.float().permute(1, 0, 2, 3).reshape(heads, frames * n, d) * d**-0.5
            chunk = max(1, self.budget // (heads * n))
            for r, ref in enumerate(sums.reference):
                keys = k[ref].float().transpose(-1, -2)  # (heads, d, N)
                for a in range(0, frames * n, chunk):
                    probs = torch.softmax(queries[:, a:a + chunk] @ keys, dim=-1).mean(0)  # (rows, N)
                    pooled = F.adaptive_avg_pool2d(probs.view(-1, 1, *sums.grid), (kh, kw)).flatten(1)
                    sums.rows[a:a + chunk, r * cells:(r + 1) * cells] += pooled
            sums.self_calls += 1

    @torch.no_grad()
    def add_cross(self, q: torch.Tensor, k: torch.Tensor, block: TransformerBlock | None = None) -> None:
        """One cross-attention call: ``q`` ``(F, heads, N, d)``, text keys ``k`` ``(F, heads, T, d)``."""
        self._check(q)
        frames, heads, n, d = q.shape
        for sums in self._sums:
            if not self._records(sums, n, block):
                continue
            probs = torch.softmax((q.float() * d**-0.5) @ k.float().transpose(-1, -2), dim=-1).mean(1)
            if sums.cross is None:
                sums.cross = torch.zeros(frames * n, probs.shape[-1], device=q.device)
            sums.cross += probs.reshape(frames * n, -1)
            sums.cross_calls += 1

    def result(self, *, words: Mapping[str, tuple[int, ...]] | None = None, prompt: str = "",
               frame_rows: Sequence[int] = ()) -> InversionFeatures:
        """The averaged features so far (CPU float32 tensors)."""
        maps = []
        for s in self._sums:
            h, w = s.grid
            rows = s.rows if s.rows is not None else torch.zeros(self.num_frames * h * w, 0)
            cross = s.cross if s.cross is not None else torch.zeros(self.num_frames * h * w, 0)
            maps.append(FeatureMaps(
                request=s.request, grid=s.grid, reference=s.reference,
                self_rows=(rows / max(1, s.self_calls)).cpu().reshape(self.num_frames, h, w, -1),
                cross=(cross / max(1, s.cross_calls)).cpu().reshape(self.num_frames, h, w, -1),
                self_calls=s.self_calls, cross_calls=s.cross_calls))
        return InversionFeatures(maps=maps, words=dict(words or {}), prompt=prompt, levels=tuple(sorted(self._levels)),
                                 blocks=self._blocks, frame_rows=tuple(frame_rows))
