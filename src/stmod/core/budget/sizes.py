"""Model sizes and shapes read from a diffusers folder without loading weights.

Parameter counts come from the safetensors headers (the first 8 bytes give the length of a JSON
header listing every tensor's dtype and shape; nothing else is read), architectures from each
component's ``config.json``. A component without safetensors (``.bin`` pickles) or without a config
is ``None`` — unknown, never guessed.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

__all__ = ["Component", "UNetShape", "VAEShape", "read_component", "safetensors_params", "unet_shape", "vae_shape"]

#: Headers larger than this are not safetensors files (the format caps the header at 100 MB).
_MAX_HEADER = 100_000_000


@frozen(kw_only=True)
class UNetShape:
    """The parts of a UNet2DConditionModel config the formulas need (a ControlNet uses the down half)."""

    #: ``block_out_channels``: channels per level (level 0 = latent grid, each next level half the size).
    channels: tuple[int, ...]
    #: ``layers_per_block``: resnets (and transformers, where a level has attention) per down block.
    layers: int
    #: Whether each level's blocks have (self- and cross-) attention.
    attention: tuple[bool, ...]
    #: Attention heads per level (diffusers reads SD 1.5's ``attention_head_dim`` as the head count).
    heads: tuple[int, ...]
    #: Text embedding width (``cross_attention_dim``).
    cross_dim: int
    in_channels: int = 4
    #: Whether the mid block has a transformer.
    mid_attention: bool = True


@frozen(kw_only=True)
class VAEShape:
    """The parts of an AutoencoderKL config the formulas need."""

    channels: tuple[int, ...]
    layers: int
    latent_channels: int = 4

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


@frozen(kw_only=True)
class Component:
    """One model folder: parameters (``None``: unknown), bytes on disk and its config."""

    params: int | None
    file_bytes: int
    config: Mapping[str, Any]


def safetensors_params(path: Path) -> int:
    """Number of parameters in a ``.safetensors`` file, from its header alone.

    :raises ValueError: the file is not a safetensors file.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise ValueError(f"{path}: header length {length} is not a safetensors header")
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def read_component(folder: Path) -> Component | None:
    """The component in ``folder`` (``config.json`` plus ``*.safetensors``), or ``None`` without a config."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    weights = sorted(folder.glob("*.safetensors"))
    others = [p for p in folder.iterdir() if p.suffix in (".bin", ".ckpt", ".pt")]
    try:
        params = sum(safetensors_params(p) for p in _one_variant(weights)) if weights else None
    except (OSError, ValueError, KeyError, TypeError):
        params = None
    size = sum(p.stat().st_size for p in (_one_variant(weights) if weights else others))
    return Component(params=params, file_bytes=size, config=config)


def _one_variant(files: list[Path]) -> list[Path]:
    """The weights of one variant: a folder may hold both ``x.safetensors`` and ``x.fp16.safetensors``."""
    plain = [p for p in files if len(p.name.split(".")) == 2 or "-of-" in p.name]
    return plain or files[:1]


def unet_shape(config: Mapping[str, Any]) -> UNetShape | None:
    """The formulas' view of a UNet (or ControlNet) config; ``None`` when the config is not that kind."""
    try:
        channels = tuple(int(c) for c in config["block_out_channels"])
        down = [str(kind) for kind in config["down_block_types"]]
        heads = config.get("num_attention_heads") or config.get("attention_head_dim") or 8
        heads = tuple(int(h) for h in heads) if isinstance(heads, (list, tuple)) else (int(heads),) * len(channels)
        layers = config.get("layers_per_block", 2)
        if isinstance(layers, (list, tuple)):
            layers = max(layers)
        mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        cross = config.get("cross_attention_dim", 768)
        return UNetShape(channels=channels, layers=int(layers), attention=tuple("CrossAttn" in k for k in down),
                         heads=heads, cross_dim=int(cross[0] if isinstance(cross, (list, tuple)) else cross),
                         in_channels=int(config.get("in_channels", 4)),
                         mid_attention=mid is None or "CrossAttn" in str(mid))
    except (KeyError, TypeError, ValueError):
        return None


def vae_shape(config: Mapping[str, Any]) -> VAEShape | None:
    """The formulas' view of an AutoencoderKL config; ``None`` when the config is not that kind."""
    try:
        return VAEShape(channels=tuple(int(c) for c in config["block_out_channels"]),
                        layers=int(config.get("layers_per_block", 1)),
                        latent_channels=int(config.get("latent_channels", 4)))
    except (KeyError, TypeError, ValueError):
        return None
