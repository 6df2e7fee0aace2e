"""Gaussian mixture with one shared full covariance: mclust's "EEE" model, via scikit-learn.

mclust "EEE" = ellipsoidal, equal volume, shape and orientation, i.e. every component has the
same full covariance matrix. scikit-learn's ``GaussianMixture(covariance_type="tied")`` is the
same model. Its free-parameter count, used by :meth:`GaussianMixture.bic`, is
``k*d`` means + ``d*(d+1)/2`` shared covariance entries + ``k-1`` weights, exactly mclust's count
for EEE, so the BIC curve has the same shape. Sign convention differs: scikit-learn's BIC is
``-2 log L + p log n`` (lower is better); mclust reports ``2 log L - p log n`` (higher is better).
We store scikit-learn's values and pick the ``k`` with the LOWEST BIC.

Differences to mclust to keep in mind: mclust initialises EM from model-based hierarchical
agglomeration (deterministic); here EM starts from ``n_init`` k-means initialisations with a
fixed seed and keeps the best likelihood, so results are deterministic for a given seed but not
bit-identical to mclust.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from senca.clustering._utils import ClusterResult, check_n_clusters, relabel_by_size
from senca.clustering.k_selection import K_RANGE, admissible_fit, select_k
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

ScaleMode = Literal["standardize", "whiten", "none"]


def scale_features(x: np.ndarray, scale: ScaleMode = "standardize") -> np.ndarray:
    """Rescale features before fitting a mixture.

    The EEE likelihood is affine-invariant, so scaling does not change the model; it makes
    ``reg_covar`` a relative (not absolute) ridge and gives the k-means initialisation
    comparable feature scales.

    Parameters
    ----------
    x
        ``(n, d)`` data.
    scale
        ``"standardize"``: zero mean, unit variance per feature (constant features are only
        centred). ``"whiten"``: PCA whitening; directions with (numerically) zero variance are
        dropped, which also removes exact collinearity. ``"none"``: unchanged.

    Returns
    -------
    The rescaled ``(n, d')`` array (``d' <= d`` for ``"whiten"``).
    """
    if scale == "none":
        return x
    centred = x - x.mean(axis=0)
    if scale == "standardize":
        std = centred.std(axis=0)
        std[std == 0] = 1.0
        return centred / std
    if scale == "whiten":
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        keep = s > s[0] * 1e-8
        if not keep.any():  # every feature constant: nothing to whiten
            return centred
        sd = s[keep] / np.sqrt(max(x.shape[0] - 1, 1))
        return centred @ vt[keep].T / sd
    raise SencaInputError(f"scale={scale!r}: expected one of 'standardize', 'whiten', 'none'")


@contextlib.contextmanager
def _convergence_logged(k: int, max_iter: int) -> Iterator[None]:
    """Fits inside log one warning when EM stopped at ``max_iter`` before converging."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning(
            "GMM with k=%d did not converge in max_iter=%d EM steps; result kept", k, max_iter
        )


def _fit_one(
    z: np.ndarray, k: int, n_init: int, reg_covar: float, max_iter: int, seed: int,
    start: GaussianMixture | None = None,
) -> GaussianMixture:
    """Tied-covariance mixture on ``z``: ``n_init`` k-means starts, or one EM run from ``start``'s parameters."""
    init = {} if start is None else dict(
        weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    model = GaussianMixture(
        n_components=k,
        covariance_type="tied",
        n_init=n_init if start is None else 1,
        reg_covar=reg_covar,
        max_iter=max_iter,
        random_state=seed,
        **init,
    )
    with _convergence_logged(k, max_iter):
        model.fit(z)
    return model


# EM's products are (n x d) @ (d x d) per component: threaded BLAS costs more than it saves
# there, so the mixture runs single-threaded (measurements: benchmarks/README.md, section
# "Why the defaults are what they are", "The GMM runs single-threaded").
@threadpool_limits.wrap(limits=1, user_api="blas")
def fit_gmm(
    x: np.ndarray,
    n_clusters: int | None = None,
    *,
    k_range: tuple[int, int] = K_RANGE,
    scale: ScaleMode = "standardize",
    n_init: int = 10,
    reg_covar: float = 1e-4,
    max_iter: int = 300,
    fit_max_spots: int | None = 10_000,
    seed: int = 0,
) -> ClusterResult:
    """Cluster rows of ``x`` with a tied-covariance (mclust EEE) Gaussian mixture.

    Parameters
    ----------
    x
        ``(n_spots, n_features)`` finite array.
    n_clusters
        Number of components. ``None`` chooses it over ``k_range`` (inclusive) by the elbow of
        the BIC curve over the supported k (:func:`senca.clustering.select_k`, on the scaled
        ``x``), and keeps the best of the ``n_init`` starts whose components all have that
        support (:func:`senca.clustering.k_selection.admissible_fit`).
    k_range
        ``(k_min, k_max)`` searched when ``n_clusters`` is ``None``.
    scale
        Feature scaling before fitting, see :func:`scale_features`.
    n_init
        EM restarts (each from a k-means initialisation); the best likelihood is kept. The
        likelihood has several near-equal optima on a learned embedding, and 10 restarts
        find the better one more often than 3 for little more time (measurements:
        benchmarks/README.md, section "Why the defaults are what they are", "GMM restarts
        n_init").
    reg_covar
        Ridge added to the shared covariance's diagonal. With ``scale="standardize"`` or
        ``"whiten"`` it is relative to unit feature variance, so ``1e-4`` guards against
        singular covariances (collinear embedding dimensions) without visibly biasing the fit.
    max_iter
        Maximum EM iterations per restart.
    fit_max_spots
        For larger sections the mixture is fitted on a random subsample of this many spots
        (drawn with ``seed``): the BIC search over ``k`` and the ``n_init`` restarts; then one
        EM run on all spots, started from that fit, settles it (a few iterations), so the cost
        of the restarts stops growing with the section. ``None``: everything on all spots.
    seed
        Random state for the initialisations.

    Returns
    -------
    :class:`ClusterResult` with ``confidence`` = maximum posterior probability per spot,
    ``centers`` = posterior-weighted means in the input space, ``bic`` = ``{str(k): BIC}``
    for every ``k`` fitted (scikit-learn sign: lower is better; for an automatic ``k``, the
    curve of :func:`select_k`) and ``model`` = the fitted
    :class:`~sklearn.mixture.GaussianMixture` (in the scaled space; its component order is the
    original one, not the relabelled one).
    """
    n = x.shape[0]
    z = scale_features(x, scale)
    bic: dict[str, float] = {}
    subsample = fit_max_spots is not None and n > fit_max_spots
    z_fit = z
    if subsample:
        z_fit = z[np.sort(np.random.default_rng(seed).choice(n, size=fit_max_spots, replace=False))]
        logger.info("GMM (EEE): fitted on %d of %d spots, then refined by EM on all", fit_max_spots, n)
    if n_clusters is None:
        # k is chosen in the space that is clustered, and the mixture kept is one the choice
        # admits: the best of fresh starts may give a few outlying spots a component again.
        selection = select_k(z, k_range, seed=seed)
        bic = {str(k): value for k, value in zip(selection.ks, selection.bic)}
        with _convergence_logged(selection.k, max_iter):
            model, _, _ = admissible_fit(z_fit, selection.k, n_init, seed, reg_covar, max_iter)
    else:
        k = check_n_clusters(n_clusters, n)
        model = _fit_one(z_fit, k, n_init, reg_covar, max_iter, seed)
        bic[str(k)] = float(model.bic(z_fit))
    if subsample:
        model = _fit_one(z, model.n_components, n_init, reg_covar, max_iter, seed, start=model)

    resp = model.predict_proba(z)
    raw = resp.argmax(axis=1)
    labels, order = relabel_by_size(raw)
    resp = resp[:, order]
    if len(order) < model.n_components:
        logger.warning(
            "GMM: %d of %d components received no spot; returning %d clusters",
            model.n_components - len(order), model.n_components, len(order),
        )
    weights = resp.sum(axis=0)
    centers = (resp.T @ x) / np.maximum(weights, np.finfo(float).tiny)[:, None]
    return ClusterResult(
        labels=labels,
        confidence=np.clip(resp.max(axis=1), 0.0, 1.0),
        n_clusters=len(order),
        centers=centers,
        bic=bic,
        model=model,
    )
