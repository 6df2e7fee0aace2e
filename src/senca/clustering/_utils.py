"""Shared helpers for the clustering functions: input checks, relabelling, kNN graphs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from sklearn.neighbors import NearestNeighbors

from senca.errors import SencaInputError
from senca.graph import section_codes, sectioned_graph

logger = logging.getLogger(__name__)


@dataclass
class ClusterResult:
    """Array-level result of one clustering run.

    Attributes
    ----------
    labels
        Integer labels ``0..k-1``, relabelled by cluster size (largest first, ties by first
        appearance), shape ``(n_spots,)``.
    confidence
        Per-spot confidence in ``[0, 1]`` (its meaning depends on the method).
    n_clusters
        Number of clusters found.
    centers
        ``(k, n_features)`` cluster centres in the input space, row ``j`` for label ``j``
        (``None`` for Leiden).
    bic
        BIC per tried ``k`` (GMM only; keys are strings so the dict can be written to h5ad).
    resolution
        Leiden resolution used (Leiden only).
    model
        The fitted estimator, where there is one (GMM, k-means).
    """

    labels: np.ndarray
    confidence: np.ndarray
    n_clusters: int
    centers: np.ndarray | None = None
    bic: dict[str, float] = field(default_factory=dict)
    resolution: float | None = None
    model: object | None = None


def get_representation(adata: AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` (``adata.X`` for ``use_rep="X"``) as a finite float64 array.

    Raises
    ------
    SencaInputError
        If the key is missing, or the array is not numeric or holds NaN/inf. (AnnData itself
        guarantees one row per spot.)
    """
    if use_rep == "X":
        rep = adata.X
        where = "adata.X"
    else:
        if use_rep not in adata.obsm:
            available = ", ".join(repr(k) for k in adata.obsm.keys()) or "none"
            raise SencaInputError(
                f"adata.obsm has no key {use_rep!r}: expected the representation to cluster "
                f"(an n_spots x n_features array); available obsm keys: {available}"
            )
        rep = adata.obsm[use_rep]
        where = f"adata.obsm[{use_rep!r}]"
    if sp.issparse(rep):
        rep = rep.toarray()
    try:
        rep = np.asarray(rep, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SencaInputError(
            f"{where} is not numeric: expected an n_spots x n_features array of numbers"
        ) from err
    n_bad = int(np.count_nonzero(~np.isfinite(rep)))
    if n_bad:
        raise SencaInputError(
            f"{where} contains {n_bad} NaN or infinite values: expected finite numbers"
        )
    return rep


def check_n_clusters(n_clusters: int, n_spots: int, field: str = "n_clusters") -> int:
    """Validate a requested number of clusters: an integer in ``[2, n_spots]``."""
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise SencaInputError(f"{field}={n_clusters!r}: expected an integer >= 2")
    if n_clusters < 2 or n_clusters > n_spots:
        raise SencaInputError(
            f"{field}={n_clusters}: expected an integer between 2 and the number of spots "
            f"({n_spots})"
        )
    return int(n_clusters)


def relabel_by_size(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel clusters ``0..k-1`` by size, largest first; ties broken by first appearance.

    Parameters
    ----------
    labels
        Integer cluster ids, any values.

    Returns
    -------
    new_labels
        Labels in ``0..k-1``.
    order
        ``order[new] = old``: the original id of each new label (used to permute centres).
    """
    uniq, first, inverse, counts = np.unique(
        labels, return_index=True, return_inverse=True, return_counts=True
    )
    # lexsort sorts by the last key first: size descending, then first appearance ascending.
    rank = np.lexsort((first, -counts))
    new_of_old = np.empty(len(uniq), dtype=np.int64)
    new_of_old[rank] = np.arange(len(uniq))
    return new_of_old[inverse.ravel()], uniq[rank]


def knn_graph(x: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """Directed kNN graph (binary CSR, no self loops) of the rows of ``x``.

    Each row has exactly ``min(n_neighbors, n - 1)`` entries. Duplicate points are handled:
    a point is never its own neighbour even when another point has the same coordinates.
    """
    n = x.shape[0]
    k = min(int(n_neighbors), n - 1)
    if k < 1:
        raise SencaInputError(
            f"n_neighbors={n_neighbors} with {n} spots: expected at least 2 spots and "
            "n_neighbors >= 1"
        )
    nn = NearestNeighbors(n_neighbors=k).fit(x)
    # X=None queries the training points and excludes each point itself (by index, not distance).
    graph = nn.kneighbors_graph(X=None, n_neighbors=k, mode="connectivity")
    return graph.astype(np.float32).tocsr()


def symmetrize(graph: sp.spmatrix) -> sp.csr_matrix:
    """Binary symmetric version of ``graph`` (edge if either direction exists), no self loops."""
    sym = ((graph + graph.T) > 0).astype(np.float32).tocsr()
    sym.setdiag(0)
    sym.eliminate_zeros()
    return sym


def spatial_neighbours(adata: AnnData, n_neighbors: int = 6, library_key: str | None = None) -> sp.csr_matrix:
    """Spatial neighbour graph of the spots, as CSR without self loops.

    Uses ``adata.obsp["spatial_connectivities"]`` when present; otherwise a symmetric kNN
    graph on ``adata.obsm["spatial"]`` (:func:`senca.graph.neighbour_graph`; 6 neighbours
    match the hexagonal Visium lattice), built per section of ``obs[library_key]`` when given
    so that no spot's neighbours lie in another section. Nothing is written to ``adata``.
    """
    if "spatial_connectivities" in adata.obsp:
        graph = sp.csr_matrix(adata.obsp["spatial_connectivities"], dtype=np.float32)
        graph.setdiag(0)
        graph.eliminate_zeros()
        return graph
    if "spatial" not in adata.obsm:
        raise SencaInputError(
            "adata has neither obsp['spatial_connectivities'] nor obsm['spatial']: expected a "
            "spatial graph or (n_spots, 2) spot coordinates"
        )
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] != adata.n_obs or not np.all(np.isfinite(coords)):
        raise SencaInputError(
            f"adata.obsm['spatial'] has shape {coords.shape} or non-finite values: expected "
            f"finite (n_spots={adata.n_obs}, 2) coordinates"
        )
    logger.info(
        "obsp['spatial_connectivities'] not found; using a %d-nearest-neighbour graph on "
        "obsm['spatial']",
        n_neighbors,
    )
    return sectioned_graph(coords, section_codes(adata, library_key)[1], "knn", n_neighbors=n_neighbors)[0]


def neighbour_label_counts(graph: sp.spmatrix, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """``(n, n_labels)`` weighted count of each label among every spot's graph neighbours.

    One sparse product, O(edges); ``n x n_labels`` is small because ``n_labels`` is.
    """
    onehot = sp.csr_matrix(
        (np.ones(len(labels), dtype=np.float64), (np.arange(len(labels)), labels)),
        shape=(len(labels), n_labels),
    )
    return np.asarray((sp.csr_matrix(graph, dtype=np.float64) @ onehot).toarray())


def neighbour_agreement(graph: sp.spmatrix, labels: np.ndarray) -> np.ndarray:
    """Fraction of each spot's graph neighbours (by weight) sharing its label; 0 if it has none."""
    counts = neighbour_label_counts(graph, labels, int(labels.max()) + 1)
    same = counts[np.arange(len(labels)), labels]
    total = counts.sum(axis=1)
    out = np.zeros(len(labels))
    np.divide(same, total, out=out, where=total > 0)
    return out
