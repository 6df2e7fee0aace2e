"""Leiden clustering on a kNN graph of the representation, with a resolution search for k."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from senca.clustering._utils import (
    ClusterResult,
    check_n_clusters,
    knn_graph,
    neighbour_agreement,
    relabel_by_size,
    symmetrize,
)
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)


def leiden_partition(graph: sp.spmatrix, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden partition (RB-configuration / modularity objective) of an undirected graph.

    Parameters
    ----------
    graph
        Symmetric sparse adjacency matrix; edge weights are used, the diagonal is ignored.
    resolution
        Resolution parameter (higher gives more, smaller communities).
    seed
        Seed of leidenalg's random number generator.

    Returns
    -------
    Integer community id per node (leidenalg's numbering).
    """
    upper = sp.triu(graph, k=1).tocoo()
    # Imported here: igraph loads matplotlib's pyplot (about 0.6 s), which every process that
    # imports senca's clustering (the restart processes included) would pay without using Leiden.
    import igraph
    import leidenalg

    g = igraph.Graph(n=graph.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist())
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=upper.data.astype(float).tolist(),
        resolution_parameter=float(resolution),
        # iterate until stable: the cluster count becomes a steadier function of resolution
        n_iterations=-1,
        seed=int(seed),
    )
    return np.asarray(part.membership, dtype=np.int64)


def fit_leiden(
    x: np.ndarray,
    n_clusters: int | None = None,
    *,
    n_neighbors: int = 15,
    resolution: float = 1.0,
    max_steps: int = 30,
    seed: int = 0,
) -> ClusterResult:
    """Leiden clustering of the rows of ``x`` on their kNN graph.

    Parameters
    ----------
    x
        ``(n_spots, n_features)`` finite array.
    n_clusters
        Target number of clusters. ``None``: one run at ``resolution``. Otherwise a search on
        the resolution: starting at ``resolution``, it is doubled until there are at least
        ``n_clusters`` clusters, then bisected until there are exactly ``n_clusters``. If
        ``max_steps`` Leiden runs do not hit ``n_clusters`` (the count is not strictly monotone
        in the resolution, and cannot fall below the number of connected components), a
        warning is logged and the run whose count is closest to ``n_clusters`` is returned.
    n_neighbors
        Neighbours per spot in the kNN graph (Euclidean); the graph is symmetrised (binary).
    resolution
        Resolution of the single run, or the starting point of the search.
    max_steps
        Maximum number of Leiden runs in the search.
    seed
        Seed for leidenalg.

    Returns
    -------
    :class:`ClusterResult` with ``resolution`` set and
    ``confidence`` = fraction of each spot's ``n_neighbors`` nearest neighbours (in ``x``)
    that share its label.
    """
    n = x.shape[0]
    if resolution <= 0:
        raise SencaInputError(f"resolution={resolution!r}: expected a positive number")
    if max_steps < 1:
        raise SencaInputError(f"max_steps={max_steps!r}: expected an integer >= 1")
    directed = knn_graph(x, n_neighbors)
    graph = symmetrize(directed)

    if n_clusters is None:
        raw = leiden_partition(graph, resolution, seed)
        used = float(resolution)
    else:
        k = check_n_clusters(n_clusters, n)
        raw, used = _search_resolution(graph, k, resolution, max_steps, seed)

    labels, order = relabel_by_size(raw)
    return ClusterResult(
        labels=labels,
        confidence=neighbour_agreement(directed, labels),
        n_clusters=len(order),
        resolution=used,
    )


def _search_resolution(
    graph: sp.csr_matrix, k: int, start: float, max_steps: int, seed: int
) -> tuple[np.ndarray, float]:
    best: tuple[int, np.ndarray, float] | None = None  # (|count - k|, labels, resolution)
    steps = 0
    bar = tqdm(total=max_steps, desc=f"Leiden resolution search (k={k})", leave=False)

    def run(res: float) -> int:
        nonlocal best, steps
        labels = leiden_partition(graph, res, seed)
        count = len(np.unique(labels))
        steps += 1
        bar.update(1)
        logger.debug("Leiden resolution %.6g -> %d clusters", res, count)
        if best is None or abs(count - k) < best[0]:
            best = (abs(count - k), labels, res)
        return count

    try:
        lo, hi = 0.0, float(start)
        count = run(hi)
        while count < k and steps < max_steps:  # grow until the upper end has >= k clusters
            lo, hi = hi, hi * 2.0
            count = run(hi)
        while count != k and steps < max_steps:
            mid = 0.5 * (lo + hi)
            count = run(mid)
            if count < k:
                lo = mid
            elif count > k:
                hi = mid
    finally:
        bar.close()

    diff, labels, res = best
    if diff:
        logger.warning(
            "Leiden: no resolution gave exactly %d clusters in %d runs; using resolution %.6g "
            "with %d clusters (the closest found)",
            k, steps, res, len(np.unique(labels)),
        )
    else:
        logger.info("Leiden: resolution %.6g gives %d clusters", res, k)
    return labels, res
