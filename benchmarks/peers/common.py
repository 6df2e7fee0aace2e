"""What the adapters of the published peers share (``benchmarks/peers/<peer>.py``).

Each adapter runs its tool's documented workflow at the tool's defaults, with k given and
without R. Seed 0 is each tool's documented default seed; seeds 1 and 2 offset it. ``quick``
divides the training epochs by 10. The installed packages are the maintained PyPI forks
``spagcn-modern``, ``stagate-modern`` and ``graphst-modern`` (import names ``SpaGCN``,
``STAGATE_pyG``, ``GraphST``). Nothing here imports senca (its readers aside, through the
protocol), and each peer's cached runs are keyed by this file and its own adapter only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import pandas as pd
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits

QUICK_FACTOR = 10


@dataclass(frozen=True)
class Peer:
    """A published method: its import name, PyPI distribution and documented settings."""

    name: str
    module: str
    distribution: str

    def unavailable(self) -> str | None:
        """Why the peer cannot run here (``None`` when it can)."""
        if importlib.util.find_spec(self.module) is None:
            return f"not installed (pip install {self.distribution}; see benchmarks/README.md)"
        return None

    def version(self) -> str | None:
        """Installed version of the distribution, or ``None``."""
        try:
            return metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            return None


def quick_epochs(epochs: int, quick: bool) -> int:
    """``epochs``, or a tenth of it (at least 1) for ``--quick``."""
    return max(epochs // QUICK_FACTOR, 1) if quick else epochs


def mclust_eee(embedding: np.ndarray, k: int, seed: int) -> np.ndarray:
    """R mclust's "EEE" model without R: a Gaussian mixture with one shared full covariance.

    scikit-learn's ``covariance_type="tied"`` is that model; EM starts from 3 k-means
    initialisations (mclust: hierarchical agglomeration) with a small ridge, as senca's GMM.
    Single-threaded BLAS: the products are small and threads only contend.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        gmm = GaussianMixture(k, covariance_type="tied", n_init=3, reg_covar=1e-4, max_iter=300, random_state=seed)
        return gmm.fit_predict(np.asarray(embedding, dtype=np.float64))


def spot_pitch(coordinates: np.ndarray) -> float:
    """Median distance from each spot to its nearest other spot (the grid's pitch)."""
    distances, _ = NearestNeighbors(n_neighbors=2).fit(coordinates).kneighbors(coordinates)
    return float(np.median(distances[:, 1]))


def prediction(names: pd.Index, labels) -> pd.Series:
    """Regions as strings, indexed by spot id (what a method returns)."""
    return pd.Series(np.asarray(labels).astype(str), index=names, dtype=object)
