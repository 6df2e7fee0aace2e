"""STAGATE (``stagate-modern``, PyG version): the tutorial workflow, mclust EEE without R."""

from __future__ import annotations

import anndata as ad
import pandas as pd

from benchmarks.peers.common import Peer, mclust_eee, prediction, quick_epochs, spot_pitch
from benchmarks.protocol import Section

PEER = Peer("stagate", "STAGATE_pyG", "stagate-modern")

# STAGATE tutorial: 3000 seurat_v3 HVGs, normalize_total 1e4 + log1p, radius graph, hidden
# [512, 30], 1000 epochs, lr 1e-3; mclust EEE on the unscaled embedding replaced by its
# scikit-learn equivalent (:func:`mclust_eee`, no R). Radius: STAGATE's
# DLPFC tutorial uses 150 px for a ~138 px spot pitch; 1.3 x the pitch keeps the same
# 6 neighbours on Visium and gives the 4 direct neighbours on the ST grid.
PARAMS = {"n_top_genes": 3000, "radius_spacings": 1.3, "hidden_dims": [512, 30], "n_epochs": 1000,
          "lr": 1e-3, "seed": 0, "clustering": "mclust EEE equivalent (tied-covariance GMM), unscaled embedding"}


def run(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """STAGATE with its tutorial workflow; mclust EEE replaced by :func:`mclust_eee` (no R)."""
    import scanpy as sc
    import STAGATE_pyG

    p = PARAMS
    adata = adata.copy()
    adata.var_names_make_unique()
    # seurat_v3 fits a loess of variance on mean over detected genes only
    sc.pp.filter_genes(adata, min_cells=1)
    sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=min(p["n_top_genes"], adata.n_vars))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    radius = p["radius_spacings"] * spot_pitch(adata.obsm["spatial"])
    STAGATE_pyG.Cal_Spatial_Net(adata, rad_cutoff=radius, verbose=False)
    STAGATE_pyG.train_STAGATE(adata, hidden_dims=list(p["hidden_dims"]), n_epochs=quick_epochs(p["n_epochs"], quick),
                              lr=p["lr"], random_seed=p["seed"] + seed, verbose=False, device="cpu")
    return prediction(adata.obs_names, mclust_eee(adata.obsm["STAGATE"], k, seed))
