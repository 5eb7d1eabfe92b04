"""Background preservation: PSNR and SSIM of the edit against the source outside every region mask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stmod.plugins.eval.metrics import PSNR_CAP, background_psnr, background_ssim, ssim_map


def _clip(seed: int = 0, frames: int = 3, size: tuple[int, int] = (32, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, *size, 3), dtype=np.uint8)


def _region(frames: int = 3, size: tuple[int, int] = (32, 40)) -> np.ndarray:
    region = np.zeros((frames, *size), bool)
    region[:, 8:20, 10:30] = True
    return region


def test_untouched_background_is_capped_and_changes_lower_it() -> None:
    """Edits inside the region leave PSNR at the cap and SSIM at 1; background changes lower both."""
    source, region = _clip(), _region()
    edited = source.copy()
    edited[region] = 255 - edited[region]
    assert background_psnr(source, edited, ~region) == PSNR_CAP
    assert background_ssim(source, edited, ~_grown(region)) == pytest.approx(1.0)  # windows clear of the edit
    noisy = edited.astype(int)
    noisy[~region] += np.random.default_rng(1).choice([-4, 4], size=noisy[~region].shape)
    noisy = noisy.clip(0, 255).astype(np.uint8)
    mse = np.mean((noisy[~region].astype(float) - source[~region]) ** 2)
    assert background_psnr(source, noisy, ~region) == pytest.approx(10 * math.log10(255**2 / mse))
    assert 30 < background_psnr(source, noisy, ~region) < PSNR_CAP
    assert background_ssim(source, noisy, ~_grown(region)) < 0.999
    assert background_psnr(source, edited, np.zeros_like(region)) is None  # no background at all
    assert background_ssim(source, edited, np.zeros_like(region)) is None


def _grown(region: np.ndarray, by: int = 6) -> np.ndarray:
    """``region`` dilated by ``by`` px (SSIM windows near the region see the edit)."""
    out = region.copy()
    for dy in range(-by, by + 1):
        for dx in range(-by, by + 1):
            out |= np.roll(region, (dy, dx), axis=(1, 2))
    return out


def test_ssim_matches_skimage() -> None:
    """The per-pixel map and the full-frame mean equal skimage's Gaussian-window SSIM (Wang et al. 2004)."""
    metrics = pytest.importorskip("skimage.metrics")
    a = _clip(2)
    b = (a.astype(int) + np.random.default_rng(3).integers(-30, 31, a.shape)).clip(0, 255).astype(np.uint8)
    options = dict(channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    means = []
    for x, y in zip(a, b):
        mean, full = metrics.structural_similarity(x, y, full=True, **options)
        np.testing.assert_allclose(ssim_map(x, y), full.mean(-1), atol=1e-9)
        means.append(mean)
    everywhere = np.ones(a.shape[:3], bool)
    assert background_ssim(a, b, everywhere) == pytest.approx(float(np.mean(means)), abs=1e-9)


def test_ssim_of_identical_images_is_one() -> None:
    a = _clip(4)[0]
    np.testing.assert_allclose(ssim_map(a, a), 1.0, atol=1e-12)
