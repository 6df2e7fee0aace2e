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
