"""Where PnP records and injects: the official up-block places, found by their place in the UNet.

The official VideoGrain code (``ddim_spatial_temporal.py``, SD 1.5 with four up blocks) records the
residual branch of ``up_blocks[1].resnets[0, 1]`` and ``up_blocks[2].resnets[0]`` — in diffusers'
``ResnetBlock2D`` that branch is the output of ``conv2``, taken before ``conv_shortcut`` and the skip
add — and the self-attention ``to_q`` / ``to_k`` outputs of ``up_blocks[1].attentions[1, 2]``,
``up_blocks[2].attentions[0, 1, 2]`` and ``up_blocks[3].attentions[0]`` (``transformer_blocks[0].attn1``).

**Rule for other UNets.** The places are kept by *level* (``stmod.core.levels``: level 0 is the latent
grid), counted from the output: of ``n`` up blocks, ``up_blocks[i]`` runs at level ``n − 1 − i``; SD 1.5's
``up_blocks[1]`` is level 2, ``[2]`` level 1, ``[3]`` level 0 (:data:`OFFICIAL_PLACES`). A place the UNet
lacks (an up block without attentions, fewer resnets per block) is left out; a UNet with none of them
is refused. For SD 1.5 the rule gives exactly the official places; for the ``tiny`` backbone (three up
blocks, three layers each) it gives ``up_blocks[0].resnets[0, 1]``, ``up_blocks[1].resnets[0]``,
``up_blocks[1].attentions[0, 1, 2]`` and ``up_blocks[2].attentions[0]`` (its level-2 block has no
attention); for ``shapes`` (four up blocks, two layers each) the official places that exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
from attrs import frozen

__all__ = ["OFFICIAL_PLACES", "Place", "find_places", "place_bytes", "sd15_step_bytes"]

#: Level → (resnet indices, attention indices) of the official code's PnP places.
OFFICIAL_PLACES: Mapping[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    2: ((0, 1), (1, 2)),
    1: ((0,), (0, 1, 2)),
    0: ((), (0,)),
}


@frozen
class Place:
    """One recorded module output: its dotted name in the UNet, the module, and its level."""

    name: str
    module: torch.nn.Module
    level: int


def find_places(unet: torch.nn.Module, places: Mapping[int, tuple[Sequence[int], Sequence[int]]] = OFFICIAL_PLACES
                ) -> list[Place]:
    """The modules whose outputs PnP records: each resnet's ``conv2``, each attention's self ``to_q``, ``to_k``."""
    blocks = getattr(unet, "up_blocks", None)
    if blocks is None:
        raise TypeError(f"PnP needs a diffusers UNet with up_blocks, got {type(unet).__name__}")
    found = []
    for level, (resnets, attentions) in sorted(places.items(), reverse=True):
        i = len(blocks) - 1 - level
        if i < 0:
            continue
        block = blocks[i]
        own_resnets = list(getattr(block, "resnets", None) or [])
        own_attentions = list(getattr(block, "attentions", None) or [])
        for j in (j for j in resnets if j < len(own_resnets)):
            found.append(Place(f"up_blocks.{i}.resnets.{j}.conv2", own_resnets[j].conv2, level))
        for j in (j for j in attentions if j < len(own_attentions)):
            attn = own_attentions[j].transformer_blocks[0].attn1
            prefix = f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn1"
            found += [Place(f"{prefix}.to_q", attn.to_q, level), Place(f"{prefix}.to_k", attn.to_k, level)]
    if not found:
        raise TypeError(f"PnP found none of the official up-block places in this UNet ({len(blocks)} up blocks)")
    return found


def place_bytes(unet: torch.nn.Module, places: Sequence[Place], *, latent_size: Sequence[int], frames: int,
                element_size: int) -> int:
    """Bytes of one step's record of ``places`` for ``frames`` frames of latents ``latent_size`` (one branch)."""
    from stmod.core.levels import level_grid

    total = 0
    for place in places:
        h, w = level_grid(latent_size, place.level)
        # not a Conv2d: a to_q / to_k Linear (or a wrapper of one, such as a LoRA layer) with out_features
        channels = place.module.out_channels if isinstance(place.module, torch.nn.Conv2d) else \
            cast(int, place.module.out_features)
        total += frames * channels * h * w
    return total * element_size


def sd15_step_bytes(*, latent_size: Sequence[int] = (64, 64), frames: int = 16, branches: int = 1,
                    element_size: int = 2) -> int:
    """Bytes of one step's record for SD 1.5 (channels 320/640/1280 at levels 0/1/2, as the official
    places give), computed from the shapes alone."""
    from stmod.core.levels import level_grid

    channels = {0: 320, 1: 640, 2: 1280}
    total = 0
    for level, (resnets, attentions) in OFFICIAL_PLACES.items():
        h, w = level_grid(latent_size, level)
        total += (len(resnets) + 2 * len(attentions)) * channels[level] * h * w
    return total * frames * branches * element_size
