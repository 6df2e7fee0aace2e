"""The criterion curve behind an automatic number of regions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def k_selection(selection: dict) -> Figure:
    """BIC against ``k`` with the chosen ``k`` marked (``selection``: :meth:`senca.clustering.KSelection.to_dict`).

    The chord from the first to the last point is drawn too: the chosen ``k`` is the point
    farthest below it (:func:`senca.clustering.k_selection.bic_elbow`), so the figure shows why.
    """
    ks, bic, k = np.asarray(selection["ks"]), np.asarray(selection["bic"]), int(selection["k"])
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ax.plot(ks, bic, "o-", color="#4a2545", markersize=4, label="BIC (tied-covariance GMM)")
    ax.plot([ks[0], ks[-1]], [bic[0], bic[-1]], "--", color="#999999", linewidth=0.8, label="chord")
    ax.plot([k], [bic[list(ks).index(k)]], "o", color="#d62728", markersize=9, label=f"chosen: k = {k}")
    ax.set_xticks(ks)
    ax.set_xlabel("number of regions k")
    ax.set_ylabel("BIC (lower fits better)")
    spots = selection.get("n_spots")
    ax.set_title(f"{selection.get('criterion', 'k selection')}" + (f" ({spots} spots)" if spots else ""), fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
