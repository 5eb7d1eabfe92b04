"""Token grounding on Wan's cross-attention (``attn2``), for training: the losses of
:mod:`stmod.backbones.shapes.grounding`, fed with the transformer's maps.

:class:`WanCrossAttentionMaps` installs, on every block's ``attn2``, a processor that computes Wan's
cross-attention explicitly (projections, RMS norms over all heads, softmax; the same output as
diffusers' ``WanAttnProcessor``) and records its head-mean probabilities; :meth:`take` returns them as
the shapes losses expect: one map per latent frame, ``(B·f, s², T)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["WanCrossAttentionMaps"]


class _RecordingCrossProcessor:
    def __init__(self, sink: list[torch.Tensor]) -> None:
        self.sink = sink

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb: Any = None) -> torch.Tensor:
        # Adapted from diffusers models/transformers/transformer_wan.py WanAttnProcessor.__call__ (text only)
        assert encoder_hidden_states is not None
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(encoder_hidden_states))
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (t.unflatten(2, (attn.heads, -1)).transpose(1, 2) for t in (query, key, value))
        probs = (query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5).softmax(dim=-1)
        self.sink.append(probs.mean(dim=1))
        out = (probs @ value).transpose(1, 2).flatten(2).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class WanCrossAttentionMaps:
    """Records every ``attn2``'s head-mean probabilities during a transformer call."""

    def __init__(self) -> None:
        self._maps: list[torch.Tensor] = []

    @contextlib.contextmanager
    def install(self, transformer: Any) -> Iterator[WanCrossAttentionMaps]:
        original = dict(transformer.attn_processors)
        recording = _RecordingCrossProcessor(self._maps)
        transformer.set_attn_processor({name: recording if ".attn2." in name else proc
                                        for name, proc in original.items()})
        try:
            yield self
        finally:
            transformer.set_attn_processor(original)

    def take(self, frames: int) -> list[torch.Tensor]:
        """The maps recorded since the last call, each ``(B·frames, tokens per frame, T)``."""
        maps, self._maps[:] = list(self._maps), []
        return [m.reshape(m.shape[0] * frames, m.shape[1] // frames, m.shape[2]) for m in maps]
