"""Region masks on Wan's latent grid: the causal video VAE's time compression, as pure tensor code.

Wan 2.1's VAE (``AutoencoderKLWan``) is causal in time: latent frame 0 encodes frame 0 alone, and
latent frame ``j ≥ 1`` encodes the group of frames ``r·(j − 1) + 1 … r·j`` (``r = 4``), so a clip must
have ``1 + r·k`` frames and gives ``1 + k`` latent frames. A latent frame's masks are the **union**
of its group's masks: its tokens carry what any of those frames showed, and a token that saw a region
in one of them must stay with that region (self-attention) and with its local prompt (cross-attention).
The spatial reduction (VAE 8× × patch 2× = 16×) is the engine's own mask down-sampling to the layer grid
(:func:`stmod.core.st_layout.labels.downsample_masks`), as for a UNet layer.
"""

from __future__ import annotations

import torch

__all__ = ["latent_frame_count", "nearest_valid_frame_counts", "latent_frame_groups", "compress_masks_in_time"]


def latent_frame_count(frames: int, ratio: int = 4) -> int | None:
    """Latent frames of a clip of ``frames`` frames, or ``None`` when the VAE cannot take it (not ``1 + ratio·k``)."""
    return None if frames < 1 or (frames - 1) % ratio else 1 + (frames - 1) // ratio


def nearest_valid_frame_counts(frames: int, ratio: int = 4) -> tuple[int, ...]:
    """The valid counts just below and above ``frames`` (one when ``frames`` is below the first)."""
    below = 1 + ratio * ((frames - 1) // ratio)
    above = below + ratio
    return (above,) if frames < 1 else tuple(dict.fromkeys((below, above)))


def latent_frame_groups(frames: int, ratio: int = 4) -> list[range]:
    """Per latent frame, the range of clip frames it encodes: ``[0]``, then groups of ``ratio``."""
    count = latent_frame_count(frames, ratio)
    if count is None:
        raise ValueError(f"{frames} frames is not 1 + {ratio}·k")
    return [range(0, 1)] + [range(ratio * (j - 1) + 1, ratio * j + 1) for j in range(1, count)]


def compress_masks_in_time(masks: torch.Tensor, ratio: int = 4) -> torch.Tensor:
    """Bool ``(F, K, H, W)`` pixel masks → bool ``(1 + (F − 1)/ratio, K, H, W)``: each latent frame the
    union of its frame group's masks (:func:`latent_frame_groups`)."""
    frames = masks.shape[0]
    if latent_frame_count(frames, ratio) is None:
        raise ValueError(f"masks have {frames} frames; a Wan clip has 1 + {ratio}·k")
    # the group count spelled out: with no regions (K = 0) a -1 would be ambiguous
    rest = masks[1:].reshape((frames - 1) // ratio, ratio, *masks.shape[1:]).any(dim=1)
    return torch.cat([masks[:1].bool(), rest])
