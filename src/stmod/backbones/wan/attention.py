"""ST-Layout on Wan's attention: a diffusers processor for ``WanAttention`` around the engine.

Wan's blocks call ``attn1`` (self-attention over every latent token of every latent frame, with
rotary embeddings) and ``attn2`` (cross-attention to the text) through ``WanAttention``, whose
processor does its own projections, RMS norms over all heads and rotary embedding. The ``st-layout``
modulator installs its engine processors (:class:`~stmod.core.st_layout.processor.STLayoutProcessor`)
with ``set_attn_processor`` on what :meth:`WanBackbone.attention_models` returns: a
:class:`WanDenoiser`, which wraps each engine processor in a :class:`WanLayoutProcessor`. That one does
Wan's steps and hands the projected heads to the engine's :meth:`~STLayoutProcessor.attend` in the
engine's batch layout — frame rows ``(B·f, H, N, d)``, ``N`` tokens per latent frame — so region codes,
relation rules, the λ schedule, windows (in latent frames) and the chunked / Triton kernels are the
UNet's. Restoring the original processors passes them through untouched.

Wan's blocks do not pass call arguments to their attention, so the call's
:class:`~stmod.core.st_layout.state.StepInfo` and latent frame count reach the processors through a
per-backbone :class:`CallContext` that :meth:`WanBackbone.predict_noise` sets for one transformer call
(explicit state, never a counter).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

import torch

from stmod.core.features import TransformerBlock

__all__ = ["CallContext", "WanLayoutProcessor", "WanDenoiser", "apply_rotary", "block_of"]


class _ProcessorHost(Protocol):
    """A diffusers model whose attention processors can be swapped (``WanTransformer3DModel``)."""

    @property
    def attn_processors(self) -> Mapping[str, Any]: ...

    def set_attn_processor(self, processor: dict[str, Any]) -> None: ...


class CallContext:
    """The model call in progress: its ``StepInfo`` (``None``: stock attention) and latent frames."""

    def __init__(self) -> None:
        self.step: Any = None
        self.frames = 0

    @contextlib.contextmanager
    def calling(self, step: Any, frames: int) -> Iterator[None]:
        self.step, self.frames = step, frames
        try:
            yield
        finally:
            self.step, self.frames = None, 0


# Adapted from diffusers models/transformers/transformer_wan.py WanAttnProcessor.__call__.apply_rotary_emb
def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding of ``x`` ``(B, L, H, d)`` with ``cos``/``sin`` ``(1, L, 1, d)``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _frame_rows(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B, f·N, H, d)`` → ``(B·f, H, N, d)`` (Wan's tokens are frame-major: frame, row, column)."""
    batch, length, heads, dim = x.shape
    return x.view(batch, frames, length // frames, heads, dim).permute(0, 1, 3, 2, 4).reshape(
        batch * frames, heads, length // frames, dim)


class WanLayoutProcessor:
    """A ``WanAttention`` processor that runs ``engine.attend`` (an ST-Layout engine processor).

    Outside a modulated call (no step in the context) it is diffusers' ``WanAttnProcessor``. ``block``
    says which transformer block it serves, so K-Means features are recorded at one block.
    """

    def __init__(self, engine: Any, context: CallContext, block: TransformerBlock | None = None) -> None:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.engine, self.context, self.stock, self.block = engine, context, WanAttnProcessor(), block

    # Adapted from diffusers models/transformers/transformer_wan.py WanAttnProcessor.__call__ (text-to-video:
    # no image keys): the same projections, norms, rotary embedding and output; only the attention differs.
    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        step, frames = self.context.step, self.context.frames
        if step is None:
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attn.add_k_proj is not None or attention_mask is not None:
            raise ValueError("ST-Layout on Wan takes text-to-video attention only (no image keys, no attention mask)")
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        cross = encoder_hidden_states is not None
        # diffusers annotates encoder_hidden_states as a Tensor; the function takes None (self-attention) too
        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)  # type: ignore[arg-type]
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query, key = apply_rotary(query, *rotary_emb), apply_rotary(key, *rotary_emb)
        batch, length, heads, dim = query.shape
        q = _frame_rows(query, frames)
        if cross:  # every frame row of a branch sees that branch's text
            k, v = (x.transpose(1, 2)[:, None].expand(batch, frames, heads, x.shape[1], dim).reshape(
                batch * frames, heads, x.shape[1], dim) for x in (key, value))
        else:
            k, v = _frame_rows(key, frames), _frame_rows(value, frames)
        out = self.engine.attend(q, k, v, step, cross=cross, block=self.block)
        out = out.view(batch, frames, heads, length // frames, dim).permute(0, 1, 3, 2, 4).reshape(
            batch, length, heads * dim).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class WanDenoiser:
    """The surface a modulator installs on: ``attn_processors`` / ``set_attn_processor`` of the transformer,
    wrapping engine processors (anything with ``attend``) for ``WanAttention``."""

    def __init__(self, transformer: torch.nn.Module, context: CallContext) -> None:
        # mypy sees diffusers' WanTransformer3DModel without its AttentionMixin methods: name what is used here
        self.transformer, self.context = cast(_ProcessorHost, transformer), context

    @property
    def attn_processors(self) -> dict[str, Any]:
        return dict(self.transformer.attn_processors)

    def set_attn_processor(self, processors: Mapping[str, Any]) -> None:
        count = len(cast(Any, self.transformer).blocks)
        self.transformer.set_attn_processor({
            name: WanLayoutProcessor(p, self.context, block_of(name, count)) if hasattr(p, "attend") else p
            for name, p in processors.items()})


_BLOCK_NAME = re.compile(r"\Ablocks\.(\d+)\.")


def block_of(processor_name: str, count: int) -> TransformerBlock | None:
    """The block of a processor named as diffusers names Wan's (``blocks.3.attn1.processor``), else ``None``."""
    match = _BLOCK_NAME.match(processor_name)
    return TransformerBlock(int(match.group(1)), count) if match else None
