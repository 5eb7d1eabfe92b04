"""The pixel composite after decoding: outside the (grown, feathered) regions the output is the input.

A VAE decoder is not local, so latents equal to the source's outside the regions do not decode to the
source's pixels; the latent blenders put them back (``composite``)."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from stmod.core.config import load_job
from stmod.core.pipeline.editor import Editor
from stmod.plugins.blenders import BlendOptions, LatentBlend, composite_frames, composite_weights
from stmod.testing import fresh_plugin_manager


def _reference_weights(regions: np.ndarray, dilate: int, sigma: float) -> np.ndarray:
    """float64: grow by Euclidean distance ≤ dilate, blur with a Gaussian truncated at 4σ (edge padding),
    and never below the grown mask."""
    grown = np.stack([distance_transform_edt(~r) <= dilate if r.any() else r for r in regions]).astype(np.float64)
    if sigma <= 0:
        return grown
    radius = int(4 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = np.empty_like(grown)
    for f, frame in enumerate(grown):
        rows = np.pad(frame, ((0, 0), (radius, radius)), mode="edge")
        rows = sum(k * rows[:, i:i + frame.shape[1]] for i, k in enumerate(kernel))
        cols = np.pad(rows, ((radius, radius), (0, 0)), mode="edge")
        out[f] = sum(k * cols[i:i + frame.shape[0]] for i, k in enumerate(kernel))
    return np.maximum(out, grown)


@pytest.mark.parametrize(("dilate", "sigma"), [(0, 0.0), (3, 0.0), (4, 2.0), (1, 1.3)])
def test_weights_match_a_float64_reference(dilate: int, sigma: float) -> None:
    rng = np.random.default_rng()
    regions = rng.random((3, 24, 31)) > 0.97
    regions[1] = False  # a frame where no region shows
    got = composite_weights(regions, dilate, sigma)
    assert got.dtype == np.float32 and got.shape == regions.shape
    np.testing.assert_allclose(got, _reference_weights(regions, dilate, sigma), atol=1e-6)
    assert (got[regions] == 1).all()


def test_frames_are_the_source_where_the_weight_is_zero_and_the_edit_where_it_is_one() -> None:
    rng = np.random.default_rng()
    source, edited = (rng.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8) for _ in range(2))
    weights = rng.random((2, 9, 11)).astype(np.float32)
    weights[:, :3], weights[:, -3:] = 0.0, 1.0
    out = composite_frames(source, edited, weights)
    reference = np.rint(source + weights[..., None].astype(np.float64) * (edited.astype(np.float64) - source))
    assert np.abs(out.astype(np.int64) - reference).max() <= 1  # float32 may round a .5 the other way
    assert (out[:, :3] == source[:, :3]).all() and (out[:, -3:] == edited[:, -3:]).all()


def test_the_option_off_returns_the_decoded_frames() -> None:
    rng = np.random.default_rng()
    source, edited = (rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8) for _ in range(2))
    regions = np.zeros((1, 8, 8), bool)
    assert (LatentBlend(BlendOptions(composite=False)).composite(source, edited, regions) == edited).all()
    assert (LatentBlend(BlendOptions()).composite(source, edited, regions) == source).all()


@pytest.fixture(scope="module")
def editor() -> Editor:
    return Editor(fresh_plugin_manager().registry, progress=False, cache=False)


@pytest.mark.parametrize("blend", ["latent", "videograin"])
def test_an_edit_keeps_the_source_pixels_outside_the_grown_regions(demo_job, editor: Editor, blend: str) -> None:
    """With the composite (the default) every pixel beyond the band is the source's; without it the
    random-weight decoder changes them (the decoder is not local)."""
    job = demo_job(steps=2, blend={"name": blend})
    spec = load_job(job)
    result = editor.run(spec)
    union = result.layout.union().numpy()
    outside = composite_weights(union, 4, 2.0) == 0
    assert outside.any() and (result.frames[outside] == result.source[outside]).all()
    assert (result.frames[union] != result.source[union]).any()

    plain = editor.run(attrs.evolve(spec, blend=attrs.evolve(spec.blend, options={"composite": False}),
                                    output=spec.output.with_name("plain")))
    assert (plain.frames[outside] != plain.source[outside]).any(), "the test cannot tell the composite's work"
