"""Automatic number of regions: the minimum-message-length support rule on mixtures with a few
outlying spots, and sections whose regions are known: a simulated tissue (truth by
construction) and a labelled real section (a broad check only: the criterion is never fitted to
the labels)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from senca.clustering import K_RANGE, global_scale, select_k, smooth_representation
from senca.clustering.k_selection import (annihilation_path, bic_elbow, min_component_support, supported_curve,
                                          supported_elbow)
from senca.graph import coherent_features, spatial_graph
from senca.io import read_her2st
from senca.preprocessing import preprocess
from senca.simulation import simulate_tissue
from conftest import HER2ST, require


def _smoothed_pcs(adata, coherent: bool = False) -> np.ndarray:
    """The representation the region stage sees before training: preprocessed PCs (the spatially
    coherent ones when ``coherent``, as the model's input), averaged with their neighbours."""
    adata = preprocess(adata, seed=0)
    spatial_graph(adata)
    if coherent:
        keep = coherent_features(adata.obsm["X_pca"], adata.obsp["spatial_connectivities"], 3.0)
        adata.obsm["X_pca"] = adata.obsm["X_pca"][:, keep]
    smooth_representation(adata, use_rep="X_pca", key_added="X_smooth")
    return adata.obsm["X_smooth"]


def _four_groups_and_outliers(seed: int = 0, d: int = 10) -> np.ndarray:
    """300 spots in four Gaussian groups, plus four far groups of 3 outlying spots each (fewer
    than d / 2 = 5: minimum message length annihilates a component that holds only them)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (4, d))
    groups = [c + rng.normal(0, 1, (75, d)) for c in centres]
    outliers = [15 * np.eye(d)[j] + rng.normal(0, 0.5, (3, d)) for j in range(4)]
    return np.vstack(groups + outliers)


def _plain_bic_elbow(x: np.ndarray) -> int:
    """The previous criterion: the elbow of the best-of-3-starts BIC, every k a candidate."""
    centre, factor = global_scale(x)
    z = (x - centre) / factor
    ks = list(range(K_RANGE[0], K_RANGE[1] + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bic = [GaussianMixture(k, covariance_type="tied", n_init=3, reg_covar=1e-4, random_state=0).fit(z).bic(z)
               for k in ks]
    return bic_elbow(ks, bic)


def test_outlying_spots_do_not_become_regions():
    x = _four_groups_and_outliers()
    # The likelihood rewards a component per group of outliers, and the plain elbow takes some.
    assert _plain_bic_elbow(x) > 4
    selection = select_k(x, seed=0)
    assert selection.k == 4, selection
    i = selection.ks.index(selection.k)
    assert selection.admissible[i] and selection.smallest[i] > selection.min_support == min_component_support(10) == 5.0
    # Every k that would need a component of outliers is marked, and its BIC kept for the figure.
    assert not any(selection.admissible[selection.ks.index(k)] for k in range(9, K_RANGE[1] + 1))
    assert len(selection.bic) == len(selection.admissible) == len(selection.smallest) == len(selection.ks)


@pytest.mark.parametrize("scale", ["none", "standardize"])
def test_automatic_k_clustering_keeps_no_component_of_outliers(scale):
    from senca.clustering import fit_gmm

    smallest = []
    for seed in range(12):
        result = fit_gmm(_four_groups_and_outliers(seed=seed), None, scale=scale, seed=seed)
        smallest.append(int(np.bincount(result.labels).min()))
    # Every cluster holds more than d / 2 = 5 spots: the final mixture is one that k selection
    # admits, not the best fresh start, which on some seeds gives 3 outlying spots their own.
    assert min(smallest) > 5, smallest


def test_annihilation_absorbs_outliers_on_the_way_down():
    x = _four_groups_and_outliers()
    z = (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = GaussianMixture(8, covariance_type="tied", n_init=1, reg_covar=1e-4, random_state=0).fit(z)
        assert start.predict_proba(z).sum(0).min() <= 5.0  # the start isolates outliers
        path = annihilation_path(z, start, 2)
    assert path and max(path) < 8 and min(path) == 2
    for k, model in path.items():
        assert model.n_components == k and model.predict_proba(z).sum(0).min() > 5.0


def test_the_curve_read_counts_an_unsupported_k_as_the_best_supported_below_it():
    ks = list(range(2, 9))
    bic = [100.0, 60.0, 40.0, 5.0, 35.0, 30.0, 0.0]
    admissible = [False, True, True, False, True, True, False]
    curve_ks, curve, owner = supported_curve(ks, bic, admissible)
    assert curve_ks == [3, 4, 5, 6, 7, 8]  # read from the first admissible k
    assert curve == [60.0, 40.0, 40.0, 35.0, 30.0, 30.0] and owner == [3, 4, 4, 6, 7, 7]
    # The deep points at 5 and 8 (components of outliers) would be the plain elbow; never chosen.
    assert bic_elbow(ks, bic) == 5 and supported_elbow(ks, bic, admissible) == 4
    # All admissible and falling: the plain elbow.
    bend = [1000, 700, 450, 250, 100, 90, 80, 70, 60, 50, 40]
    assert supported_elbow(list(range(2, 13)), bend, [True] * 11) == bic_elbow(list(range(2, 13)), bend) == 6
    assert supported_elbow(ks, bic, [False] * len(ks)) is None


def test_select_k_falls_back_to_k_min_when_nothing_is_supported(caplog):
    # 30 spots in 40 dimensions: no component can hold more than 20 of them.
    x = np.random.default_rng(0).normal(size=(30, 40))
    selection = select_k(x, (2, 4), seed=0)
    assert selection.k == 2 and not any(selection.admissible)
    assert "no k in 2..4" in caplog.text


def test_select_k_recovers_the_simulated_expression_programmes():
    # Six regions, two of which (dense and loose stroma) share one expression programme and
    # differ only in the image: expression alone holds five, so five or six is right. The
    # coherent PCs, as the model's input: on all 200 PCs a component's mean has 200 parameters,
    # and minimum message length asks more than 100 of the 600 spots of each.
    sim = simulate_tissue(n_spots=600, n_genes=400, image=False, seed=0)
    selection = select_k(_smoothed_pcs(sim, coherent=True), seed=0)
    assert selection.k in (5, 6), selection.k
    assert selection.ks == list(range(K_RANGE[0], K_RANGE[1] + 1)) and len(selection.bic) == len(selection.ks)


def test_select_k_is_sensible_on_a_labelled_her2st_section():
    # A1 has five pathologist labels; the check is only that the criterion neither lumps the
    # section into the range's floor nor splits it to its ceiling, and keeps no tiny region.
    counts = require(HER2ST / "ST-cnts" / "A1.tsv.gz")
    adata = read_her2st(counts.parents[1], "A1")
    selection = select_k(_smoothed_pcs(adata, coherent=True), seed=0)
    assert K_RANGE[0] < selection.k < K_RANGE[1], selection.k
    assert selection.smallest[selection.ks.index(selection.k)] > selection.min_support


def test_k_selection_figure_marks_the_unsupported_k():
    from senca.plotting import k_selection

    selection = select_k(_four_groups_and_outliers(), seed=0).to_dict()
    fig = k_selection(selection)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert any("spots" in label for label in labels) and any(f"k = {selection['k']}" in label for label in labels)
    # A selection saved before the support rule (no "admissible") still draws.
    old = {key: selection[key] for key in ("k", "ks", "bic", "n_spots")}
    assert k_selection(old).axes[0].get_legend() is not None
