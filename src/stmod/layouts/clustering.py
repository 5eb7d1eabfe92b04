"""Pure functions behind the ``kmeans`` layout: joint clustering of tokens and naming clusters by words.

* :func:`cluster_features` — K-Means (scikit-learn, optionally after PCA) over the tokens of *all*
  frames at once, so a cluster id means the same thing in every frame; ids are renumbered by size
  (0 = the largest cluster), so they do not depend on K-Means' arbitrary numbering.
* :func:`word_cluster_scores` / :func:`name_clusters` — the naming rule: a word of the source prompt
  names the cluster where its mean cross-attention (over the cluster's tokens, all frames) is highest.

No torch, no files: numpy in, numpy out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stmod.core.errors import LayoutError

__all__ = ["cluster_features", "cluster_self_rows", "word_cluster_scores", "name_clusters", "cluster_words",
           "refine_to_object", "upsample_labels"]


def cluster_features(features: np.ndarray, n_clusters: int, *, pca: int = 32, n_init: int = 10,
                     seed: int = 0) -> np.ndarray:
    """Cluster ``M`` tokens described by ``D`` features each into ``n_clusters`` groups.

    :param features: float ``(M, D)``: one row per token of every frame (frames stacked).
    :param pca: reduce to this many principal components first (``0``: no PCA; capped at ``min(M, D)``).
    :param n_init: K-Means restarts (the best inertia wins). ``seed``: ``random_state`` of PCA and K-Means.
    :returns: int64 ``(M,)`` labels in ``[0, n_clusters)``, renumbered by cluster size, largest first
        (ties: the cluster whose first token comes first). With fewer distinct rows than clusters,
        the largest ids stay empty.
    :raises LayoutError: when there are fewer tokens than clusters.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (tokens, dims), got shape {x.shape}")
    if x.shape[0] < n_clusters:
        raise LayoutError(f"clusters: {n_clusters} is more than the {x.shape[0]} tokens to cluster; "
                          "ask for fewer clusters or a finer level")
    components = min(pca, x.shape[0], x.shape[1])
    if 0 < pca and components < x.shape[1]:
        x = PCA(n_components=components, random_state=seed).fit_transform(x)
    raw = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit_predict(x)
    sizes = np.bincount(raw, minlength=n_clusters)
    first = np.array([np.argmax(raw == c) if sizes[c] else raw.size for c in range(n_clusters)])
    order = sorted(range(n_clusters), key=lambda c: (-sizes[c], first[c]))
    renumber = np.empty(n_clusters, dtype=np.int64)
    renumber[order] = np.arange(n_clusters)
    return renumber[raw]


def cluster_self_rows(self_rows: np.ndarray, n_clusters: int, *, pca: int = 32, n_init: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster the tokens of recorded self-attention rows: float ``(F, h, w, D)`` → int64 labels ``(F, h, w)``.

    Rows are probability distributions; Euclidean distance between their square roots is the
    Hellinger distance, which suits K-Means better than raw probabilities.
    """
    rows = np.sqrt(np.clip(np.asarray(self_rows, dtype=np.float32), 0, None))
    f, h, w = rows.shape[:3]
    return cluster_features(rows.reshape(f * h * w, -1), n_clusters, pca=pca, n_init=n_init, seed=seed).reshape(f, h, w)


def word_cluster_scores(cross: np.ndarray, labels: np.ndarray, positions: Sequence[int], n_clusters: int) -> np.ndarray:
    """Mean cross-attention of one word in each cluster.

    :param cross: float ``(M, T)``: each token's attention over the ``T`` text positions.
    :param labels: int ``(M,)`` cluster of each token.
    :param positions: the word's text positions (a word may span several tokens; they are averaged).
    :returns: float64 ``(n_clusters,)``; ``-inf`` for an empty cluster.
    """
    attention = np.asarray(cross, dtype=np.float64)[:, list(positions)].mean(axis=1)  # (M,)
    sums = np.bincount(labels, weights=attention, minlength=n_clusters)
    counts = np.bincount(labels, minlength=n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), -np.inf)


def name_clusters(cross: np.ndarray, labels: np.ndarray, words: Mapping[str, Sequence[int]],
                  n_clusters: int) -> dict[str, int]:
    """``{word: cluster}``: each word names the cluster where its mean attention is highest.

    Ties go to the lower (larger) cluster id. Words with no positions are left out.
    """
    return {word: int(np.argmax(word_cluster_scores(cross, labels, positions, n_clusters)))
            for word, positions in words.items() if len(positions)}


def cluster_words(named: Mapping[str, int], n_clusters: int) -> list[list[str]]:
    """Per cluster id, the words that name it (in prompt order): the inverse of :func:`name_clusters`."""
    table: list[list[str]] = [[] for _ in range(n_clusters)]
    for word, cluster in named.items():
        table[cluster].append(word)
    return table


def refine_to_object(box: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The part of a box that belongs to the object it frames: the box ∩ the clusters inside it.

    A cluster counts as the object's when at least half of its pixels (over all frames) lie inside the
    box — background clusters spread far beyond it; when none does, the cluster with the largest
    inside share is taken.

    :param box: bool ``(F, H, W)`` box masks of one region.
    :param labels: int ``(F, H, W)`` cluster labels at the same pixels.
    :returns: bool ``(F, H, W)``, a subset of ``box``.
    """
    ids = np.unique(labels[box])
    if ids.size == 0:
        return np.zeros_like(box)
    inside = np.array([np.count_nonzero(labels[box] == c) for c in ids], dtype=np.float64)
    total = np.array([np.count_nonzero(labels == c) for c in ids], dtype=np.float64)
    share = inside / total
    chosen = ids[share >= 0.5] if (share >= 0.5).any() else ids[[int(np.argmax(share))]]
    return box & np.isin(labels, chosen)


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(F, h, w)`` → ``(F, height, width)`` by nearest sampling (cell ``floor(i·h/height)``)."""
    rows = np.minimum(np.arange(height) * labels.shape[1] // height, labels.shape[1] - 1)
    cols = np.minimum(np.arange(width) * labels.shape[2] // width, labels.shape[2] - 1)
    return labels[:, rows][:, :, cols]
