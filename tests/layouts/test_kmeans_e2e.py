"""``kmeans`` on the tiny backbone: through the Editor, composed with ``masks``, and the inversion cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest

from stmod.core.config import load_job
from stmod.plugins.commands.demo import synthetic_clip
from stmod.core.features import FeatureRequest
from stmod.core.pipeline.editor import Editor
from stmod.core.pipeline.cache import InversionCache
from stmod.core.types import ComponentRef
from stmod.testing import fresh_plugin_manager

KMEANS = {"name": "kmeans", "clusters": 3, "level": 0, "n_init": 2}


@pytest.fixture
def editor(tmp_path: Path) -> Editor:
    return Editor(fresh_plugin_manager().registry, progress=False, cache=InversionCache(tmp_path / "cache"))


def test_edit_with_kmeans_layout(demo_job, editor: Editor) -> None:
    """A whole edit: inversion (recording features) → K-Means layout → denoising; one mask per region."""
    job = demo_job(layout={**KMEANS, "assign": {"square": 0, "disc": [1, 2]}})
    result = editor.run(load_job(job))
    assert set(result.layout.names) == {"square", "disc"} and result.layout.masks.shape == (4, 2, 64, 64)
    assert all(result.layout.masks[:, k].any() for k in range(2))
    phases = result.run["phases_run"]
    assert phases.index("invert") < phases.index("layout") < phases.index("denoise")
    assert (result.output / "masks.mp4").exists() and result.frames.shape == (4, 64, 64, 3)


def test_engine_feeds_only_unet_inversion_calls(demo_job, editor: Editor) -> None:
    """Features come from the UNet's level-0 layers (5 per call in the tiny UNet), one call per inversion step;
    the ControlNet's attention and denoising are not recorded."""
    job = demo_job(layout={**KMEANS, "assign": {"square": 0, "disc": [1, 2]}})
    result = editor.layout(load_job(job))
    provider = result.components.layouts[0][0]
    assert result.run["inversion"]["cached"] is False
    entry = editor.cache.load(result.run["inversion"]["key"])
    assert entry is not None and entry.features is not None
    (state,) = entry.features["maps"]
    assert state["calls"] == [5 * 3, 5 * 3] and state["grid"] == [8, 8]
    assert list(state["self"].shape) == [4, 8, 8, 3 * 64]
    assert entry.features["levels"] == [0, 1, 2] and provider.result.labels.shape == (4, 8, 8)  # 2: the mid block


def test_masks_for_one_region_and_kmeans_for_the_background(demo_job, editor: Editor) -> None:
    """Composition: K-Means supplies the background (all clusters), masks the square painted over it (later wins)."""
    job = demo_job(
        regions={"background": "", "square": "red cat"},
        layout=[{**KMEANS, "rest": "background", "regions": ["background"]},
                {"name": "masks", "dir": "masks", "regions": ["square"]}])
    result = editor.run(load_job(job))
    _, truth = synthetic_clip(4, (64, 64))
    masks = result.layout.select(["background", "square"]).masks.numpy()
    assert result.layout.names == load_job(job).region_names
    assert np.array_equal(masks[:, 1], truth["square"])
    assert np.array_equal(masks[:, 0], ~truth["square"])  # the rest: every cluster, minus the square


def test_cache_keeps_features_and_never_skips_recording(demo_job, editor: Editor) -> None:
    """A cached plain trajectory is not used for a K-Means job; K-Means jobs reuse trajectory + features.

    All jobs share one written clip: re-encoding it may change its pixels (and so the cache key).
    """
    plain = attrs.evolve(load_job(demo_job()), overwrite=True)

    def with_kmeans(**options) -> Any:
        settings = {k: v for k, v in {**KMEANS, **options}.items() if k != "name"}
        return attrs.evolve(plain, layout=(ComponentRef(name="kmeans", options=settings),))

    assert editor.run(plain).run["inversion"]["cached"] is False
    first = editor.layout(with_kmeans(assign={"square": 0, "disc": 1}))
    assert first.run["inversion"]["cached"] is False  # recorded, although the plain trajectory was cached
    second = editor.layout(with_kmeans(clusters=4, assign={"square": 0, "disc": [1, 3]}))
    assert second.run["inversion"] == {"cached": True, "stored": True, "key": first.run["inversion"]["key"]}
    assert second.components.layouts[0][0].result.clusters == 4
    assert second.components.layouts[0][0].feature_request == FeatureRequest(level=0, reference_frames=3)
    finer = editor.layout(with_kmeans(level=1, assign={"square": 0, "disc": 1}))
    assert finer.run["inversion"]["cached"] is False  # the key covers the feature request


def test_a_transformer_block_is_refused_on_a_unet_backbone(demo_job, editor: Editor) -> None:
    """``block`` picks a DiT block (wan); on sd15 it is one line naming the option, the value and the fix."""
    from stmod.core.errors import LayoutError

    job = demo_job(layout={**KMEANS, "assign": {"square": 0, "disc": 1}, "block": 3})
    with pytest.raises(LayoutError, match=r"block: 3 picks a transformer block, and backbone 'sd15' has UNet levels"):
        editor.check(load_job(job))
