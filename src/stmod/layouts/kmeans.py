"""The ``kmeans`` layout provider: regions found by clustering self-attention features (paper App. B).

No masks are needed. During DDIM inversion the ``st-layout`` engine records, for every token of one
UNet level, its self-attention row over a few reference frames and its cross-attention over the
source prompt (:mod:`stmod.core.features`); K-Means clusters the tokens of **all frames jointly**
(so a cluster is the same thing in every frame), and the job says which clusters make which region.
Labels are upsampled to pixels by nearest sampling, so mask edges follow the level's grid (16-pixel
cells at the default level 1 for 512² edits; ``level: 0`` halves that).

Example job entries::

    layout:
      - name: masks            # the man from mask files ...
        dir: masks/
        regions: [man]
      - name: kmeans           # ... everything else from K-Means
        clusters: 4
        assign: {trees: tree, sky: [2, 3]}
        rest: background

**How a region gets its clusters** (``assign`` maps region → a word, a cluster id, or a list of both):

* a cluster id: clusters are numbered by size, 0 = the largest; ``stmod-run layout`` writes
  ``clusters.mp4`` showing every cluster with its id and the words that name it;
* a word of the source prompt: the cluster where that word's mean cross-attention is highest (the
  *naming rule*; official code: NLTK nouns, per frame);
* a region missing from ``assign`` whose name is a word of the source prompt is named by that word;
* ``rest: REGION`` gives that region every cluster that no other region of this entry takes.

A cluster belongs to at most one region of an entry: two regions that end up with the same cluster
(e.g. two words naming one cluster) are an error that names both and suggests cluster ids.

**On a transformer backbone** (``wan``): every block attends at one grid, Wan's token grid (the 2×2
patch: 16-pixel cells, ``level: 1``, the default and the only level there); ``block`` picks the block
whose attention is recorded (default: the middle one, block 15 of the 1.3B's 30, 20 of the 14B's 40).
Features are per latent frame; each clip frame takes its latent frame's labels (Wan: frame 0 alone,
then groups of four), so a cluster's mask changes every four frames there.

**Cache:** the features are stored with the inversion in the inversion cache (key includes
``level``, ``reference_frames`` and a ``block`` that is set), so trying another ``clusters`` count does
not invert again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from attrs import field, frozen, validators

from stmod.core.errors import LayoutError
from stmod.core.features import FeatureRequest, InversionFeatures, prompt_words
from stmod.core.types import MAX_LEVEL, MAX_SEED, EditSpec, LayoutMasks, LayoutReport, LayoutRequest, number
from stmod.layouts.clustering import cluster_self_rows, cluster_words, name_clusters, upsample_labels
from stmod.core.pipeline.compose import empty_layout
from stmod.core.io.video import ClipPlan

__all__ = ["KMeansOptions", "KMeansLayoutProvider", "ClusterResult", "upsample_labels"]

log = logging.getLogger(__name__)

#: One entry of ``assign``: a cluster id or a (lower-cased) word of the source prompt.
Pick = int | str


def _picks(region: str, value: Any) -> tuple[Pick, ...]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"assign: region {region!r} has an empty list; give a word or a cluster id")
    picks: list[Pick] = []
    for item in items:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item.strip())
        if isinstance(item, int) and not isinstance(item, bool):
            picks.append(item)
        elif isinstance(item, str) and prompt_words(item) == [item.strip().lower()]:
            picks.append(item.strip().lower())
        elif isinstance(item, str):
            raise ValueError(f"assign: region {region!r}: {item!r} is not one word; list words separately, "
                             "e.g. [red, car]")
        else:
            raise ValueError(f"assign: region {region!r}: {item!r} must be a word of the source prompt or a "
                             "cluster id")
    return tuple(picks)


def _assign_table(value: Mapping[Any, Any] | None) -> dict[str, tuple[Pick, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"assign must map region names to a word, a cluster id or a list of them, "
                         f"e.g. {{trees: tree, man: [0, 2]}}; got {value!r}")
    return {str(region): _picks(str(region), item) for region, item in value.items()}


@frozen(kw_only=True)
class KMeansOptions:
    """Options of the ``kmeans`` layout provider (see the module docs)."""

    #: Number of K-Means clusters (over all frames jointly).
    clusters: int = number(4, low=2, high=64)
    #: ``{region: word | cluster id | [words and ids]}``.
    assign: Mapping[str, tuple[Pick, ...]] = field(factory=dict, converter=_assign_table)
    #: A region that takes every cluster no other region of this entry takes.
    rest: str | None = None
    #: UNet level of the features: 0 = latent grid (64² at 512²), 1 = half (32², the official choice; on wan
    #: the only level: its token grid).
    level: int = number(1, low=0, high=MAX_LEVEL)
    #: Transformer backbones (``wan``): the block whose attention is recorded (``None``: the middle block).
    block: int | None = number(None, low=0, high=1000)
    #: Frames (evenly spaced) whose keys the self-attention rows are taken over.
    reference_frames: int = number(3, low=1, high=64)
    #: Principal components kept before K-Means (0: none).
    pca: int = number(32, low=0, high=4096)
    #: K-Means restarts; the best one wins.
    n_init: int = number(10, low=1, high=1000)
    #: ``random_state`` of PCA and K-Means.
    seed: int = number(0, low=0, high=MAX_SEED)

    def __attrs_post_init__(self) -> None:
        for region, picks in self.assign.items():
            for pick in picks:
                if isinstance(pick, int) and not 0 <= pick < self.clusters:
                    raise ValueError(f"assign: region {region!r} names cluster {pick}, but clusters: {self.clusters} "
                                     f"gives clusters 0 to {self.clusters - 1}")
        if self.rest is not None and self.rest in self.assign:
            raise ValueError(f"rest: region {self.rest!r} is also in assign; give it either")


@frozen(kw_only=True)
class ClusterResult:
    """What one ``kmeans`` layout found, for reports (``stmod-run layout`` writes ``clusters.mp4``).

    :ivar labels: int64 ``(F, h, w)`` cluster of every token, ids in ``[0, clusters)`` by size.
    :ivar words: per cluster, the source-prompt words whose attention is highest there.
    :ivar regions: ``{region: its cluster ids}``.
    """

    labels: np.ndarray = field(eq=False)
    words: tuple[tuple[str, ...], ...]
    regions: Mapping[str, tuple[int, ...]]

    @property
    def clusters(self) -> int:
        return len(self.words)

    def fractions(self) -> list[float]:
        """Share of all tokens (all frames) in each cluster."""
        counts = np.bincount(self.labels.ravel(), minlength=self.clusters)
        return [float(c) / self.labels.size for c in counts]

    def legend(self) -> list[str]:
        """One label per cluster, e.g. ``"2 tree > trees"`` (id, naming words, region)."""
        owner = {c: r for r, ids in self.regions.items() for c in ids}
        return [f"{c} {' '.join(self.words[c]) or '-'}" + (f" > {owner[c]}" if c in owner else "")
                for c in range(self.clusters)]

    def report(self, height: int, width: int) -> LayoutReport:
        """The clusters as a :class:`~stmod.core.types.LayoutReport` at the edit's pixel size."""
        pixels = upsample_labels(self.labels, height, width)
        masks = pixels[:, None] == np.arange(self.clusters)[None, :, None, None]
        return LayoutReport(masks=masks, legend=tuple(self.legend()), table=tuple(self.summary()))

    def summary(self) -> list[dict[str, Any]]:
        """JSON-ready table: id, share of tokens, naming words, region."""
        owner = {c: r for r, ids in self.regions.items() for c in ids}
        return [{"id": c, "fraction": round(f, 4), "words": list(self.words[c]), "region": owner.get(c)}
                for c, f in enumerate(self.fractions())]


def _via(pick: Pick) -> str:
    return f"word {pick!r}" if isinstance(pick, str) else "its id"


class KMeansLayoutProvider:
    """The ``kmeans`` layout provider (see the module docs)."""

    def __init__(self, options: KMeansOptions) -> None:
        self.options = options
        self.feature_request = FeatureRequest(level=options.level, reference_frames=options.reference_frames,
                                              block=options.block)
        #: What the last :meth:`layout` call found (``None`` before).
        self.result: ClusterResult | None = None

    def _plan(self, spec: EditSpec, regions: Sequence[str]) -> dict[str, tuple[Pick, ...] | None]:
        """``{region: picks}`` (``None``: the rest); raises on names, words or regions that do not fit."""
        opts, supplied = self.options, ", ".join(regions) or "none"
        for name in [*opts.assign, *([opts.rest] if opts.rest else [])]:
            if name not in regions:
                raise LayoutError(f"layout 'kmeans' option {'rest' if name == opts.rest else 'assign'} names region "
                                  f"{name!r}, which this layout entry does not supply (it supplies: {supplied})",
                                  region=name)
        words = prompt_words(spec.source_prompt)
        plan: dict[str, tuple[Pick, ...] | None] = {}
        for region in regions:
            if region == opts.rest:
                plan[region] = None
            elif region in opts.assign:
                plan[region] = opts.assign[region]
            elif region.lower() in words:
                plan[region] = (region.lower(),)
            else:
                raise LayoutError(
                    f"region {region!r} has no clusters in layout 'kmeans': add assign: {{{region}: <word of the "
                    f"source prompt or cluster id 0-{opts.clusters - 1}>}} or rest: {region}", region=region)
            for pick in plan[region] or ():
                if isinstance(pick, str) and pick not in words:
                    known = ", ".join(dict.fromkeys(words)) if words else "none: the job has no source_prompt"
                    raise LayoutError(f"layout 'kmeans': region {region!r} names the word {pick!r}, which is not in "
                                      f"the source prompt (its words: {known}); use one of them or a cluster id "
                                      f"0-{opts.clusters - 1}", region=region)
        return plan

    def check(self, spec: EditSpec, regions: Sequence[str], clip: ClipPlan) -> None:
        """Validate ``assign`` and ``rest`` against the entry's regions and the source prompt's words, and
        ``clusters`` against the tokens there will be (before the inversion that records them)."""
        self._plan(spec, regions)
        frames = len(clip.indices)
        if regions:
            width, height = spec.video.size
            # SD-family latents are 1/8 of the pixel size; the level then halves them (core.levels)
            grid = self.feature_request.grid((height // 8, width // 8))
            tokens = frames * grid[0] * grid[1]
            if tokens < self.options.clusters:
                raise LayoutError(f"layout 'kmeans' clusters: {self.options.clusters} is more than the {tokens} "
                                  f"tokens to cluster ({frames} frames of {grid[0]}x{grid[1]} at level "
                                  f"{self.options.level}); ask for fewer clusters or a finer level")

    def _resolve(self, plan: Mapping[str, tuple[Pick, ...] | None], named: Mapping[str, int],
                 features: InversionFeatures) -> dict[str, tuple[int, ...]]:
        """``{region: cluster ids}`` from the plan; words through ``named``; the rest last."""
        taken: dict[int, tuple[str, Pick]] = {}
        out: dict[str, tuple[int, ...]] = {}
        for region, picks in plan.items():
            if picks is None:
                continue
            ids: list[int] = []
            for pick in picks:
                if isinstance(pick, str):
                    if pick not in named:
                        raise LayoutError(f"layout 'kmeans': region {region!r}: the word {pick!r} has no tokens of its "
                                          f"own in {features.prompt!r} (the tokenizer splits it differently there); "
                                          "use a cluster id", region=region)
                    cluster = named[pick]
                else:
                    cluster = pick
                if cluster in taken and taken[cluster][0] != region:
                    other, how = taken[cluster]
                    raise LayoutError(f"regions {other!r} ({_via(how)}) and {region!r} ({_via(pick)}) both take "
                                      f"cluster {cluster}; name clusters by id instead (stmod-run layout writes "
                                      "clusters.mp4)", region=region)
                taken[cluster] = (region, pick)
                if cluster not in ids:
                    ids.append(cluster)
            out[region] = tuple(ids)
        for region, picks in plan.items():
            if picks is None:
                out[region] = tuple(c for c in range(self.options.clusters) if c not in taken)
                if not out[region]:
                    raise LayoutError(f"region {region!r} (rest) gets no cluster: the other regions of layout 'kmeans' "
                                      f"take all {self.options.clusters}; ask for more clusters", region=region)
        return {region: out[region] for region in plan}

    def report(self, height: int, width: int) -> LayoutReport | None:
        """The clusters the last :meth:`layout` call found, for ``stmod-run layout`` (``None`` before)."""
        return self.result.report(height, width) if self.result is not None else None

    def layout(self, request: LayoutRequest, regions: Sequence[str]) -> LayoutMasks:
        """Bool ``(F, K, H, W)`` masks for ``regions``, from ``request.features`` (see the module docs)."""
        frames = np.asarray(request.frames)
        height, width = frames.shape[1:3]
        if not regions:
            return empty_layout(frames.shape[0], height, width)
        features = request.features
        if not isinstance(features, InversionFeatures):
            raise LayoutError("layout 'kmeans' needs attention features recorded during inversion; run it through "
                              "the Editor (stmod-run edit or stmod-run layout)")
        plan = self._plan(request.spec, regions)
        maps = features.get(self.feature_request)
        opts = self.options
        labels = cluster_self_rows(maps.self_rows.numpy(), opts.clusters, pca=opts.pca, n_init=opts.n_init, seed=opts.seed)
        named = name_clusters(maps.cross.reshape(labels.size, -1).numpy(), labels.reshape(-1), features.words,
                              opts.clusters)
        assigned = self._resolve(plan, named, features)
        labels = features.per_clip_frame(labels)  # per latent frame → per clip frame (after naming: rows align)
        self.result = ClusterResult(labels=labels, words=tuple(map(tuple, cluster_words(named, opts.clusters))),
                                    regions=assigned)
        for line in self.result.summary():
            log.info("kmeans cluster %(id)d: %(fraction).0f%% of tokens, words %(words)s, region %(region)s",
                     {**line, "fraction": 100 * line["fraction"]})
        pixels = upsample_labels(labels, height, width)
        stacks = []
        for region, ids in assigned.items():
            mask = np.isin(pixels, ids)
            if not mask.any():
                raise LayoutError(f"region {region!r}: cluster(s) {list(ids)} are empty (K-Means found fewer distinct "
                                  f"groups than clusters: {opts.clusters}); ask for fewer clusters", region=region)
            stacks.append(mask)
        return LayoutMasks(masks=torch.from_numpy(np.stack(stacks, axis=1)), names=tuple(assigned))
