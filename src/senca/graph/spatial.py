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


def section_codes(adata: ad.AnnData, library_key: str | None) -> tuple[list[str], np.ndarray]:
    """The sections of ``adata``: their names and each spot's index into them.

    ``library_key=None``: one section. Otherwise ``obs[library_key]`` names each spot's section
    (as in ``squidpy.gr.spatial_neighbors``).
    """
    if library_key is None:
        return ["all"], np.zeros(adata.n_obs, dtype=np.int64)
    if library_key not in adata.obs:
        raise SencaInputError(f"AnnData: obs[{library_key!r}] (library_key) is missing; expected the section of every spot")
    values = adata.obs[library_key]
    if values.isna().any():
        raise SencaInputError(f"AnnData: obs[{library_key!r}] (library_key) has {int(values.isna().sum())} missing value(s); expected a section for every spot")
    names, codes = np.unique(values.astype(str).to_numpy(), return_inverse=True)
    return [str(n) for n in names], codes.astype(np.int64).ravel()


def sectioned_graph(
    coordinates: np.ndarray,
    codes: np.ndarray,
    method: str = "radius",
    radius: float | None = None,
    n_neighbors: int = 6,
) -> tuple[sp.csr_matrix, sp.csr_matrix, list[tuple[float, float | None]]]:
    """:func:`neighbour_graph` of every section on its own, joined block-diagonally.

    ``codes[i]`` is spot ``i``'s section; no edge joins two sections, and each section gets
    its own spacing and default radius (sections may come from different platforms).

    Returns
    -------
    ``(connectivities, distances, [(spacing, radius) per section code])``.
    """
    coordinates = np.asarray(coordinates, dtype=float)[:, :2]
    n = coordinates.shape[0]
    n_sections = int(codes.max()) + 1 if n else 0
    if n_sections <= 1:
        connectivities, distances, spacing, used_radius = neighbour_graph(coordinates, method, radius, n_neighbors)
        return connectivities, distances, [(spacing, used_radius)]
    rows, cols, dists, params = [], [], [], []
    for code in range(n_sections):
        members = np.flatnonzero(codes == code)
        _, distances, spacing, used_radius = neighbour_graph(coordinates[members], method, radius, n_neighbors)
        coo = distances.tocoo()
        rows.append(members[coo.row])
        cols.append(members[coo.col])
        dists.append(coo.data)
        params.append((spacing, used_radius))
    distances = sp.csr_matrix((np.concatenate(dists), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n), dtype=np.float32)
    connectivities = distances.copy()
    connectivities.data[:] = 1.0
    return connectivities, distances, params


def spatial_graph(
    adata: ad.AnnData,
    method: str = "radius",
    radius: float | None = None,
    n_neighbors: int = 6,
    library_key: str | None = None,
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
    library_key
        ``obs`` column naming each spot's section, for several sections in one AnnData: the
        graph is built per section (own spacing and radius) and never joins spots of
        different sections, whose coordinates share no frame.

    Returns
    -------
    ``adata``, with ``obsp["spatial_connectivities"]`` (binary float32 CSR, symmetric, no self
    loops), ``obsp["spatial_distances"]`` and ``uns["spatial_neighbors"]`` (parameters, spacing;
    with ``library_key`` also ``"sections"``: spacing, radius and mean degree per section).
    """
    if "spatial" not in adata.obsm:
        raise SencaInputError("AnnData: obsm['spatial'] is missing; expected spot coordinates to build the graph")
    names, codes = section_codes(adata, library_key)
    connectivities, distances, params = sectioned_graph(adata.obsm["spatial"], codes, method, radius, n_neighbors)
    degree = np.diff(connectivities.indptr)
    if (degree == 0).any():
        logger.warning("%d of %d spots have no spatial neighbour within the graph radius", int((degree == 0).sum()), adata.n_obs)
    adata.obsp["spatial_connectivities"] = connectivities
    adata.obsp["spatial_distances"] = distances
    info = {
        "method": method, "radius": params[0][1], "n_neighbors": n_neighbors, "spacing": params[0][0],
        "mean_degree": float(degree.mean()),
    }
    if library_key is not None:
        info["library_key"] = library_key
        info["sections"] = {
            name: {"spacing": spacing, "radius": used_radius, "mean_degree": float(degree[codes == code].mean())}
            for code, (name, (spacing, used_radius)) in enumerate(zip(names, params))
        }
    adata.uns["spatial_neighbors"] = info
    return adata


def edge_index(adata: ad.AnnData) -> torch.Tensor:
    """The spatial graph as a PyTorch Geometric ``edge_index`` (2 x n_edges, both directions)."""
    if "spatial_connectivities" not in adata.obsp:
        raise SencaInputError("AnnData: obsp['spatial_connectivities'] is missing; build it with senca.graph.spatial_graph")
    coo = sp.coo_matrix(adata.obsp["spatial_connectivities"])
    return torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
