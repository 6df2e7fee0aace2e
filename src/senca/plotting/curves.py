"""The criterion curve behind an automatic number of regions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from senca.clustering.k_selection import supported_curve


def k_selection(selection: dict) -> Figure:
    """BIC against ``k`` with the chosen ``k`` marked (``selection``: :meth:`senca.clustering.KSelection.to_dict`).

    The ``k`` whose mixtures keep a component of too few spots (not admissible, see
    :func:`senca.clustering.select_k`) are drawn hollow, and the curve the elbow is read from
    (each ``k`` worth the best admissible mixture of at most ``k`` components) as a line with
    its chord from the first to the last point: the chosen ``k`` is the point farthest below
    the chord (:func:`senca.clustering.k_selection.bic_elbow`), so the figure shows why.
    """
    ks, bic, k = np.asarray(selection["ks"]), np.asarray(selection["bic"]), int(selection["k"])
    admissible = np.asarray(selection.get("admissible") or [True] * len(ks), dtype=bool)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    colour = "#4a2545"
    need = selection.get("min_support")
    ax.plot(ks[admissible], bic[admissible], "o", color=colour, markersize=4, label="BIC (tied-covariance GMM)")
    if not admissible.all():
        ax.plot(ks[~admissible], bic[~admissible], "o", markerfacecolor="none", color="#999999", markersize=5,
                label=f"a component of <= {need:g} spots" if need else "not admissible")
    curve_ks, curve, _ = supported_curve(list(ks), list(bic), list(admissible))
    if curve_ks:
        ax.plot(curve_ks, curve, "-", color=colour, linewidth=1, label="curve read (best admissible <= k)")
        ax.plot([curve_ks[0], curve_ks[-1]], [curve[0], curve[-1]], "--", color="#999999", linewidth=0.8, label="chord")
    ax.plot([k], [bic[list(ks).index(k)]], "o", color="#d62728", markersize=9, label=f"chosen: k = {k}")
    ax.set_xticks(ks)
    ax.set_xlabel("number of regions k")
    ax.set_ylabel("BIC (lower fits better)")
    spots = selection.get("n_spots")
    ax.set_title(f"{selection.get('criterion', 'k selection')}" + (f" ({spots} spots)" if spots else ""), fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
