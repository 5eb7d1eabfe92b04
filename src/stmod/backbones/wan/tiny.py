"""A tiny random-weight Wan 2.1 model in the diffusers folder layout, for tests and examples.

Built from configs (diffusers' own Wan test sizes, shrunk): a 2-block ``WanTransformer3DModel``, an
``AutoencoderKLWan`` with Wan's compression (4× in time, 8× in space, 16 latent channels), a 1-layer
``UMT5EncoderModel`` and a word-level tokenizer with an end token ``</s>`` as T5's, saved with
``save_pretrained`` so that the ``wan`` backbone loads it through the user's path. Its videos are noise;
its attention has the real structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["TINY_WAN_TRANSFORMER", "TINY_WAN_VAE", "write_tiny_wan", "tiny_tokenizer", "WORDS"]

#: Words of the tiny tokenizer (one token each; anything else is ``<unk>``).
WORDS: tuple[str, ...] = ("a", "an", "and", "the", "in", "on", "with", "red", "blue", "green", "cat", "dog", "man",
                          "car", "ball", "square", "circle", "bear", "sky", "grass", "photo", "video", "of")

TINY_WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                            out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                            qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

#: The tiny ``AutoencoderKLWan``: Wan's compression (4× in time, 8× in space, 16 latent channels), 3 base channels.
TINY_WAN_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True])


def tiny_tokenizer(words: Sequence[str] = WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of ``words`` with T5's end token ``</s>`` (anything else is ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    core.normalizer = None
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def write_tiny_wan(folder: Path, *, seed: int = 0, words: Sequence[str] = WORDS, shift: float = 3.0) -> Path:
    """Write a tiny random Wan model to ``folder`` (created; must not hold one already) and return it."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    # mypy sees diffusers' mixin classes without their inherited methods (save_pretrained): hence the ignores
    WanTransformer3DModel(**TINY_WAN_TRANSFORMER).save_pretrained(folder / "transformer")  # type: ignore[attr-defined]
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(folder / "vae")  # type: ignore[attr-defined]
    tokenizer = tiny_tokenizer(words)
    UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4,
                                relative_attention_num_buckets=8)).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(folder / "scheduler")  # type: ignore[attr-defined]
    return folder
