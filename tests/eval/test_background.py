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


def _reference_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al. 2004 written out (Gaussian σ 1.5 truncated at 3.5σ: the 11 × 11 window; population
    variances): the formula stmod's SSIM (scikit-image's) must follow."""
    from scipy.ndimage import gaussian_filter

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=1.5, truncate=3.5, mode="reflect")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = np.zeros(a.shape[:2], np.float64)
    for c in range(a.shape[2]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        out += ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return out / a.shape[2]


def test_ssim_is_the_paper_formula() -> None:
    """The per-pixel map is Wang et al.'s Gaussian-window SSIM; the background mean over an all-true mask
    is the mean of the frames' SSIM with the 5-pixel border left out (as scikit-image averages)."""
    a = _clip(2)
    b = (a.astype(int) + np.random.default_rng(3).integers(-30, 31, a.shape)).clip(0, 255).astype(np.uint8)
    means = []
    for x, y in zip(a, b):
        reference = _reference_ssim_map(x, y)
        np.testing.assert_allclose(ssim_map(x, y), reference, atol=1e-9)
        means.append(reference[5:-5, 5:-5].mean())
    everywhere = np.ones(a.shape[:3], bool)
    assert background_ssim(a, b, everywhere) == pytest.approx(float(np.mean(means)), abs=1e-9)


def test_ssim_of_identical_images_is_one() -> None:
    a = _clip(4)[0]
    np.testing.assert_allclose(ssim_map(a, a), 1.0, atol=1e-12)
