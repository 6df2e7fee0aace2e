"""Sparse, symmetric spatial neighbour graphs (squidpy's ``obsp`` keys)."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.neighbors import NearestNeighbors

from senca.errors import SencaInputError
from senca.graph.spacing import spot_spacing

logger = logging.getLogger(__name__)

# 1.5 spacings reaches the 4 edge + 4 diagonal neighbours (1, 1.41) of a square ST grid and the
# 6 neighbours (1) of Visium's hex grid, but not the next ring (2 and 1.73).
DEFAULT_RADIUS_IN_SPACINGS = 1.5


def neighbour_graph(
    coordinates: np.ndarray,
    method: str = "radius",
    radius: float | None = None,
    n_neighbors: int = 6,
) -> tuple[sp.csr_matrix, sp.csr_matrix, float, float | None]:
    """Array-level spatial graph: ``(connectivities, distances, spacing, radius)``.

    See :func:`spatial_graph` for the parameters; the graphs are symmetric CSR without self loops.
    """
    coordinates = np.asarray(coordinates, dtype=float)[:, :2]
    n = coordinates.shape[0]
    spacing = spot_spacing(coordinates)
    if method == "radius":
        radius = DEFAULT_RADIUS_IN_SPACINGS * spacing if radius is None else float(radius)
        if radius <= 0:
            raise SencaInputError(f"graph radius is {radius}; expected a positive distance")
        distances = NearestNeighbors(radius=radius).fit(coordinates).radius_neighbors_graph(mode="distance")
    elif method == "knn":
        if not 1 <= n_neighbors < n:
            raise SencaInputError(f"n_neighbors is {n_neighbors}; expected 1 <= n_neighbors < n_spots ({n})")
        distances = NearestNeighbors(n_neighbors=n_neighbors).fit(coordinates).kneighbors_graph(mode="distance")
        distances = distances.maximum(distances.T)
    else:
        raise SencaInputError(f"graph method {method!r} is unknown; expected 'radius' or 'knn'")
    distances = sp.csr_matrix(distances, dtype=np.float32)
    distances.setdiag(0)
    distances.eliminate_zeros()
    connectivities = distances.copy()
    connectivities.data[:] = 1.0
    return connectivities, distances, spacing, radius


def spatial_graph(
    adata: ad.AnnData,
    method: str = "radius",
    radius: float | None = None,
    n_neighbors: int = 6,
) -> ad.AnnData:
    """Build the spatial neighbour graph of the spots.

    Parameters
    ----------
    adata
        Spots with ``obsm["spatial"]``.
    method
        ``"radius"``: spots within ``radius``; ``"knn"``: each spot's ``n_neighbors`` nearest,
        symmetrised (an edge when either spot picks the other).
    radius
        In the units of ``obsm["spatial"]``; default ``1.5 x`` the spot spacing (median
        nearest-neighbour distance), which suits both the ST square grid and the Visium hex grid.
    n_neighbors
        For ``method="knn"``.

    Returns
    -------
    ``adata``, with ``obsp["spatial_connectivities"]`` (binary float32 CSR, symmetric, no self
    loops), ``obsp["spatial_distances"]`` and ``uns["spatial_neighbors"]`` (parameters, spacing).
    """
    if "spatial" not in adata.obsm:
        raise SencaInputError("AnnData: obsm['spatial'] is missing; expected spot coordinates to build the graph")
    connectivities, distances, spacing, radius = neighbour_graph(adata.obsm["spatial"], method, radius, n_neighbors)
    degree = np.diff(connectivities.indptr)
    if (degree == 0).any():
        logger.warning("%d of %d spots have no spatial neighbour within the graph radius", int((degree == 0).sum()), adata.n_obs)
    adata.obsp["spatial_connectivities"] = connectivities
    adata.obsp["spatial_distances"] = distances
    adata.uns["spatial_neighbors"] = {
        "method": method, "radius": radius, "n_neighbors": n_neighbors, "spacing": spacing,
        "mean_degree": float(degree.mean()),
    }
    return adata


def edge_index(adata: ad.AnnData) -> torch.Tensor:
    """The spatial graph as a PyTorch Geometric ``edge_index`` (2 x n_edges, both directions)."""
    if "spatial_connectivities" not in adata.obsp:
        raise SencaInputError("AnnData: obsp['spatial_connectivities'] is missing; build it with senca.graph.spatial_graph")
    coo = sp.coo_matrix(adata.obsp["spatial_connectivities"])
    return torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
