"""Choosing the number of regions: the elbow of the tied-GMM BIC curve, over the ``k`` whose every
component holds enough spots to be worth its parameters.

One range and one criterion for every automatic choice (the model's region stage and
:func:`senca.tl.cluster`), so the two never disagree.

Why the elbow and not the minimum: the BIC of a tied-covariance (mclust EEE) mixture charges
``d`` parameters per component, but a learned embedding's regions are not Gaussian blobs:
curved or elongated groups are fitted better by several components, so the likelihood keeps
rising faster than the penalty and the minimum sits at or near the top of the range. The curve
still bends where splitting real groups gives way to splitting within them; the elbow
(:func:`bic_elbow`) is where additional components start to buy clearly less.

Why some ``k`` are not candidates: on small sections the likelihood also rewards components
made of a handful of outlying spots, which no pathologist would call a region. Minimum message
length (Figueiredo & Jain 2002, "Unsupervised learning of finite mixture models", IEEE TPAMI
24(3)) says how many spots a component must hold to be worth its parameters: the code length of
component ``m``'s ``N`` free parameters grows as ``(N / 2) log(n alpha_m)``, and minimising the
message length over the weights gives ``alpha_m`` proportional to
``max(0, sum_i w_im - N / 2)``: a component whose support (sum of its posteriors) is not above
``N / 2`` is annihilated. In an EEE mixture a component's own parameters are its ``d`` means
(``N = d``): the shared covariance is estimated from every spot, so its code length does not
depend on any weight, and the weights are coded apart, in the multinomial term. A ``k`` is
therefore admissible only if one of its mixtures keeps every component's support above
``d / 2``: a fresh EM fit (:func:`admissible_fit`) or the one that their descending search with
annihilation reaches at ``k`` (:func:`annihilation_path`). An inadmissible ``k`` counts as the best admissible mixture
with fewer components, which is what annihilation would leave of it (:func:`supported_curve`),
and the elbow is read on that curve, so that only supported mixtures are chosen while the chord
still spans the whole range.

Alternatives tried and rejected (a silhouette, an effective-sample-size BIC, cross-validation
over spatial blocks, prediction strength, stability, ICL) are compared in
``benchmarks/README.md``, section "Automatic number of regions".
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from senca.clustering.scaling import global_scale
from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

#: ``(k_min, k_max)`` searched when the number of regions is not given.
K_RANGE = (2, 12)


#: Name of the criterion, as the figure's title and the saved selection give it.
CRITERION = "BIC elbow, every component > d/2 spots"


@dataclass
class KSelection:
    """Result of :func:`select_k`: the chosen ``k`` and the curve it was read from.

    ``admissible[i]`` says whether ``ks[i]`` was a candidate (some EM fit kept every component's
    support above ``min_support``); ``smallest[i]`` is the smallest component support of the fit
    whose BIC is ``bic[i]``. ``n_dims`` is the dimension ``d`` of the representation.
    """

    k: int
    ks: list[int]
    bic: list[float]
    n_spots: int
    criterion: str = CRITERION
    admissible: list[bool] = field(default_factory=list)
    smallest: list[float] = field(default_factory=list)
    min_support: float = 0.0
    n_dims: int = 0

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


def supported_curve(ks: list[int], bic: list[float],
                    admissible: list[bool]) -> tuple[list[int], list[float], list[int]]:
    """The BIC of the best admissible mixture of at most ``k`` components, for every ``k`` from
    the first admissible one: ``(ks, curve, owner)``, ``owner[i]`` being the admissible ``k``
    whose BIC ``curve[i]`` is.

    An inadmissible ``k`` is what minimum message length reduces to fewer components (it
    annihilates the unsupported ones), so it is worth no more than the best admissible mixture
    below it; the curve keeps its place on the axis, so the elbow's chord spans the same range
    whichever ``k`` are admissible. Empty when none is.
    """
    out_ks: list[int] = []
    curve: list[float] = []
    owner: list[int] = []
    for k, value, ok in zip(ks, bic, admissible):
        if ok and (not curve or value < curve[-1]):
            best = (value, k)
        elif not curve and not ok:
            continue
        else:
            best = (curve[-1], owner[-1])
        out_ks.append(int(k))
        curve.append(float(best[0]))
        owner.append(int(best[1]))
    return out_ks, curve, owner


def supported_elbow(ks: list[int], bic: list[float], admissible: list[bool]) -> int | None:
    """The elbow (:func:`bic_elbow`) of :func:`supported_curve`, as the admissible ``k`` that
    attains it; ``None`` when no ``k`` is admissible."""
    curve_ks, curve, owner = supported_curve(ks, bic, admissible)
    if not curve_ks:
        return None
    return owner[curve_ks.index(bic_elbow(curve_ks, curve))]


def min_component_support(n_dims: int) -> float:
    """Support (sum of posteriors) that a component of a tied-covariance mixture in ``n_dims``
    dimensions must exceed, else minimum message length annihilates it: half its ``d`` free
    parameters, its mean (Figueiredo & Jain 2002; the shared covariance and the weights are not
    counted, see the module's docstring)."""
    return n_dims / 2.0


def component_support(model: GaussianMixture, z: np.ndarray) -> np.ndarray:
    """Support of each component of ``model`` on ``z``: the sum of its posteriors over the spots."""
    return model.predict_proba(z).sum(axis=0)


def admissible_fit(z: np.ndarray, k: int, n_init: int, seed: int, reg_covar: float = 1e-4,
                   max_iter: int = 100) -> tuple[GaussianMixture, bool, float]:
    """The best tied-covariance mixture of ``k`` components on ``z`` whose components all hold
    more than :func:`min_component_support` spots, among ``n_init`` EM starts.

    Returns ``(model, admissible, smallest support)``. When no start is admissible the best
    start overall is returned with ``admissible=False``: minimum message length would
    annihilate one of its components, so ``k`` components are not supported. The starts are the
    ones ``GaussianMixture(n_init=n_init, random_state=seed)`` would make, so the best start
    overall is its fit.
    """
    need = min_component_support(z.shape[1])
    rng = np.random.RandomState(seed)
    best = best_ok = None
    for _ in range(n_init):
        model = GaussianMixture(k, covariance_type="tied", n_init=1, reg_covar=reg_covar, max_iter=max_iter,
                                random_state=rng).fit(z)
        smallest = float(component_support(model, z).min())
        score = model.lower_bound_
        if best is None or score > best[0].lower_bound_:
            best = (model, smallest)
        if smallest > need and (best_ok is None or score > best_ok[0].lower_bound_):
            best_ok = (model, smallest)
    if best_ok is not None:
        return best_ok[0], True, best_ok[1]
    return best[0], False, best[1]


def _refit(z: np.ndarray, model: GaussianMixture, keep: np.ndarray, reg_covar: float) -> GaussianMixture:
    """EM from ``model`` without the components not in ``keep`` (their weight shared out)."""
    weights = model.weights_[keep] / model.weights_[keep].sum()
    return GaussianMixture(int(keep.sum()), covariance_type="tied", weights_init=weights, means_init=model.means_[keep],
                           precisions_init=model.precisions_, reg_covar=reg_covar, max_iter=200).fit(z)


def annihilation_path(z: np.ndarray, start: GaussianMixture, k_min: int,
                      reg_covar: float = 1e-4) -> dict[int, GaussianMixture]:
    """Figueiredo & Jain's (2002) descending search from ``start``: the supported mixture of each
    ``k`` it passes, ``{k: model}``.

    While a component's support is not above :func:`min_component_support`, the least supported
    one is annihilated and EM resumes from the rest (its spots join the components that remain,
    rather than being isolated again, as a fresh start at the lower ``k`` may do); once all are
    supported, the mixture is recorded and the component of least weight is removed, down to
    ``k_min``. A ``k`` that annihilation skips gets no entry.
    """
    need = min_component_support(z.shape[1])
    path: dict[int, GaussianMixture] = {}
    model = start
    while True:
        support = component_support(model, z)
        k = model.n_components
        if support.min() > need:
            path[k] = model
            drop = int(np.argmin(model.weights_))
        else:
            drop = int(np.argmin(support))
        if k - 1 < max(k_min, 1):
            return path
        keep = np.ones(k, dtype=bool)
        keep[drop] = False
        model = _refit(z, model, keep, reg_covar)


@threadpool_limits.wrap(limits=1, user_api="blas")  # small EM products: threads cost more than they save
def select_k(x: np.ndarray, k_range: tuple[int, int] = K_RANGE, seed: int = 0, max_spots: int = 3000,
             n_init: int = 3) -> KSelection:
    """Choose the number of regions of ``x`` (spots x features): the elbow of the BIC curve of
    tied-covariance mixtures, read over the admissible ``k`` only.

    A ``k`` is admissible when one of its ``n_init`` fresh EM fits, or the mixture that the
    descending search with annihilation from the ``k_max`` fit reaches at ``k``
    (:func:`annihilation_path`), keeps the support of every component above ``d / 2`` spots
    (:func:`min_component_support`); its BIC is that of the best such mixture. An inadmissible
    ``k`` is never chosen: its BIC (of the best fit overall, kept in the result and drawn in the
    figure) comes from components of a few outlying spots, which the likelihood rewards and
    minimum message length does not; on the curve the elbow is read from, it counts as the best
    admissible ``k`` below it (:func:`supported_elbow`). When no ``k`` of the range is admissible
    (a section of very few spots for its dimension), ``k_min`` is returned, with a warning in
    the log.

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
        The support a component needs is counted on the spots fitted.
    n_init
        EM starts per ``k``.

    Returns
    -------
    :class:`KSelection` with the BIC of every ``k`` (scikit-learn sign: lower is better) and
    which ``k`` were admissible.
    """
    x = np.asarray(x, dtype=np.float64)
    ks = list(check_k_range(k_range, x.shape[0]))
    # One scale for all dimensions, the model's region stage's (see global_scale); it keeps reg_covar relative.
    centre, factor = global_scale(x)
    z = (x - centre) / factor
    if z.shape[0] > max_spots:
        z = z[np.sort(np.random.default_rng(seed).choice(z.shape[0], size=max_spots, replace=False))]
    need = min_component_support(z.shape[1])
    bic, admissible, smallest = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = {k: admissible_fit(z, k, n_init, seed) for k in ks}
        # Fresh starts at a lower k may isolate the same few outlying spots again; the descending
        # search from the largest k's fit absorbs them instead.
        path = annihilation_path(z, fits[ks[-1]][0], ks[0])
        for k in ks:
            model, ok, small = fits[k]
            if k in path and (not ok or path[k].lower_bound_ > model.lower_bound_):
                model, ok, small = path[k], True, float(component_support(path[k], z).min())
            bic.append(float(model.bic(z)))
            admissible.append(bool(ok))
            smallest.append(round(small, 2))
    k = supported_elbow(ks, bic, admissible)
    if k is None:
        k = ks[0]
        logger.warning("no k in %d..%d keeps every component above %.1f spots (%d spots, %d dimensions): k = %d",
                       ks[0], ks[-1], need, z.shape[0], z.shape[1], k)
    logger.info("k = %d regions: elbow of the tied-GMM BIC of the supported mixtures, k = %d..%d (admissible: %s; "
                "components > %.1f spots, %d spots)", k, ks[0], ks[-1],
                ",".join(str(j) for j, ok in zip(ks, admissible) if ok) or "none", need, z.shape[0])
    return KSelection(k=k, ks=ks, bic=bic, n_spots=int(z.shape[0]), admissible=admissible, smallest=smallest,
                      min_support=need, n_dims=int(z.shape[1]))
