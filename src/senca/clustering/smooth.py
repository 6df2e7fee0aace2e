"""Spatial smoothing of a representation over the spatial neighbour graph."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from senca.clustering._utils import get_representation, spatial_neighbours
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)


def smooth_representation(
    adata: AnnData,
    use_rep: str = "X_pca",
    key_added: str = "X_pca_smooth",
    alpha: float = 0.5,
    n_neighbors: int = 6,
    copy: bool = False,
) -> AnnData | None:
    """Blend each spot's features with the mean of its spatial neighbours' features.

    ``smoothed = (1 - alpha) * X + alpha * D^-1 A X``, where ``A`` is the spatial graph and
    ``D`` its row sums (one sparse product, O(edges)). Spots without neighbours keep their
    features.

    Parameters
    ----------
    adata
        Annotated data with ``obsm[use_rep]`` and either ``obsp["spatial_connectivities"]``
        or ``obsm["spatial"]``.
    use_rep
        ``obsm`` key of the features to smooth (``"X"`` for ``adata.X``).
    key_added
        ``obsm`` key that receives the smoothed ``(n_spots, n_features)`` array.
    alpha
        Weight of the neighbour mean, in ``[0, 1]``: 0 returns the input, 1 replaces every
        spot by its neighbours' mean.
    n_neighbors
        Neighbours per spot for a kNN graph on ``obsm["spatial"]``; used only when
        ``obsp["spatial_connectivities"]`` is absent.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` (or the copy when ``copy=True``); sets ``adata.obsm[key_added]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise SencaInputError(f"alpha={alpha!r}: expected a number in [0, 1]")
    adata = adata.copy() if copy else adata
    x = get_representation(adata, use_rep)
    graph = spatial_neighbours(adata, n_neighbors).astype(np.float64)
    deg = np.asarray(graph.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    np.divide(1.0, deg, out=inv, where=deg > 0)
    neighbour_mean = sp.diags(inv) @ graph @ x
    # no neighbours: the neighbour mean is undefined, keep the spot's own features
    neighbour_mean[deg == 0] = x[deg == 0]
    adata.obsm[key_added] = (1.0 - alpha) * x + alpha * neighbour_mean
    logger.info("smoothed obsm[%r] over the spatial graph into obsm[%r]", use_rep, key_added)
    return adata if copy else None
