"""Choosing the number of regions: the elbow of the tied-GMM BIC curve.

One range and one criterion for every automatic choice (the model's region stage and
:func:`senca.tl.cluster`), so the two never disagree.

Why the elbow and not the minimum: the BIC of a tied-covariance (mclust EEE) mixture charges
``d`` parameters per component, but a learned embedding's regions are not Gaussian blobs:
curved or elongated groups are fitted better by several components, so the likelihood keeps
rising faster than the penalty and the minimum sits at or near the top of the range (12 regions
for the 346 spots of HER2ST A1). The curve still bends where splitting real groups gives way
to splitting within them; the elbow (:func:`bic_elbow`) is where additional components start
to buy clearly less. (A silhouette criterion, also tried, favours 2-3 regions on these
embeddings: tissue regions border each other in a continuum, so two coarse halves always
separate best.) Criteria that discount the spatial autocorrelation of spots (an
effective-sample-size BIC, cross-validation over spatial blocks) or ask for reproducible splits
(prediction strength, stability across half-samples) favour the coarsest split for the same
reason; ICL adds nothing because posteriors in a many-dimensional embedding are nearly hard.
The comparison is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from senca.clustering.scaling import global_scale
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

#: ``(k_min, k_max)`` searched when the number of regions is not given.
K_RANGE = (2, 12)


@dataclass
class KSelection:
    """Result of :func:`select_k`: the chosen ``k`` and the curve it was read from."""

    k: int
    ks: list[int]
    bic: list[float]
    n_spots: int
    criterion: str = "elbow of the tied-GMM BIC"

    def to_dict(self) -> dict:
        """Plain dict (h5ad- and JSON-safe)."""
        return asdict(self)


def check_k_range(k_range: tuple[int, int], n_spots: int) -> range:
    """The ``k`` values of ``k_range`` (inclusive) that ``n_spots`` spots allow."""
    try:
        lo, hi = (int(v) for v in k_range)
    except (TypeError, ValueError) as err:
        raise SencaInputError(f"k_range={k_range!r}: expected a pair of integers (k_min, k_max)") from err
    if lo < 2 or hi < lo:
        raise SencaInputError(f"k_range={k_range!r}: expected 2 <= k_min <= k_max")
    if lo >= n_spots:
        raise SencaInputError(f"k_range={k_range!r}: k_min must be below the number of spots ({n_spots})")
    return range(lo, min(hi, n_spots - 1) + 1)


def bic_elbow(ks: list[int], bic: list[float]) -> int:
    """The ``k`` farthest below the chord from the first to the last point of the BIC curve
    (both axes scaled to [0, 1]); the minimum when no point lies below it.

    On a curve that falls steeply and then flattens this is the bend; on one with a clear
    minimum (well-separated groups) the bend is that minimum.
    """
    x = np.asarray(ks, dtype=float)
    y = np.asarray(bic, dtype=float)
    if len(x) < 3:
        return int(x[np.argmin(y)])
    x = (x - x[0]) / (x[-1] - x[0])
    y = (y - y.min()) / max(y.max() - y.min(), 1e-12)
    below_chord = (y[0] + (y[-1] - y[0]) * x) - y
    best = int(np.argmax(below_chord))
    return int(ks[best]) if below_chord[best] > 1e-9 else int(ks[int(np.argmin(y))])


@threadpool_limits.wrap(limits=1, user_api="blas")  # small EM products: threads cost more than they save
def select_k(x: np.ndarray, k_range: tuple[int, int] = K_RANGE, seed: int = 0, max_spots: int = 3000,
             n_init: int = 3) -> KSelection:
    """Choose the number of regions of ``x`` (spots x features) by the elbow of the BIC curve.

    Parameters
    ----------
    x
        Per-spot representation (centred and scaled to unit mean variance here).
    k_range
        ``(k_min, k_max)``, inclusive.
    seed
        Seed of the subsample and of the mixtures.
    max_spots
        The curve is computed on a random subsample of at most this many spots: its shape, not
        its scale, decides, and fitting 11 mixtures on every spot of a large section is slow.
    n_init
        EM starts per ``k``.

    Returns
    -------
    :class:`KSelection` with the BIC of every ``k`` (scikit-learn sign: lower is better).
    """
    x = np.asarray(x, dtype=np.float64)
    ks = list(check_k_range(k_range, x.shape[0]))
    # One scale for all dimensions, the model's region stage's (see global_scale); it keeps reg_covar relative.
    centre, factor = global_scale(x)
    z = (x - centre) / factor
    if z.shape[0] > max_spots:
        z = z[np.sort(np.random.default_rng(seed).choice(z.shape[0], size=max_spots, replace=False))]
    bic = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for k in ks:
            model = GaussianMixture(k, covariance_type="tied", n_init=n_init, reg_covar=1e-4, random_state=seed).fit(z)
            bic.append(float(model.bic(z)))
    k = bic_elbow(ks, bic)
    logger.info("k = %d regions: elbow of the tied-GMM BIC over k = %d..%d (%d spots)", k, ks[0], ks[-1], z.shape[0])
    return KSelection(k=k, ks=ks, bic=bic, n_spots=int(z.shape[0]))
