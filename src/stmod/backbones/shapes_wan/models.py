"""The ``shapes-wan`` architecture: Wan 2.1's three models at toy widths, and the training-time text rows.

* ``AutoencoderKLWan`` with Wan's compression (4× in time, 8× in space), :data:`Z_DIM` latent channels;
* ``WanTransformer3DModel`` (patch 1×2×2: one token per 16×16 pixels of a latent frame);
* ``UMT5EncoderModel`` with a word-level tokenizer of the world's words (:func:`stmod.backbones.wan.tiny._tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stmod.backbones.shapes import world
from stmod.backbones.wan.tiny import tiny_tokenizer as _tokenizer

__all__ = ["Z_DIM", "TEXT_DIM", "TEXT_LENGTH", "SHIFT", "build_models", "text_rows", "Diffusers"]

#: Latent channels: a latent frame stands for up to four frames, so more than the 4 of the shapes UNet.
Z_DIM = 8
TEXT_DIM = 64
#: Text positions the transformer attends to (a zero start row, the tokens, zero rows): stmod's token
#: spans end by 77, and the captions are at most 25 words.
TEXT_LENGTH = 77
#: The flow-matching shift (``FlowMatchEulerDiscreteScheduler(shift=…)``), as Wan 2.1 1.3B samples.
SHIFT = 3.0

#: diffusers' models: mypy cannot resolve their mixin bases, so they are typed ``Any`` by this name.
Diffusers = Any


def build_models(seed: int) -> tuple[Diffusers, Diffusers, Any, Any]:
    """Fresh ``(vae, transformer, text_encoder, tokenizer)``, each drawn from its own seed."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = _tokenizer(world.WORDS)
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=12, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * Z_DIM,
                           latents_std=[1.0] * Z_DIM)
    torch.manual_seed(seed + 1)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32,
                                        in_channels=Z_DIM, out_channels=Z_DIM, text_dim=TEXT_DIM, freq_dim=64,
                                        ffn_dim=256, num_layers=6, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    torch.manual_seed(seed + 2)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=16, d_ff=128,
                                               num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                               dropout_rate=0.0))
    return vae, transformer, text_encoder, tokenizer


def tokenize(tokenizer: Any, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``(N, TEXT_LENGTH − 1)`` as :func:`stmod.backbones.wan.text.umt5_text` tokenizes."""
    out = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH - 1, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def text_rows(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, TEXT_LENGTH, D)`` with gradients: a zero row, the encoder's rows of the tokens, zero rows — the
    condition :func:`~stmod.backbones.wan.text.umt5_text` gives the transformer when editing."""
    rows = encoder(ids, mask).last_hidden_state * mask[..., None].to(torch.float32)
    return torch.cat([rows.new_zeros(rows.shape[0], 1, rows.shape[2]), rows], dim=1)


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    tokenizer.save_pretrained(folder)
