"""Automatic number of regions on sections whose regions are known: a simulated tissue (truth by
construction) and a labelled real section (a broad check only: the criterion is never fitted to
the labels)."""

from __future__ import annotations

import numpy as np

from senca.clustering import K_RANGE, select_k, smooth_representation
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


def test_select_k_recovers_the_simulated_expression_programmes():
    # Six regions, two of which (dense and loose stroma) share one expression programme and
    # differ only in the image: expression alone holds five, so five or six is right.
    sim = simulate_tissue(n_spots=600, n_genes=400, image=False, seed=0)
    selection = select_k(_smoothed_pcs(sim), seed=0)
    assert selection.k in (5, 6), selection.k
    assert selection.ks == list(range(K_RANGE[0], K_RANGE[1] + 1)) and len(selection.bic) == len(selection.ks)


def test_select_k_is_sensible_on_a_labelled_her2st_section():
    # A1 has five pathologist labels; the check is only that the criterion neither lumps the
    # section into the range's floor nor splits it to its ceiling.
    counts = require(HER2ST / "ST-cnts" / "A1.tsv.gz")
    adata = read_her2st(counts.parents[1], "A1")
    k = select_k(_smoothed_pcs(adata, coherent=True), seed=0).k
    assert K_RANGE[0] < k < K_RANGE[1], k
