"""Spot spacing: the one length scale that makes graph radii platform-independent."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from senca.errors import SencaInputError


def spot_spacing(coordinates: np.ndarray) -> float:
    """Median distance from each spot to its nearest other spot.

    Robust to missing spots and slight jitter: about 200 um on the legacy ST grid,
    about 100 um on Visium's hexagonal grid, expressed in the units of ``coordinates``.
    """
    coordinates = np.asarray(coordinates, dtype=float)
    if coordinates.ndim != 2 or coordinates.shape[1] != 2 or coordinates.shape[0] < 2:
        raise SencaInputError(f"spot coordinates have shape {coordinates.shape}; expected (n_spots >= 2, 2)")
    distances, _ = NearestNeighbors(n_neighbors=2).fit(coordinates).kneighbors(coordinates)
    nearest = distances[:, 1]
    nearest = nearest[nearest > 0]
    if nearest.size == 0:
        raise SencaInputError("all spot coordinates coincide; expected distinct spot positions")
    return float(np.median(nearest))
