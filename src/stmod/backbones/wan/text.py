"""Wan's umT5 text with a start position, so that CLIP-shaped token spans hold for it.

stmod finds a local prompt inside the global prompt by token ids with a start and an end token
around the words (CLIP's ``<|startoftext|> … <|endoftext|>``, :func:`stmod.core.tokens.find_token_spans`),
and the text condition's position ``i`` is token ``i``. umT5 adds only an end token ``</s>``. Here the
tokenizer puts the pad id in front (:class:`StartMarkedTokenizer`), and :func:`umt5_text` puts a zero
row in front of the encoder's output: position ``i`` is token ``i`` again.

That is the same condition as diffusers' ``WanPipeline._get_t5_prompt_embeds``: it keeps the encoder's
rows of the prompt's tokens and pads with zero rows to 512. Wan's cross-attention has no positional
encoding on its keys, so where a zero row stands does not change the attention: one of the padding rows
moved to the front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["StartMarkedTokenizer", "umt5_text", "PROMPT_LIMIT"]

#: Positions of a prompt stmod can locate local prompts in (the core's token spans end by 77).
PROMPT_LIMIT = 77


class StartMarkedTokenizer:
    """A T5 tokenizer whose ``input_ids`` start with the pad id (a start position), limited to 77 positions."""

    model_max_length = PROMPT_LIMIT

    def __init__(self, tokenizer: Any) -> None:
        self.inner = tokenizer
        self.start_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def __call__(self, text: str, *, add_special_tokens: bool = True, truncation: bool = False,
                 **kwargs: Any) -> Mapping[str, Sequence[int]]:
        ids = list(self.inner(text, add_special_tokens=add_special_tokens, truncation=truncation)["input_ids"])
        return {"input_ids": [self.start_id, *ids] if add_special_tokens else ids}


@torch.no_grad()
def umt5_text(tokenizer: Any, encoder: torch.nn.Module, prompts: Sequence[str], *, length: int,
              device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(n, length, D)``: per prompt a zero row, the encoder's rows of its tokens, zero rows to ``length``."""
    # Adapted from diffusers pipelines/wan/pipeline_wan.py WanPipeline._get_t5_prompt_embeds
    tokens = tokenizer(list(prompts), padding="max_length", max_length=length - 1, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device)
    rows = encoder(tokens.input_ids.to(device), mask).last_hidden_state.to(dtype)
    out = torch.zeros(len(prompts), length, rows.shape[-1], device=device, dtype=dtype)
    for i, used in enumerate(mask.sum(dim=1).tolist()):
        out[i, 1:1 + used] = rows[i, :used]
    return out
