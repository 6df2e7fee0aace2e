"""UMAP layout of a per-spot representation, in NumPy and scikit-learn alone (``senca.tl.umap``).

scanpy's ``sc.pp.neighbors`` + ``sc.tl.umap`` go through pynndescent and umap-learn: numba
compiles their kernels on the first call of a fresh install, and pynndescent (used from 8,192
points) fails on scipy's sparse arrays. This is the same method without them: an exact kNN
graph (scikit-learn), UMAP's fuzzy simplicial set, a PCA start and UMAP's cross-entropy
optimised by full-batch epochs of edge and negative sampling. Above ``max_spots`` spots a
random subsample is laid out; a 2-D scatter of more points shows nothing more.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from scipy.optimize import curve_fit
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from senca.clustering._utils import get_representation
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

__all__ = ["umap", "umap_layout"]

_NEGATIVES = 5  # negative samples per positive edge, as in umap-learn
_CLIP = 4.0  # per-coordinate gradient clip, as in umap-learn


def _curve_ab(spread: float, min_dist: float) -> tuple[float, float]:
    """UMAP's ``a, b``: ``1 / (1 + a d^2b)`` fitted to the target low-dimensional similarity."""
    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), d, target)
    return float(a), float(b)


def _fuzzy_graph(distances: np.ndarray, indices: np.ndarray) -> sp.coo_matrix:
    """UMAP's symmetric fuzzy simplicial set of a kNN graph (``distances``, ``indices``: n x k)."""
    n, k = distances.shape
    rho = distances[:, 0]
    gap = np.maximum(distances - rho[:, None], 0.0)
    target = np.log2(k)
    lo, hi = np.zeros(n), np.full(n, np.inf)
    sigma = np.ones(n)
    for _ in range(64):  # bisection, all rows at once
        total = np.exp(-gap / sigma[:, None]).sum(axis=1)
        high = total > target
        hi = np.where(high, sigma, hi)
        lo = np.where(high, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    sigma = np.maximum(sigma, 1e-3 * max(float(distances.mean()), 1e-12))
    weights = np.exp(-gap / sigma[:, None]).ravel()
    rows = np.repeat(np.arange(n), k)
    graph = sp.csr_matrix((weights, (rows, indices.ravel())), shape=(n, n))
    transpose = graph.T.tocsr()
    graph = graph + transpose - graph.multiply(transpose)
    graph.eliminate_zeros()
    return graph.tocoo()


def _optimise(y: np.ndarray, graph: sp.coo_matrix, a: float, b: float, n_epochs: int, rng: np.random.Generator,
              show_progress: bool) -> np.ndarray:
    """UMAP's cross-entropy, by epochs in which every edge is sampled with probability its weight.

    All sampled edges of an epoch move their endpoints at once (umap-learn moves them one
    after another); the gradients and their clipping are umap-learn's.
    """
    head, tail, weight = graph.row, graph.col, (graph.data / graph.data.max()).astype(np.float32)
    n = y.shape[0]
    y = y.astype(np.float32)
    for epoch in tqdm(range(n_epochs), desc="UMAP", leave=False, disable=not show_progress):
        pick = rng.random(weight.size, dtype=np.float32) < weight
        i, j = head[pick], tail[pick]
        diff = y[i] - y[j]
        d2 = np.maximum((diff * diff).sum(axis=1), 1e-12)
        d2b = d2 ** b
        attract = np.clip((-2.0 * a * b * d2b / d2 / (1.0 + a * d2b))[:, None] * diff, -_CLIP, _CLIP)
        # Negative samples: random spots pushed away from each sampled head (never itself).
        neg_i = np.repeat(i, _NEGATIVES)
        neg_k = rng.integers(0, n, neg_i.size)
        diff_n = y[neg_i] - y[neg_k]
        d2_n = (diff_n * diff_n).sum(axis=1)
        coef_n = np.where(neg_i != neg_k, 2.0 * b / ((0.001 + d2_n) * (1.0 + a * d2_n ** b)), 0.0)
        repel = np.clip(coef_n[:, None] * diff_n, -_CLIP, _CLIP)
        targets = np.concatenate([i, j, neg_i])
        moves = np.concatenate([attract, -attract, repel])
        rate = 1.0 - epoch / n_epochs
        for dim in range(y.shape[1]):
            y[:, dim] += rate * np.bincount(targets, moves[:, dim], n).astype(np.float32)
    return y


def umap_layout(x: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.5, spread: float = 1.0,
                n_epochs: int | None = None, seed: int = 0, show_progress: bool = False) -> np.ndarray:
    """2-D UMAP layout of the rows of ``x`` (array level; see :func:`umap`).

    Returns
    -------
    ``(n, 2)`` float32 coordinates.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 3:
        raise SencaInputError(f"UMAP: {n} spots; expected at least 3")
    k = min(n_neighbors, n - 1)
    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    graph = _fuzzy_graph(distances, indices)
    rng = np.random.default_rng(seed)
    # PCA start scaled to umap-learn's initial extent of 10: deterministic, and global structure
    # (which regions lie next to which) starts right instead of from a random scatter.
    start = PCA(n_components=2, random_state=seed).fit_transform(x) if x.shape[1] >= 2 else np.c_[x, np.zeros(n)]
    start = 10.0 * start / max(float(np.abs(start).max()), 1e-12)
    a, b = _curve_ab(spread, min_dist)
    n_epochs = n_epochs if n_epochs is not None else 200
    return _optimise(start, graph, a, b, n_epochs, rng, show_progress).astype(np.float32)


def umap(
    adata: AnnData,
    use_rep: str = "X_senca",
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    max_spots: int | None = 10_000,
    seed: int = 0,
    key_added: str = "X_umap",
    show_progress: bool = False,
) -> None:
    """UMAP of ``obsm[use_rep]`` into ``obsm[key_added]``, with no numba and no approximate kNN.

    Parameters
    ----------
    adata
        Section with the representation in ``obsm[use_rep]``.
    use_rep
        ``obsm`` key to lay out.
    n_neighbors, min_dist
        As in ``sc.pp.neighbors`` / ``sc.tl.umap`` (their defaults).
    max_spots
        Above this many spots, a random subsample of this size (drawn with ``seed``) is laid
        out and the other spots get ``NaN`` coordinates (a message says so); exact kNN costs
        ``spots^2`` and a scatter of more points shows no more. ``None``: all spots.
    seed
        Random seed; the same seed gives the same layout.
    key_added
        ``obsm`` key written; ``uns["umap"]`` records ``n_spots_laid_out`` and the parameters.
    show_progress
        Show a progress bar over the epochs.
    """
    x = get_representation(adata, use_rep)
    n = adata.n_obs
    rows = np.arange(n)
    if max_spots is not None and n > max_spots:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_spots, replace=False))
        logger.info("UMAP of a random subsample of %d of %d spots (the others get NaN in obsm[%r])", max_spots, n, key_added)
    coords = np.full((n, 2), np.nan, dtype=np.float32)
    coords[rows] = umap_layout(x[rows], n_neighbors=n_neighbors, min_dist=min_dist, seed=seed, show_progress=show_progress)
    adata.obsm[key_added] = coords
    adata.uns["umap"] = {"use_rep": use_rep, "n_neighbors": n_neighbors, "min_dist": min_dist,
                         "n_spots_laid_out": int(rows.size), "seed": int(seed)}
