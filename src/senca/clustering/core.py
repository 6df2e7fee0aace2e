"""The one clustering entry point over AnnData: ``senca.tl.cluster``."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from senca.clustering._utils import (
    ClusterResult,
    check_n_clusters,
    get_representation,
    neighbour_agreement,
    relabel_by_size,
    spatial_neighbours,
)
from senca.clustering.gmm import ScaleMode, fit_gmm
from senca.clustering.k_selection import K_RANGE
from senca.clustering.kmeans import fit_kmeans
from senca.clustering.leiden import fit_leiden
from senca.clustering.refine import refine_labels
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

METHODS = ("gmm", "kmeans", "leiden")


def cluster(
    adata: AnnData,
    use_rep: str = "X_senca",
    method: Literal["gmm", "kmeans", "leiden"] = "gmm",
    n_clusters: int | None = None,
    *,
    refine: bool = False,
    refine_neighbors: int = 6,
    k_range: tuple[int, int] = K_RANGE,
    scale: ScaleMode = "standardize",
    n_neighbors: int = 15,
    resolution: float = 1.0,
    seed: int = 0,
    key_added: str = "senca_region",
    library_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Find tissue regions by clustering a per-spot representation.

    Parameters
    ----------
    adata
        Annotated data with the representation in ``obsm[use_rep]``.
    use_rep
        ``obsm`` key to cluster (``"X"`` clusters ``adata.X``), e.g. ``"X_senca"`` or ``"X_pca"``.
    method
        ``"gmm"``: Gaussian mixture with one shared full covariance (mclust ``EEE``), see
        :func:`~senca.clustering.fit_gmm`; confidence = maximum posterior.
        ``"kmeans"``: see :func:`~senca.clustering.fit_kmeans`; confidence = ``1 - d1/d2``
        (nearest / second-nearest centroid distance); needs ``n_clusters``.
        ``"leiden"``: Leiden on a kNN graph of the representation, resolution searched to give
        ``n_clusters``, see :func:`~senca.clustering.fit_leiden`; confidence = fraction of
        kNN neighbours sharing the label.
    n_clusters
        Number of regions. ``None``: chosen over ``k_range`` by the supported elbow of the BIC
        curve (gmm, :func:`~senca.clustering.select_k`), one run at
        ``resolution`` (leiden); required for kmeans.
    refine
        Spatial refinement after clustering (:func:`~senca.clustering.refine_labels`): a spot
        whose label is held by fewer than half of its spatial neighbours takes the label held
        by more than half. Relabelled spots get confidence = fraction of their spatial
        neighbours that share the new label.
    refine_neighbors
        Neighbours per spot for the refinement graph when ``obsp["spatial_connectivities"]``
        is absent (kNN on ``obsm["spatial"]``); ignored when that graph exists.
    k_range
        ``(k_min, k_max)`` searched (gmm with ``n_clusters=None``); the same range as the
        model's (:data:`senca.clustering.K_RANGE`).
    scale
        Feature scaling for gmm: ``"standardize"``, ``"whiten"`` or ``"none"``.
    n_neighbors
        kNN graph size for leiden.
    resolution
        Leiden resolution (single run) or search start.
    seed
        Random seed; the same seed gives the same regions.
    key_added
        Name of the ``obs`` column and ``uns`` entry written.
    library_key
        ``obs`` column naming each spot's section when ``adata`` holds several: one clustering
        over all spots (region ids mean the same in every section), refinement within sections
        (the kNN refinement graph is built per section; a graph in ``obsp`` is used as it is,
        see :func:`senca.graph.spatial_graph`).
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Sets:

    ``obs[key_added]``
        Categorical of strings ``"0"`` … ``"k-1"`` (scanpy's convention, as ``sc.tl.leiden``),
        numbered by region size: ``"0"`` is the largest region; ties by first spot.
    ``obs[f"{key_added}_confidence"]``
        Float in ``[0, 1]``, see ``method`` and ``refine``.
    ``uns[key_added]``
        ``{"method", "n_clusters", "bic", "seed", "refined", "n_refined", "use_rep",
        "resolution"}``: ``bic`` maps ``str(k)`` to scikit-learn's BIC (lower is better; gmm
        only, ``{}`` otherwise; string keys so the dict can be saved to h5ad); ``resolution`` is
        the Leiden resolution used (``None`` for other methods); ``n_refined`` counts spots
        changed by refinement.
    """
    if method not in METHODS:
        raise SencaInputError(f"method={method!r}: expected one of {', '.join(map(repr, METHODS))}")
    x = get_representation(adata, use_rep)
    if n_clusters is not None:
        check_n_clusters(n_clusters, adata.n_obs)
    elif method == "kmeans":
        raise SencaInputError(
            "n_clusters=None with method='kmeans': expected an integer number of clusters "
            "(or use method='gmm', which chooses k by BIC)"
        )

    # Graph first so that a missing spatial field fails before the (slow) clustering.
    graph = spatial_neighbours(adata, refine_neighbors, library_key) if refine else None

    logger.info("clustering obsm[%r] (%d x %d) with %s", use_rep, x.shape[0], x.shape[1], method)
    result: ClusterResult
    if method == "gmm":
        result = fit_gmm(x, n_clusters, k_range=k_range, scale=scale, seed=seed)
    elif method == "kmeans":
        result = fit_kmeans(x, n_clusters, seed=seed)
    else:
        result = fit_leiden(
            x, n_clusters, n_neighbors=n_neighbors, resolution=resolution, seed=seed
        )

    labels, confidence = result.labels, result.confidence
    n_refined = 0
    if graph is not None:
        refined, changed = refine_labels(labels, graph)
        n_refined = int(changed.sum())
        # refinement may empty or reorder regions by size: renumber to keep "0" = largest
        labels, _ = relabel_by_size(refined)
        agreement = neighbour_agreement(graph, labels)
        confidence = np.where(changed, agreement, confidence)

    adata = adata.copy() if copy else adata
    k = int(labels.max()) + 1
    categories = [str(i) for i in range(k)]
    adata.obs[key_added] = pd.Categorical(
        np.asarray(categories, dtype=object)[labels], categories=categories
    )
    adata.obs[f"{key_added}_confidence"] = np.asarray(confidence, dtype=np.float64)
    adata.uns[key_added] = {
        "method": method,
        "n_clusters": k,
        "bic": result.bic,
        "seed": int(seed),
        "refined": bool(refine),
        "n_refined": n_refined,
        "use_rep": use_rep,
        "resolution": result.resolution,
    }
    logger.debug("wrote obs[%r] with %d regions", key_added, k)
    return adata if copy else None
