"""Warp-Err (Lai et al. 2018): warping, occlusion mask and the masked error, against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stmod.plugins.eval.flow import DisFlow
from stmod.plugins.eval.metrics import occlusion_mask, q_edit, warp, warp_error


# --- plain float64 references, written from the reference code (FlowNet2 Resample2d, utils.detect_occlusion)


def ref_resample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image (H, W, C)`` sampled at ``x + flow``: bilinear, indices clamped, weights from unclamped coords."""
    h, w, _ = image.shape
    out = np.zeros_like(image, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            xf, yf = x + flow[y, x, 0], y + flow[y, x, 1]
            a, b = xf - math.floor(xf), yf - math.floor(yf)
            xl, xr = min(max(math.floor(xf), 0), w - 1), min(max(math.floor(xf) + 1, 0), w - 1)
            yt, yb = min(max(math.floor(yf), 0), h - 1), min(max(math.floor(yf) + 1, 0), h - 1)
            out[y, x] = ((1 - a) * (1 - b) * image[yt, xl] + a * (1 - b) * image[yt, xr]
                         + (1 - a) * b * image[yb, xl] + a * b * image[yb, xr])
    return out


def ref_occlusion(fw: np.ndarray, bw: np.ndarray) -> np.ndarray:
    bw_w = ref_resample(bw, fw)
    mag = lambda f: f[..., 0] ** 2 + f[..., 1] ** 2  # noqa: E731
    mask1 = mag(bw_w + fw) > 0.01 * (mag(bw_w) + mag(fw)) + 0.5
    du, dv = np.zeros_like(fw), np.zeros_like(fw)
    du[:, :-1] = fw[:, :-1] - fw[:, 1:]
    dv[:-1] = fw[:-1] - fw[1:]
    mask2 = (du ** 2).sum(-1) + (dv ** 2).sum(-1) > 0.01 * mag(fw) + 0.002
    return mask1 | mask2


def ref_warp_error(frames: np.ndarray, fws: np.ndarray, bws: np.ndarray) -> float:
    errs = []
    for t in range(len(frames) - 1):
        img1, img2 = frames[t] / 255.0, frames[t + 1] / 255.0
        noc = np.repeat((~ref_occlusion(fws[t], bws[t]))[..., None], 3, axis=2).astype(np.float64)
        diff = (ref_resample(img2, fws[t]) - img1) * noc
        n = noc.sum()
        errs.append(np.sum(diff ** 2) / n if n else 0.0)
    return 100.0 * float(np.mean(errs))


def _random_case(seed: int, frames: int = 3, size: tuple[int, int] = (12, 16)):
    """Random frames; smooth random affine flows with a block moving differently (motion boundaries);
    backward flows that close the round trip on the left half and are random on the right half."""
    rng = np.random.default_rng(seed)
    clip = rng.integers(0, 256, (frames, *size, 3), dtype=np.uint8)
    y, x = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    fws, bws = [], []
    for _ in range(frames - 1):
        a = rng.uniform(-0.03, 0.03, 6)
        fw = np.stack([rng.uniform(-2, 2) + a[0] * x + a[1] * y, rng.uniform(-2, 2) + a[2] * x + a[3] * y], -1)
        fw[2:6, 3:8] += rng.uniform(-3, 3, 2)  # a block with its own motion
        bw = -fw + rng.normal(0, 0.05, fw.shape)
        bw[:, size[1] // 2:] = rng.normal(0, 3.0, bw[:, size[1] // 2:].shape)
        fws.append(fw + rng.normal(0, 0.01, fw.shape))
        bws.append(bw)
    return clip, np.stack(fws), np.stack(bws)


def test_warp_and_occlusion_match_float64_reference() -> None:
    """On random images and flows (some round trips closing, some not) the torch code matches the loops."""
    clip, fws, bws = _random_case(0)
    image = clip[1].astype(np.float64)
    got = warp(torch.from_numpy(image).permute(2, 0, 1)[None], torch.from_numpy(fws[0])[None])[0].permute(1, 2, 0)
    np.testing.assert_allclose(got.numpy(), ref_resample(image, fws[0]), atol=1e-9)
    occluded = occlusion_mask(torch.from_numpy(fws), torch.from_numpy(bws)).numpy()
    expected = np.stack([ref_occlusion(f, b) for f, b in zip(fws, bws)])
    assert 0.05 < expected.mean() < 0.95  # both cases present
    assert (occluded == expected).mean() > 0.999  # float64 vs float64: only exact ties could differ
    result = warp_error(clip, fws, bws)
    assert result.value == pytest.approx(ref_warp_error(clip, fws, bws), rel=1e-4)
    assert len(result.per_pair) == 2 and result.occluded == pytest.approx(expected.mean(), abs=1e-3)


def _moving_patch(frames: int = 5, shift: tuple[int, int] = (2, 1), flicker: float = 0.0) -> np.ndarray:
    """A textured patch moving by ``shift`` px per frame over a flat background, optionally flickering."""
    rng = np.random.default_rng(3)
    patch = rng.integers(0, 256, (20, 20, 3))
    clip = np.full((frames, 64, 64, 3), 120.0)
    for t in range(frames):
        y, x = 10 + shift[1] * t, 10 + shift[0] * t
        clip[t, y:y + 20, x:x + 20] = patch
        clip[t] += flicker * (1 if t % 2 else -1)
    return clip.clip(0, 255).astype(np.uint8)


def test_static_clip_scores_zero() -> None:
    """No motion, zero flow: nothing to warp, no error; DIS on a static clip also gives ≈ 0."""
    clip = np.repeat(_moving_patch(1), 4, axis=0)
    zero = np.zeros((3, 64, 64, 2), np.float32)
    assert warp_error(clip, zero, zero).value == pytest.approx(0.0, abs=1e-12)
    fw, bw = DisFlow().pairs(clip)
    assert warp_error(clip, fw, bw).value < 1e-3


def test_known_shift_is_consistent_and_flicker_is_not() -> None:
    """Warped with the true flow a translated clip scores ≈ 0; the same motion with flicker scores far more."""
    shift = (2, 1)
    forward = np.broadcast_to(np.array(shift, np.float32), (4, 64, 64, 2)).copy()
    moving, flickering = _moving_patch(shift=shift), _moving_patch(shift=shift, flicker=15)
    steady = warp_error(moving, forward, -forward)
    assert steady.value == pytest.approx(0.0, abs=1e-9) and steady.occluded == 0.0
    flicker = warp_error(flickering, forward, -forward)
    assert flicker.value > 1.0  # (30/255)² · 100 ≈ 1.38
    fw, bw = DisFlow().pairs(moving)  # estimated flow: still far below the flicker
    assert warp_error(moving, fw, bw).value < 0.2 * flicker.value


def test_occluded_pixels_are_excluded() -> None:
    """Where the forward–backward check fails, differences do not count (unless occlusion is turned off)."""
    clip = np.repeat(_moving_patch(1), 3, axis=0)
    forward = np.zeros((2, 64, 64, 2), np.float32)
    backward = forward.copy()
    backward[:, 40:60, 40:60] = (5.0, 0.0)  # the round trip misses by 5 px there: occluded
    clip[1, 40:60, 40:60] = 255  # the frames disagree only there (background elsewhere is 120)
    masked = warp_error(clip, forward, backward)
    assert masked.value == pytest.approx(0.0, abs=1e-12) and masked.occluded == pytest.approx(400 / 4096)
    assert warp_error(clip, forward, backward, occlusion=False).value > 1.0
    assert warp_error(clip, forward, backward, norm="l1", occlusion=False).value > 1.0


def test_q_edit_is_the_ratio_of_scaled_numbers() -> None:
    """Q-edit = CLIP-T / Warp-Err as in the paper's table (36.56 / 1.42 = 25.75); undefined at zero error."""
    assert q_edit(36.56, 1.42) == pytest.approx(25.746, abs=1e-3)
    assert q_edit(30.0, 0.0) is None and q_edit(None, 1.0) is None


def test_raft_with_user_weights(tmp_path, monkeypatch) -> None:
    """--raft-weights PATH loads torchvision's raft_large state_dict; a wrong file is one clear error."""
    models = pytest.importorskip("torchvision.models.optical_flow")
    from stmod.plugins.eval import flow as flow_module
    from stmod.core.errors import CheckpointError

    torch.manual_seed(0)
    torch.save(models.raft_large(weights=None, progress=False).state_dict(), tmp_path / "raft.pth")
    monkeypatch.setattr(flow_module, "_RAFT_ITERATIONS", 1)  # random weights: one refinement is enough here
    forward, backward = flow_module.make_flow("raft", raft_weights=tmp_path / "raft.pth", device="cpu").pairs(
        _moving_patch(2))
    assert forward.shape == backward.shape == (1, 64, 64, 2) and forward.dtype == np.float32
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not a raft_large state_dict"):
        flow_module.RaftFlow(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="no such RAFT weights file"):
        flow_module.RaftFlow(tmp_path / "missing.pth")
