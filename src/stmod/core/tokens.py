"""Where each local prompt sits in the global prompt's tokens, and the composite text embedding.

Cross-attention modulation ties region ``k`` to the text tokens of its local prompt *inside the global
prompt*. As in the official code, a local prompt is located by its exact BPE token sequence (first
occurrence), so ``'man'`` is not found in ``'Spiderman …'`` (one token ``spiderman``). Unlike the
official code, which drops such a prompt silently, :func:`find_token_spans` raises a
:class:`~stmod.core.errors.PromptError` that names it and says why — unless asked to drop it
(``missing="drop"``, the official behaviour; ``modulation.missing_local_prompt``), which it then says
in one line.

Token positions count the start token: position 0 is ``<|startoftext|>``, the first word is 1, and a
CLIP text encoder sees at most 77 positions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
from attrs import field, frozen, validators

from stmod.core.errors import PromptError

__all__ = ["MAX_TOKENS", "TokenSpan", "prompt_token_ids", "find_token_spans", "composite_text_embedding"]

log = logging.getLogger(__name__)

#: Positions a CLIP text encoder sees (75 word tokens plus start and end tokens).
MAX_TOKENS = 77

_WORD = re.compile(r"[^\W_]+|[^\w\s]", re.UNICODE)


@frozen
class TokenSpan:
    """Token positions ``start <= i < stop`` of a local prompt inside the global prompt (0 = start token)."""

    start: int = field(validator=validators.ge(1))
    stop: int = field()

    @stop.validator
    def _check_stop(self, attribute: Any, value: int) -> None:
        if value <= self.start or value > MAX_TOKENS:
            raise ValueError(f"token span [{self.start}, {value}) must be non-empty and end by {MAX_TOKENS}")

    def __len__(self) -> int:
        return self.stop - self.start

    def positions(self) -> range:
        return range(self.start, self.stop)


def _max_length(tokenizer: Any) -> int:
    length = getattr(tokenizer, "model_max_length", MAX_TOKENS)
    return MAX_TOKENS if not isinstance(length, int) or length > 10_000 else length


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def prompt_token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with start and end tokens, unpadded.

    :param tokenizer: a ``transformers`` CLIP tokenizer (slow or fast).
    :raises PromptError: when the prompt needs more than 77 positions (the text encoder would cut it).
    """
    ids = list(tokenizer(prompt, add_special_tokens=True, truncation=False)["input_ids"])
    limit = _max_length(tokenizer)
    if len(ids) > limit:
        raise PromptError(
            f"prompt {_short(prompt)!r} is {len(ids)} tokens long but the text encoder sees at most {limit} "
            f"({limit - 2} plus start and end tokens); shorten it",
            prompt=prompt,
        )
    return ids


def _why_missing(local: str, global_prompt: str) -> str:
    local_words = _WORD.findall(local.lower())
    global_words = _WORD.findall(global_prompt.lower())
    for word in local_words:
        if word in global_words:
            continue
        containing = next((g for g in global_words if word in g), None)
        if containing is not None:
            return f"it is part of the word {containing!r}"
        return f"the word {word!r} does not occur in it"
    n = len(local_words)
    if not any(global_words[i : i + n] == local_words for i in range(len(global_words) - n + 1)):
        return "its words do not occur there together and in this order"
    return "the tokenizer splits those words differently in the global prompt"


def find_token_spans(
    tokenizer: Any, global_prompt: str, local_prompts: Sequence[str], *, missing: str = "error"
) -> tuple[TokenSpan | None, ...]:
    """The span of each local prompt inside the global prompt's tokens (first exact occurrence).

    :param tokenizer: a ``transformers`` CLIP tokenizer.
    :param global_prompt: the global target prompt.
    :param local_prompts: one per region, in region order; ``""`` means the region has no text tokens
        (it still takes part in self-attention modulation) and gets ``None``.
    :param missing: ``"error"`` raises for a local prompt not found; ``"drop"`` gives it ``None`` (its
        region gets no text tokens, as the official code does) and logs one warning naming it.
    :returns: one :class:`TokenSpan` or ``None`` per local prompt.
    :raises PromptError: for a prompt over 77 tokens, or (``missing="error"``) a local prompt whose
        tokens do not occur in the global prompt (the message names it and says why, e.g. that it is
        part of a longer word).
    """
    global_ids = prompt_token_ids(tokenizer, global_prompt)
    spans: list[TokenSpan | None] = []
    for local in local_prompts:
        words = prompt_token_ids(tokenizer, local)[1:-1]
        if not words:
            spans.append(None)
            continue
        n = len(words)
        start = next((j for j in range(1, len(global_ids) - n + 1) if global_ids[j : j + n] == words), None)
        if start is None:
            why = f"local prompt {local!r} is not a token of {_short(global_prompt)!r}: {_why_missing(local, global_prompt)}"
            if missing != "drop":
                raise PromptError(f"{why}; a local prompt must repeat whole words of the global prompt", prompt=local)
            log.warning("%s; its region gets no text tokens (missing_local_prompt: drop, as the official code)", why)
        spans.append(None if start is None else TokenSpan(start, start + n))
    return tuple(spans)


def composite_text_embedding(
    global_embedding: torch.Tensor,
    local_embeddings: Sequence[torch.Tensor | None],
    spans: Sequence[TokenSpan | None],
) -> torch.Tensor:
    """The ``videograin`` preset's text condition (as the official code builds it, after DenseDiffusion).

    Each local prompt is encoded *alone*; its word embeddings (positions ``1 … len``) replace the
    global prompt's embeddings at its span, in region order (a later span overwrites an earlier
    one where they overlap). Start, end and padding positions keep the global context.

    :param global_embedding: ``(T, D)`` or ``(1, T, D)`` text-encoder output of the global prompt.
    :param local_embeddings: per region, ``(T, D)`` or ``(1, T, D)`` output for its local prompt
        alone, or ``None`` where its span is ``None``.
    :param spans: per region, from :func:`find_token_spans`.
    :returns: a new tensor shaped like ``global_embedding`` (the inputs are not modified).
    """
    if len(local_embeddings) != len(spans):
        raise ValueError(f"{len(local_embeddings)} local embeddings for {len(spans)} spans")
    out = global_embedding.clone()
    target = out[0] if out.ndim == 3 else out
    for local, span in zip(local_embeddings, spans):
        if span is None:
            continue
        if local is None:
            raise ValueError(f"span {span} has no local embedding")
        source = local[0] if local.ndim == 3 else local
        target[span.start : span.stop] = source[1 : 1 + len(span)].to(target.dtype)
    return out
