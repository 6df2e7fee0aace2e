"""Large sections end to end: past the sizes where neighbour searches and dense arrays break."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from senca.cli.main import main
from senca.simulation import REGIONS, simulate_tissue


@pytest.fixture(scope="module")
def large_section(tmp_path_factory):
    """A simulated section of 9,000 spots (more than scanpy's 8,192-point pynndescent cut), expression only."""
    adata = simulate_tissue(n_spots=9000, n_genes=400, seed=0, image=False)
    path = tmp_path_factory.mktemp("large") / "section.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_simulated_section_without_image_is_sparse_with_every_region(large_section):
    adata, _ = large_section
    assert sparse.issparse(adata.X) and adata.X.dtype == np.float32
    assert adata.uns["spatial"]["simulated"]["images"] == {}
    assert set(adata.obs["label"]) == set(REGIONS)
    np.testing.assert_allclose(adata.obsm["simulation_composition"].sum(axis=1), 1.0, rtol=1e-5)
    # Marker programmes are up in their own region (as much as with the image: 1.2x adipose, 1.9x immune at this size and seed).
    x = adata.X.toarray()
    logx = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    markers = adata.uns["simulation"]["markers"]
    for region, programme in (("immune_infiltrate", "IMMUNE"), ("adipose", "ADIPOSE")):
        genes = adata.var_names.isin(markers[programme])
        inside = (adata.obs["label"] == region).to_numpy()
        assert logx[inside][:, genes].mean() > 1.15 * logx[~inside][:, genes].mean()


def test_run_end_to_end_above_8192_spots(large_section, tmp_path, caplog):
    _, path = large_section
    out = tmp_path / "out"
    code = main(["run", str(path), "--out", str(out), "--epochs", "2", "--restarts", "1", "--quiet"])
    assert code == 0
    assert not list(tmp_path.glob(".*partial"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_spots"] == 9000 and metrics["n_regions"] >= 2
    regions = pd.read_csv(out / "regions.csv")
    assert len(regions) == 9000 and regions["region"].notna().all()
    import anndata as ad

    result = ad.read_h5ad(out / "senca.h5ad")
    umap = result.obsm["X_umap"]
    assert umap.shape == (9000, 2) and np.isfinite(umap).all()
    assert result.uns["umap"]["n_spots_laid_out"] == 9000


def _dense_reference_pca(x: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    """The PCA of the dense, scaled and clipped matrix, as senca computed it before it stayed sparse."""
    from sklearn.decomposition import PCA

    data = x - x.mean(axis=0)
    std = data.std(axis=0)
    data /= np.where(std > 0, std, 1.0)
    np.clip(data, -10, 10, out=data)
    return PCA(n_components=n_comps, svd_solver="randomized", random_state=seed).fit_transform(data)


def test_sparse_pca_equals_dense_pca_with_clipping():
    import anndata as ad

    from senca.preprocessing import pca

    rng = np.random.default_rng(0)
    x = rng.poisson(0.3, size=(600, 120)).astype(float)
    x[:3, 5] = 40.0  # a rare gene: its non-zero values lie beyond +10 standard deviations
    x[:, 7] = 5.0 + rng.normal(0, 0.1, 600)  # expressed everywhere: its few zeros lie beyond -10
    x[:2, 7] = 0.0
    x[:, 9] = 0.0  # constant
    adata = ad.AnnData(sparse.csr_matrix(np.log1p(x)))
    pca(adata, n_comps=20, seed=3)
    reference = _dense_reference_pca(np.log1p(x), 20, seed=3)
    np.testing.assert_allclose(adata.obsm["X_pca"], reference, atol=1e-4 * np.abs(reference).max())
    # The clipping matters here, so the test would notice it missing.
    unclipped = np.log1p(x) - np.log1p(x).mean(axis=0)
    assert np.abs(unclipped / np.where(unclipped.std(0) > 0, unclipped.std(0), 1)).max() > 10


def test_pca_above_max_fit_spots_projects_every_spot():
    import anndata as ad

    from senca.preprocessing import pca

    rng = np.random.default_rng(1)
    groups = rng.integers(0, 3, 3000)
    means = rng.gamma(1.0, 1.0, size=(3, 80))
    adata = ad.AnnData(sparse.csr_matrix(np.log1p(rng.poisson(means[groups]).astype(float))))
    full = adata.copy()
    pca(adata, n_comps=5, seed=0, max_fit_spots=500)
    pca(full, n_comps=5, seed=0, max_fit_spots=None)
    assert adata.uns["pca"]["n_spots_fitted"] == 500 and full.uns["pca"]["n_spots_fitted"] == 3000
    # The leading PCs (the group structure) are the same up to sign.
    for i in range(2):
        assert abs(np.corrcoef(adata.obsm["X_pca"][:, i], full.obsm["X_pca"][:, i])[0, 1]) > 0.99
