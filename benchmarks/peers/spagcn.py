"""SpaGCN (``spagcn-modern``): the tutorial's ``detect_spatial_domains_ez_mode`` workflow and refinement."""

from __future__ import annotations

import random

import anndata as ad
import numpy as np
import pandas as pd

from benchmarks.peers.common import Peer, prediction, quick_epochs
from benchmarks.protocol import Section

PEER = Peer("spagcn", "SpaGCN", "spagcn-modern")

# SpaGCN tutorial ("ez mode"): s=1, b=49, p=0.5, lr 0.05, 200 epochs, seeds 100, then its
# refinement over the 4 (ST, square grid) or 6 (Visium, hexagonal grid) nearest spots.
PARAMS = {"s": 1, "b": 49, "p": 0.5, "lr": 0.05, "max_epochs": 200, "search_max_epochs": 20,
          "search_start": 0.7, "search_step": 0.1, "tol": 5e-3, "seed": 100, "compat": "spagcn-1.2.7",
          "histology": "where the section has an image", "refine": True}


def _array_coordinates(adata: ad.AnnData, section: Section) -> tuple[np.ndarray, np.ndarray]:
    columns = ("array_row", "array_col") if section.platform == "visium" else ("array_x", "array_y")
    return tuple(adata.obs[c].to_numpy(dtype=float) for c in columns)


def run(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """SpaGCN with its tutorial workflow (``detect_spatial_domains_ez_mode``) and refinement.

    The histology term is used where the section has an H&E image (A1). SpaGCN's
    ``x_pixel`` is the image row and ``y_pixel`` the column.
    """
    import scanpy as sc
    import SpaGCN as spg
    import torch

    p = PARAMS
    adata = adata.copy()
    adata.var_names_make_unique()
    adata.X = adata.X.astype(np.float64)
    library = next(iter(adata.uns.get("spatial", {}).values()), {})
    images = library.get("images", {})
    histology = section.image and "hires" in images
    scale = library["scalefactors"]["tissue_hires_scalef"] if histology else 1.0
    x_pixel = adata.obsm["spatial"][:, 1] * scale
    y_pixel = adata.obsm["spatial"][:, 0] * scale
    adj = spg.calculate_adj_matrix(x=x_pixel, y=y_pixel, x_pixel=np.round(x_pixel).astype(int),
                                   y_pixel=np.round(y_pixel).astype(int), image=images.get("hires"),
                                   beta=p["b"], alpha=p["s"], histology=histology)
    spg.prefilter_genes(adata, min_cells=3)
    spg.prefilter_specialgenes(adata)
    sc.pp.normalize_per_cell(adata, min_counts=0)
    sc.pp.log1p(adata)
    spot_seed = p["seed"] + seed
    l_value = spg.search_l(p["p"], adj, start=0.01, end=1000, tol=0.01, max_run=100, compat=p["compat"])
    res = spg.search_res(adata, adj, l_value, k, start=p["search_start"], step=p["search_step"], tol=p["tol"],
                         lr=p["lr"], max_epochs=quick_epochs(p["search_max_epochs"], quick), r_seed=spot_seed,
                         t_seed=spot_seed, n_seed=spot_seed, compat=p["compat"])
    model = spg.SpaGCN()
    model.set_l(l_value)
    random.seed(spot_seed)
    torch.manual_seed(spot_seed)
    np.random.seed(spot_seed)
    model.train(adata, adj, init_spa=True, res=res, tol=p["tol"], lr=p["lr"],
                max_epochs=quick_epochs(p["max_epochs"], quick), compat=p["compat"])
    labels, _ = model.predict()
    x_array, y_array = _array_coordinates(adata, section)
    grid = spg.calculate_adj_matrix(x=x_array, y=y_array, histology=False)
    shape = "hexagon" if section.platform == "visium" else "square"
    refined = spg.refine(sample_id=adata.obs_names.tolist(), pred=list(labels), dis=grid, shape=shape)
    return prediction(adata.obs_names, refined)
