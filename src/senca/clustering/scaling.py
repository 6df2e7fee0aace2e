"""The one global rescaling of an embedding before it is clustered."""

from __future__ import annotations

import numpy as np


def global_scale(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``(centre, factor)`` such that ``(x - centre) / factor`` is centred with unit mean variance.

    ``centre`` is the column mean of ``x`` (spots x features) and ``factor`` the square root of
    the mean per-feature variance (unbiased, ``n - 1`` denominator; at least 1e-12). One factor
    for every feature, not one per feature: an embedding's variance spectrum is what it
    learned, and per-feature scaling would give its low-variance, uninformative directions the
    weight of the informative ones. The model's region stage and
    :func:`senca.clustering.select_k` both rescale with it, so both see the same space.
    """
    x = np.asarray(x, dtype=np.float64)
    centre = x.mean(axis=0)
    return centre, max(float(np.sqrt((x - centre).var(axis=0, ddof=1).mean())), 1e-12)
