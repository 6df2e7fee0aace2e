"""k-means clustering with a distance-ratio confidence."""

from __future__ import annotations

import logging

import numpy as np
from sklearn.cluster import KMeans

from senca.clustering._utils import ClusterResult, check_n_clusters, relabel_by_size

logger = logging.getLogger(__name__)


def fit_kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    seed: int = 0,
) -> ClusterResult:
    """Cluster rows of ``x`` with k-means (Euclidean, features used as given).

    Parameters
    ----------
    x
        ``(n_spots, n_features)`` finite array.
    n_clusters
        Number of clusters (required: k-means has no model-selection criterion of its own).
    n_init
        k-means++ restarts; the lowest inertia is kept.
    max_iter
        Maximum Lloyd iterations per restart.
    seed
        Random state.

    Returns
    -------
    :class:`ClusterResult` with ``centers`` = k-means centroids and
    ``confidence = 1 - d1 / d2``, where ``d1`` and ``d2`` are the distances to the nearest and
    second-nearest centroid: 1 at a centroid, 0 on the boundary between two clusters.
    """
    k = check_n_clusters(n_clusters, x.shape[0])
    model = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
    dist = model.transform(x)  # (n, k): fine, k is small
    two = np.partition(dist, 1, axis=1)[:, :2]
    d1, d2 = two[:, 0], two[:, 1]
    confidence = np.zeros(len(x))
    np.divide(d1, d2, out=confidence, where=d2 > 0)
    confidence = np.where(d2 > 0, 1.0 - confidence, 0.0)

    labels, order = relabel_by_size(model.labels_)
    return ClusterResult(
        labels=labels,
        confidence=np.clip(confidence, 0.0, 1.0),
        n_clusters=len(order),
        centers=model.cluster_centers_[order],
        model=model,
    )
