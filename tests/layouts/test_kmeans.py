"""The ``kmeans`` layout on planted features: clustering, the feature recorder, naming, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

import stmod.testing
from stmod.core.errors import ConfigError, LayoutError
from stmod.core.features import FeatureRequest, InversionFeatureRecorder, InversionFeatures, word_positions
from stmod.core.types import ComponentRef, EditSpec, LayoutRequest, Region, VideoSource
from stmod.layouts.clustering import cluster_features, name_clusters
from stmod.layouts.kmeans import KMeansLayoutProvider, KMeansOptions
from stmod.testing import fresh_plugin_manager
from stmod.core.io.video import ClipPlan, FrameTransform, VideoInfo

FRAMES, GRID, HEADS, DIM = 6, 8, 2, 8
PROMPT = "a cat and a dog on the grass"
WORDS = {"a": (1, 4), "cat": (2,), "and": (3,), "dog": (5,), "on": (6,), "the": (7,), "grass": (8,)}


def test_cluster_features_recovers_planted_clusters() -> None:
    """Gaussian blobs of different sizes: ARI ≥ 0.9, and ids are numbered by size (0 = largest)."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), [900, 500, 350, 250])
    centres = rng.normal(size=(4, 64)) * 2.0
    x = centres[truth] + rng.normal(size=(truth.size, 64))
    labels = cluster_features(x, 4, pca=16, n_init=4, seed=0)
    assert adjusted_rand_score(truth, labels) >= 0.9
    assert list(np.bincount(labels)) == sorted(np.bincount(labels), reverse=True)
    assert np.array_equal(labels, cluster_features(x, 4, pca=16, n_init=4, seed=0))  # deterministic


def test_too_few_tokens_for_the_clusters() -> None:
    with pytest.raises(LayoutError, match="clusters: 5 is more than the 3 tokens"):
        cluster_features(np.zeros((3, 2)), 5)


def _clip(spec: EditSpec, frames: int = 3) -> ClipPlan:
    """The probe of a clip of ``frames`` frames at the edit size (the checks here read no file)."""
    width, height = spec.video.size
    info = VideoInfo(path=spec.video.path, kind="frames", frames=frames, height=height, width=width, fps=8.0)
    return ClipPlan(info=info, indices=tuple(range(frames)), transform=FrameTransform.for_source(spec.video, info))


def _scene() -> np.ndarray:
    """Object id per token, int ``(F, 8, 8)``: background 0, object 1 moving right, object 2 moving down."""
    ids = np.zeros((FRAMES, GRID, GRID), dtype=np.int64)
    for f in range(FRAMES):
        ids[f, 1:3, f:f + 3] = 1
        ids[f, f // 2 + 3:f // 2 + 5, 4:7] = 2
    return ids


def _recorded(ids: np.ndarray, *, reference_frames: int = 3) -> InversionFeatures:
    """Features recorded from planted attention: tokens of one object share query/key directions; each
    object's text token (cat → 1, dog → 2, grass → 0) has that object's key."""
    gen = torch.Generator().manual_seed(0)
    directions = torch.eye(DIM)[:3] * 4.0
    tokens = directions[torch.from_numpy(ids).reshape(FRAMES, 1, -1)].expand(FRAMES, HEADS, -1, DIM)
    q = tokens + 0.3 * torch.randn(tokens.shape, generator=gen)
    k = tokens + 0.3 * torch.randn(tokens.shape, generator=gen)
    text = torch.zeros(FRAMES, HEADS, 10, DIM)
    for position, obj in ((2, 1), (5, 2), (8, 0)):
        text[:, :, position] = directions[obj]
    recorder = InversionFeatureRecorder([FeatureRequest(level=0, reference_frames=reference_frames)],
                                        num_frames=FRAMES, latent_size=(GRID, GRID), budget_elements=500)
    for _ in range(3):  # e.g. three layers or steps: the running mean must not change planted structure
        assert recorder.wants(GRID * GRID)
        recorder.add_self(q, k)
        recorder.add_cross(q, text)
    return recorder.result(words=WORDS, prompt=PROMPT)


def test_recorder_features_cluster_moving_objects_consistently() -> None:
    """Joint K-Means over all frames recovers moving objects (ARI ≥ 0.9), with one label per object in every frame."""
    ids = _scene()
    maps = _recorded(ids).get(FeatureRequest(level=0, reference_frames=3))
    assert maps.self_rows.shape == (FRAMES, GRID, GRID, 3 * GRID * GRID)
    assert maps.cross.shape == (FRAMES, GRID, GRID, 10)
    assert maps.reference == (0, 2, 5) and maps.self_calls == maps.cross_calls == 3
    labels = cluster_features(torch.sqrt(maps.self_rows).reshape(-1, maps.self_rows.shape[-1]).numpy(), 3)
    labels = labels.reshape(ids.shape)
    assert adjusted_rand_score(ids.ravel(), labels.ravel()) >= 0.9
    for obj in range(3):
        per_frame = {int(np.bincount(labels[f][ids[f] == obj]).argmax()) for f in range(FRAMES)}
        assert len(per_frame) == 1, f"object {obj} changes label across frames: {per_frame}"


def test_naming_with_controlled_cross_attention() -> None:
    """A word names the cluster where its mean attention is highest; multi-token words are averaged."""
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    cross = np.zeros((8, 6))
    cross[labels == 1, 2] = 0.5  # "cat": strongest in cluster 1
    cross[labels == 0, 3] = 0.2  # "grass": in cluster 0
    cross[:, 3] += 0.01
    cross[labels == 2, 4] = 0.3  # "sky" = tokens 4 and 5: 0.3 + 0.1 in cluster 2, 0.0 + 0.6 in cluster 1
    cross[labels == 2, 5] = 0.1
    cross[labels == 1, 5] = 0.25
    named = name_clusters(cross, labels, {"cat": (2,), "grass": (3,), "sky": (4, 5), "none": ()}, 3)
    assert named == {"cat": 1, "grass": 0, "sky": 2}


def test_word_positions_follow_the_prompt(tiny_folder: Path) -> None:
    """Word → token positions from a real CLIP tokenizer, in order, every occurrence."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_folder / "tokenizer")
    positions = word_positions(tokenizer, "a cat and a dog")
    assert positions["a"] == (1, 4) and positions["cat"] == (2,) and positions["dog"] == (5,)
    assert word_positions(None, "a cat") == {} and word_positions(tokenizer, "") == {}


def _spec(regions: tuple[str, ...], source_prompt: str = PROMPT) -> EditSpec:
    return EditSpec(video=VideoSource(path=Path("clip.mp4"), size=(64, 64)), prompt="a tiger and a wolf",
                    source_prompt=source_prompt, regions=tuple(Region(name=r) for r in regions))


def _request(spec: EditSpec, features: InversionFeatures | None) -> LayoutRequest:
    return LayoutRequest(spec=spec, frame_indices=range(FRAMES), source_size=(64, 64), transform=None,
                         frames=np.zeros((FRAMES, 64, 64, 3), np.uint8), features=features)


def _provider(**options) -> KMeansLayoutProvider:
    return KMeansLayoutProvider(KMeansOptions(clusters=3, level=0, **options))


def test_provider_masks_from_words_ids_and_rest() -> None:
    """Words name clusters via cross-attention, ``rest`` takes the others; masks are the objects upsampled to pixels."""
    ids = _scene()
    features = _recorded(ids)
    spec = _spec(("cat", "pet", "background"))
    provider = _provider(assign={"pet": "dog"}, rest="background")
    provider.check(spec, spec.region_names, _clip(spec))  # "cat" is named by its own region name
    masks = provider.layout(_request(spec, features), spec.region_names)
    assert masks.names == ("cat", "pet", "background") and masks.masks.shape == (FRAMES, 3, 64, 64)
    pixels = ids.repeat(8, axis=1).repeat(8, axis=2)
    for k, obj in enumerate((1, 2, 0)):
        assert np.array_equal(masks.masks[:, k].numpy(), pixels == obj)
    result = provider.result
    assert result is not None and result.regions["background"] == (0,)
    assert "cat" in result.words[result.regions["cat"][0]] and "3 " not in " ".join(result.legend())
    # by id: the largest cluster (background, 0) for one region and both objects for the other
    ids_only = _provider(assign={"things": [1, 2], "bg": 0}).layout(_request(_spec(("things", "bg")), features),
                                                                      ("things", "bg"))
    assert np.array_equal(ids_only.masks[:, 0].numpy(), pixels > 0)


def test_two_regions_on_one_cluster_is_an_error() -> None:
    """Two words naming the same cluster: the error names both regions and both words."""
    spec = _spec(("cat", "animal"))
    provider = _provider(assign={"animal": "cat"})
    with pytest.raises(LayoutError, match=r"regions 'cat' \(word 'cat'\) and 'animal' \(word 'cat'\) both take"):
        provider.layout(_request(spec, _recorded(_scene())), spec.region_names)


def test_check_errors_name_the_bad_word_region_or_id() -> None:
    spec = _spec(("cat", "sky"))
    with pytest.raises(LayoutError, match=r"names the word 'giraffe', which is not in the source prompt "
                                          r"\(its words: a, cat, and, dog, on, the, grass\)"):
        _provider(assign={"sky": "giraffe"}).check(spec, spec.region_names, _clip(spec))
    with pytest.raises(LayoutError, match=r"region 'sky' has no clusters in layout 'kmeans': add assign: \{sky: "):
        _provider().check(spec, spec.region_names, _clip(spec))
    with pytest.raises(LayoutError, match="option assign names region 'tree', which this layout entry does not supply"):
        _provider(assign={"tree": 0, "sky": 1}).check(spec, spec.region_names, _clip(spec))
    with pytest.raises(LayoutError, match="no source_prompt"):
        _provider(assign={"cat": 0, "sky": "sky"}).check(_spec(("cat", "sky"), source_prompt=""), spec.region_names,
                                                         _clip(spec))
    registry = fresh_plugin_manager().registry
    with pytest.raises(ConfigError, match=r"names cluster 7, but clusters: 4 gives clusters 0 to 3"):
        registry.create("layout", "kmeans", {"assign": {"sky": [1, 7]}})
    with pytest.raises(ConfigError, match=r"'red car' is not one word; list words separately"):
        registry.create("layout", "kmeans", {"assign": {"sky": "red car"}})


def test_rest_without_clusters_and_missing_features() -> None:
    spec = _spec(("cat", "dog", "grass", "rest_"))
    with pytest.raises(LayoutError, match=r"region 'rest_' \(rest\) gets no cluster"):
        _provider(rest="rest_").layout(_request(spec, _recorded(_scene())), spec.region_names)
    with pytest.raises(LayoutError, match="needs attention features recorded during inversion"):
        _provider().layout(_request(_spec(("cat",)), None), ("cat",))
    with pytest.raises(LayoutError, match=r"no attention layer at UNet level 2 .*levels with attention: 0\)"):
        KMeansLayoutProvider(KMeansOptions(level=2)).layout(_request(_spec(("cat",)), _recorded(_scene())), ("cat",))


def test_modulator_must_record_features(clip: Path) -> None:
    """check_job refuses a K-Means layout with a modulator that cannot record inversion features."""
    from stmod.core.pipeline.components import check_job

    spec = EditSpec(video=VideoSource(path=clip, size=(64, 64)), prompt="a cat", source_prompt="a cat",
                    regions=(Region(name="cat"),), layout=(ComponentRef(name="kmeans"),),
                    modulator=ComponentRef(name="null"), backbone=ComponentRef(name="identity"))
    with pytest.raises(ConfigError, match=r"layout\[0\] \(kmeans\) needs attention features .* modulator 'null'"):
        check_job(spec, fresh_plugin_manager(stmod.testing).registry, check_output=False)
