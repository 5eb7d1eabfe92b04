"""Metric math for ``stmod-run eval``: pure functions on arrays, no models, no files.

Conventions (``docs/evaluation.md`` gives the formulas and the public code each one follows):

* frames are ``uint8 (F, H, W, 3)`` RGB; flows are ``float (P, H, W, 2)`` pixel displacements
  ``(dx, dy)`` for the ``P = F - 1`` consecutive pairs, where a forward flow ``A_t`` maps frame ``t``
  onto frame ``t + 1``: ``I_t(x) ≈ I_{t+1}(x + A_t(x))``;
* CLIP scores are ``100 · cosine`` (CLIP-T, CLIP-F), Warp-Err is ``100 ·`` the masked mean squared
  error on RGB in ``[0, 1]`` (Lai et al., ECCV 2018), Q-edit is ``CLIP-T / Warp-Err`` of those
  scaled numbers (as in the paper's tables);
* background metrics compare the edit with the source outside every region mask.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PSNR_CAP", "SSIM_SIGMA", "clip_text_score", "clip_frame_consistency", "q_edit", "warp", "occlusion_mask",
    "WarpResult", "warp_error", "background_psnr", "ssim_map", "background_ssim", "square_box",
]

#: PSNR reported for identical pixels (where the true value is infinite), in dB; larger values are capped.
PSNR_CAP = 100.0
#: SSIM's Gaussian window (Wang et al. 2004; ``skimage.metrics.structural_similarity(gaussian_weights=True)``).
SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # window radius int(3.5 * 1.5 + 0.5) = 5: the 11 × 11 window of the paper
_SSIM_RADIUS = int(_SSIM_TRUNCATE * SSIM_SIGMA + 0.5)

FrameConsistency = Literal["consecutive", "pairwise"]
WarpNorm = Literal["mse", "l1"]


# ------------------------------------------------------------------------------------------------ CLIP


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double(), dim=-1)


def clip_text_score(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> float:
    """CLIP-T: mean over frames of ``100 · cos(image_f, text)``.

    :param image_embeds: ``(F, D)`` projected image embeddings (any scale; normalised here).
    :param text_embed: ``(D,)`` or ``(1, D)`` projected text embedding.
    """
    return float(100.0 * (_unit(image_embeds) @ _unit(text_embed.reshape(-1))).mean())


def clip_frame_consistency(image_embeds: torch.Tensor, mode: FrameConsistency = "consecutive") -> float | None:
    """CLIP-F: ``100 ·`` mean cosine between frame embeddings; ``None`` for a single frame.

    ``consecutive`` (the paper; FateZero's script) averages ``cos(e_i, e_{i+1})`` over ``i < F - 1``;
    ``pairwise`` (LOVEU-TGVE, RAVE) averages ``cos(e_i, e_j)`` over all ``i != j``.
    """
    e = _unit(image_embeds)
    n = e.shape[0]
    if n < 2:
        return None
    if mode == "consecutive":
        return float(100.0 * (e[:-1] * e[1:]).sum(-1).mean())
    if mode == "pairwise":
        sims = e @ e.T
        return float(100.0 * (sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    raise ValueError(f"mode must be 'consecutive' or 'pairwise', got {mode!r}")


def q_edit(clip_t: float | None, warp_err: float | None) -> float | None:
    """Q-edit ``= CLIP-T / Warp-Err`` of the ×100 numbers; ``None`` when either is missing or Warp-Err is 0."""
    if clip_t is None or warp_err is None or warp_err <= 0.0:
        return None
    return clip_t / warp_err


# ------------------------------------------------------------------------------------------- Warp-Err


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` at ``x + flow(x)``, bilinearly, coordinates clamped to the border.

    This is FlowNet2's ``Resample2d`` (used by Lai et al.'s Warp-Err): warping frame ``t + 1`` with the
    forward flow ``A_t`` gives frame ``t``'s view of it.

    :param image: ``(N, C, H, W)`` float.
    :param flow: ``(N, H, W, 2)`` float pixel displacements ``(dx, dy)``.
    :returns: ``(N, C, H, W)``, the dtype of ``image``.
    """
    n, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (xs + flow[..., 0]).clamp(0, w - 1)
    y = (ys + flow[..., 1]).clamp(0, h - 1)
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1).to(image.dtype)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def occlusion_mask(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Pixels of frame ``t`` without a reliable match in frame ``t + 1`` (Lai et al. 2018, ``detect_occlusion``).

    With ``A = forward`` (``t → t+1``) and ``B = backward`` (``t+1 → t``) and ``B̂ = B`` warped by ``A``,
    a pixel is occluded when the round trip does not close,
    ``|B̂ + A|² > 0.01 (|B̂|² + |A|²) + 0.5``, or when it lies on a motion boundary,
    ``|∂x A|² + |∂y A|² > 0.01 |A|² + 0.002`` (forward differences, zero on the last row/column).

    :param forward: ``(N, H, W, 2)`` float flows ``t → t+1``.
    :param backward: ``(N, H, W, 2)`` float flows ``t+1 → t``.
    :returns: bool ``(N, H, W)``, true where occluded.
    """
    back_warped = warp(backward.permute(0, 3, 1, 2), forward).permute(0, 2, 3, 1)
    mismatch = ((back_warped + forward) ** 2).sum(-1)
    bound = 0.01 * ((back_warped ** 2).sum(-1) + (forward ** 2).sum(-1)) + 0.5
    du = torch.zeros_like(forward)
    dv = torch.zeros_like(forward)
    du[:, :, :-1] = forward[:, :, :-1] - forward[:, :, 1:]
    dv[:, :-1] = forward[:, :-1] - forward[:, 1:]
    gradient = (du ** 2 + dv ** 2).sum(-1)
    boundary = gradient > 0.01 * (forward ** 2).sum(-1) + 0.002
    return (mismatch > bound) | boundary


@attrs.frozen(kw_only=True)
class WarpResult:
    """Warp-Err of one clip: ``value`` (×100, mean over pairs), ``per_pair`` (×100) and the occluded share."""

    value: float | None
    per_pair: tuple[float, ...]
    occluded: float


def warp_error(
    frames: np.ndarray,
    forward: np.ndarray | torch.Tensor,
    backward: np.ndarray | torch.Tensor | None = None,
    *,
    norm: WarpNorm = "mse",
    occlusion: bool = True,
) -> WarpResult:
    """Temporal warping error of ``frames`` under the (source) flows.

    For each pair ``t``: ``W_t = warp(O_{t+1}, A_t)``, ``M_t`` = not occluded, and
    ``e_t = Σ M_t (W_t − O_t)² / (3 Σ M_t)`` on RGB in ``[0, 1]`` (``l1``: absolute differences); a pair
    whose pixels are all occluded scores 0 (as in the reference code). ``value = 100 · mean_t e_t``.

    :param frames: ``uint8 (F, H, W, 3)``, the frames to score (the edit).
    :param forward: ``(F-1, H, W, 2)`` flows ``t → t+1`` of the *source* clip.
    :param backward: ``(F-1, H, W, 2)`` flows ``t+1 → t``; needed when ``occlusion`` is true.
    :param occlusion: exclude occluded pixels (forward–backward check); false scores every pixel.
    """
    if len(frames) < 2:
        return WarpResult(value=None, per_pair=(), occluded=0.0)
    fw = torch.as_tensor(np.asarray(forward), dtype=torch.float64)
    if fw.shape != (len(frames) - 1, *frames.shape[1:3], 2):
        raise ValueError(f"forward flows are {tuple(fw.shape)}, expected {(len(frames) - 1, *frames.shape[1:3], 2)}")
    per_pair, occluded = [], []
    for t in range(len(frames) - 1):  # one pair at a time: bounded memory for long clips
        current = torch.from_numpy(np.ascontiguousarray(frames[t])).permute(2, 0, 1)[None].double() / 255.0
        following = torch.from_numpy(np.ascontiguousarray(frames[t + 1])).permute(2, 0, 1)[None].double() / 255.0
        warped = warp(following, fw[t:t + 1])
        diff = (warped - current)[0]
        diff = diff ** 2 if norm == "mse" else diff.abs()
        if occlusion:
            if backward is None:
                raise ValueError("backward flows are needed for the occlusion check")
            bw = torch.as_tensor(np.asarray(backward[t:t + 1]), dtype=torch.float64)
            keep = ~occlusion_mask(fw[t:t + 1], bw)[0]
        else:
            keep = torch.ones(diff.shape[1:], dtype=torch.bool)
        count = int(keep.sum())
        per_pair.append(float(diff[:, keep].sum()) / (3 * count) * 100.0 if count else 0.0)
        occluded.append(1.0 - count / keep.numel())
    return WarpResult(value=float(np.mean(per_pair)), per_pair=tuple(per_pair), occluded=float(np.mean(occluded)))


# ------------------------------------------------------------------------------------------ background


def _check_pair(source: np.ndarray, result: np.ndarray, keep: np.ndarray) -> None:
    if source.shape != result.shape or source.ndim != 4 or keep.shape != source.shape[:3]:
        raise ValueError(f"source {source.shape}, result {result.shape} and mask {keep.shape} do not match "
                         "(expected (F, H, W, 3), (F, H, W, 3) and (F, H, W))")


def background_psnr(source: np.ndarray, result: np.ndarray, background: np.ndarray) -> float | None:
    """PSNR (dB, peak 255) of ``result`` against ``source`` over the ``background`` pixels of all frames.

    The squared error is pooled over every background pixel and channel of the clip, then
    ``10 log10(255² / MSE)``; identical pixels give :data:`PSNR_CAP`, and so does anything above it.
    ``None`` when there is no background pixel.

    :param source: ``uint8 (F, H, W, 3)``; :param result: same shape; :param background: bool ``(F, H, W)``.
    """
    _check_pair(source, result, background)
    if not background.any():
        return None
    diff = source[background].astype(np.float64) - result[background].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * math.log10(255.0 ** 2 / mse))


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two ``uint8 (H, W, 3)`` images, averaged over channels: ``float64 (H, W)``.

    scikit-image's ``structural_similarity`` map: Wang et al. 2004 with an 11 × 11 Gaussian window
    (σ = 1.5), ``K1 = 0.01``, ``K2 = 0.03``, ``L = 255`` and population (co)variances.
    """
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=SSIM_SIGMA,
                                    use_sample_covariance=False, data_range=255, full=True)
    return full.mean(-1)


def background_ssim(source: np.ndarray, result: np.ndarray, background: np.ndarray) -> float | None:
    """Mean SSIM of ``result`` against ``source`` over the ``background`` pixels of all frames.

    The per-pixel map of :func:`ssim_map` is averaged over background pixels at least 5 pixels (the
    window radius) from the frame's edge, as ``structural_similarity`` averages its map; with an
    all-true ``background`` this is exactly the mean over frames of skimage's SSIM. ``None`` when no
    such pixel exists.
    """
    _check_pair(source, result, background)
    r = _SSIM_RADIUS
    inner = np.zeros(background.shape[1:], bool)
    inner[r:background.shape[1] - r, r:background.shape[2] - r] = True
    total, count = 0.0, 0
    for src, res, keep in zip(source, result, background):
        keep = keep & inner
        if keep.any():
            total += float(ssim_map(src, res)[keep].sum())
            count += int(keep.sum())
    return total / count if count else None


def square_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The square around a mask's bounding box: ``(top, left, side, side)`` centred on the box.

    The box's shorter side is widened to its longer side, shifted to stay inside the frame where
    possible (a square larger than the frame is clipped, and the crop is padded by the caller).
    ``None`` for an empty mask. ``mask`` is bool ``(H, W)``.
    """
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(bottom - top, right - left)
    height, width = mask.shape

    def place(start: int, end: int, limit: int) -> int:
        lo = start - (side - (end - start)) // 2
        return max(0, min(lo, limit - side)) if side <= limit else lo

    return place(top, bottom, height), place(left, right, width), side, side
