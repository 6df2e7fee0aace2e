"""BANKSY (``pybanksy``): neighbour-augmented expression, PCA and the protocol's GMM."""

from __future__ import annotations

import contextlib
import io

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.peers.common import Peer, mclust_eee, prediction
from benchmarks.protocol import Section

PEER = Peer("banksy", "banksy", "pybanksy")

# BANKSY's documented domain-segmentation settings for Visium (Singhal et al. 2024): lambda 0.2,
# k_geom 6, scaled-Gaussian neighbour weights, azimuthal Gabor filter up to m = 1, 20 PCs of the
# z-scored BANKSY matrix. Genes: all genes of the section after library-size normalisation and
# log1p, as in BANKSY's DLPFC analysis (the 5,000 genes of its data package); sections with more
# genes keep the 5,000 most variable (seurat_v3) so that the dense BANKSY matrix stays small.
# Clustering: the protocol's k and the mclust EEE equivalent, as for the other peers.
PARAMS = {"lambda": 0.2, "k_geom": 6, "nbr_weight_decay": "scaled_gaussian", "max_m": 1, "pca_dims": 20,
          "max_genes": 5000, "hvg_flavor": "seurat_v3", "normalize_total": 1e4,
          "clustering": "mclust EEE equivalent (tied-covariance GMM) on the 20 PCs"}


def run(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """BANKSY's matrix at its Visium domain settings, 20 PCs, tied-covariance GMM with k regions."""
    import scanpy as sc
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from banksy_utils.umap_pca import pca_umap

    p = PARAMS
    adata = adata.copy()
    adata.var_names_make_unique()
    sc.pp.filter_genes(adata, min_cells=1)
    if adata.n_vars > p["max_genes"]:
        sc.pp.highly_variable_genes(adata, flavor=p["hvg_flavor"], n_top_genes=p["max_genes"], subset=True)
    sc.pp.normalize_total(adata, target_sum=p["normalize_total"])
    sc.pp.log1p(adata)
    adata.obs["xcoord"], adata.obs["ycoord"] = adata.obsm["spatial"][:, 0], adata.obsm["spatial"][:, 1]
    # pybanksy prints its progress and draws QC plots; both are switched off or swallowed.
    with contextlib.redirect_stdout(io.StringIO()):
        banksy_dict = initialize_banksy(adata, ("xcoord", "ycoord", "spatial"), p["k_geom"],
                                        nbr_weight_decay=p["nbr_weight_decay"], max_m=p["max_m"],
                                        plt_edge_hist=False, plt_nbr_weights=False, plt_agf_angles=False,
                                        plt_theta=False)
        generate_banksy_matrix(adata, banksy_dict, [p["lambda"]], p["max_m"], verbose=False)
        np.random.seed(seed)
        pca_umap(banksy_dict, pca_dims=[p["pca_dims"]], add_umap=False, plt_remaining_var=False)
    banksy_adata = banksy_dict[p["nbr_weight_decay"]][p["lambda"]]["adata"]
    pcs = np.asarray(banksy_adata.obsm[f"reduced_pc_{p['pca_dims']}"])
    return prediction(adata.obs_names, mclust_eee(pcs, k, seed))
