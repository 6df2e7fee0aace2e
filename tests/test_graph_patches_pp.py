"""Spatial graph, H&E patches and preprocessing on small synthetic sections."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from senca.errors import SencaInputError
from senca.graph import edge_index, morans_i, spatial_graph, spot_spacing
from senca.image import extract_patches
from senca.preprocessing import preprocess


def grid_adata(kind: str, rows: int = 8, cols: int = 8, spacing: float = 100.0) -> ad.AnnData:
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    if kind == "hex":
        x, y = (c + 0.5 * (r % 2)) * spacing, r * spacing * np.sqrt(3) / 2
    else:
        x, y = c * spacing, r * spacing
    adata = ad.AnnData(sp.csr_matrix(np.random.default_rng(0).poisson(2, (rows * cols, 30)).astype(np.float32)))
    adata.obsm["spatial"] = np.column_stack([x.ravel(), y.ravel()]) + 300.0
    return adata


@pytest.mark.parametrize("kind, interior_degree", [("square", 8), ("hex", 6)])
def test_default_radius_fits_both_grids(kind, interior_degree):
    adata = spatial_graph(grid_adata(kind))
    graph = adata.obsp["spatial_connectivities"]
    assert sp.issparse(graph) and (graph != graph.T).nnz == 0
    assert graph.diagonal().sum() == 0
    degree = np.diff(graph.tocsr().indptr)
    assert degree.max() == interior_degree
    assert adata.uns["spatial_neighbors"]["spacing"] == pytest.approx(100.0)


def test_knn_graph_is_symmetric_and_edge_index_matches():
    adata = spatial_graph(grid_adata("square"), method="knn", n_neighbors=3)
    graph = adata.obsp["spatial_connectivities"]
    assert (graph != graph.T).nnz == 0 and np.diff(graph.indptr).min() >= 3
    index = edge_index(adata)
    assert index.shape == (2, graph.nnz)
    assert set(map(tuple, index.T.tolist())) == set(zip(*graph.nonzero()))


def test_graph_bad_method_and_isolated_warning(caplog):
    with pytest.raises(SencaInputError, match="graph method 'delaunay' is unknown"):
        spatial_graph(grid_adata("square"), method="delaunay")
    adata = grid_adata("square")
    adata.obsm["spatial"][0] = [-5000, -5000]
    with caplog.at_level(logging.WARNING, logger="senca"):
        spatial_graph(adata)
    assert "1 of 64 spots have no spatial neighbour" in caplog.text


def test_morans_i_orders_smooth_noise_and_checkerboard():
    adata = spatial_graph(grid_adata("square", rows=20, cols=20), radius=101.0)  # 4 neighbours
    x_pos, y_pos = (adata.obsm["spatial"] / 100.0).T
    rng = np.random.default_rng(0)
    features = np.column_stack([
        x_pos + y_pos,                      # smooth gradient
        (x_pos + y_pos) % 2,                # checkerboard
        np.ones(adata.n_obs),               # constant
        rng.normal(size=(adata.n_obs, 40)),  # noise
    ])
    result = morans_i(features, adata.obsp["spatial_connectivities"])
    assert result.i[0] > 0.9 and result.z[0] > 10
    assert result.i[1] == pytest.approx(-1.0) and result.z[1] < -10
    assert result.i[2] == 0 and result.z[2] == 0
    noise_z = result.z[3:]
    assert np.abs(noise_z).max() < 4 and abs(noise_z.mean()) < 0.5
    # The analytic z-score matches a permutation null of the same feature.
    graph = adata.obsp["spatial_connectivities"]
    permuted = np.column_stack([rng.permutation(features[:, 3]) for _ in range(400)])
    null_i = morans_i(permuted, graph).i
    expected_sd = (result.i[3] - (-1 / (adata.n_obs - 1))) / result.z[3]
    assert null_i.std() == pytest.approx(expected_sd, rel=0.15)
    with pytest.raises(SencaInputError, match="expected \\(n_spots, n_features\\)"):
        morans_i(features[:10], graph)


def test_spot_spacing_ignores_missing_spots():
    coords = grid_adata("hex").obsm["spatial"][::2]
    assert spot_spacing(coords) == pytest.approx(100.0)


def image_adata(image: np.ndarray, centres: np.ndarray, scale: float = 0.5, diameter: float = 40.0) -> ad.AnnData:
    adata = ad.AnnData(sp.csr_matrix(np.ones((len(centres), 2), np.float32)))
    adata.obsm["spatial"] = centres / scale
    adata.uns["spatial"] = {"lib": {"images": {"hires": image},
                                    "scalefactors": {"tissue_hires_scalef": scale, "spot_diameter_fullres": diameter}}}
    return adata


def test_patches_cut_the_right_place_and_pad_borders():
    image = np.full((200, 300, 3), 255, np.uint8)
    image[40:80, 40:80] = (150, 50, 150)    # purple square around (60, 60)
    image[100:140, 200:240] = (230, 150, 180)  # pink square around (220, 120)
    centres = np.array([[60.0, 60.0], [220.0, 120.0], [0.0, 0.0]])
    # diameter 40 full-res px * 0.5 = 20 image px; 2 diameters -> 40 px square.
    adata = image_adata(image, centres)
    patches = extract_patches(adata, patch_px=20, show_progress=False)
    assert patches.shape == (3, 3, 20, 20)
    assert (patches[0].reshape(3, -1).mean(axis=1) == [150, 50, 150]).all()
    assert (patches[1].reshape(3, -1).mean(axis=1) == [230, 150, 180]).all()
    # The corner spot: three quarters of its square lie beyond the image, padded with the white slide.
    assert (patches[2] == 255).all()


def test_patches_warn_about_outside_and_blank_spots(caplog):
    image = np.zeros((200, 200, 3), np.uint8)  # blacked-out background
    image[50:150, 50:150] = (180, 90, 160)
    centres = np.array([[100.0, 100.0], [20.0, 20.0], [400.0, 100.0]])
    adata = image_adata(image, centres)
    with caplog.at_level(logging.WARNING, logger="senca"):
        extract_patches(adata, patch_px=8, show_progress=False)
    assert "1 of 3 spots lie outside the 200 x 200 image and 1 fall on blank background" in caplog.text
    assert adata.obs["patch_tissue_fraction"].iloc[0] == 1.0
    assert adata.obs["patch_tissue_fraction"].iloc[1] == 0.0


def test_patches_need_an_image():
    adata = grid_adata("square")
    with pytest.raises(SencaInputError, match="holds no image"):
        extract_patches(adata)


def test_preprocess_keeps_counts_sparse_and_caps_components():
    adata = grid_adata("hex")
    adata.X[:, 0] = 0  # a gene seen nowhere is dropped
    out = preprocess(adata, n_top_genes=20, n_comps=200)
    assert out.n_vars == 29
    assert sp.issparse(out.layers["counts"]) and sp.issparse(out.X)
    assert out.var["highly_variable"].sum() == 20
    assert out.obsm["X_pca"].shape == (64, 19)
    totals = np.expm1(out.layers["lognorm"].toarray()).sum(axis=1)
    assert np.allclose(totals, 1e4, rtol=1e-3)
    assert np.array_equal(out.layers["counts"].toarray(), adata.X[:, 1:].toarray())


def test_preprocess_rejects_what_qc_empties():
    adata = grid_adata("square")
    with pytest.raises(SencaInputError, match="quality control left"):
        preprocess(adata, min_counts=10**9)
