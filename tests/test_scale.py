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


def _dense_standardised(x: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
    """``x`` centred, scaled and clipped at +-10 as a dense matrix; with ``codes``, each section's
    genes on their own (centred, scaled, clipped and centred again)."""
    codes = np.zeros(len(x), int) if codes is None else codes
    data = np.empty_like(x)
    for code in np.unique(codes):
        part = x[codes == code] - x[codes == code].mean(axis=0)
        std = part.std(axis=0)
        part = np.clip(part / np.where(std > 0, std, 1.0), -10, 10)
        data[codes == code] = part - part.mean(axis=0)
    return data


def _dense_reference_pca(x: np.ndarray, n_comps: int, seed: int, codes: np.ndarray | None = None) -> np.ndarray:
    """The PCA of the dense, scaled and clipped matrix, as senca computed it before it stayed sparse."""
    from sklearn.decomposition import PCA

    return PCA(n_components=n_comps, svd_solver="randomized", random_state=seed).fit_transform(_dense_standardised(x, codes))


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


def test_sparse_pca_by_section_equals_dense_reference():
    import anndata as ad

    from senca.preprocessing import pca

    rng = np.random.default_rng(2)
    codes = rng.integers(0, 3, 700)  # three sections, interleaved rows
    depth = np.array([0.2, 0.5, 1.5])[codes][:, None]  # different depth per section
    x = rng.poisson(depth * rng.gamma(1.0, 1.0, size=(1, 90)), size=(700, 90)).astype(float)
    x[np.flatnonzero(codes == 1)[:2], 4] = 60.0  # beyond +10 standard deviations in section 1 only
    x[:, 8] = 5.0 + rng.normal(0, 0.1, 700)  # expressed everywhere: its zeros lie beyond -10
    x[np.flatnonzero(codes == 2)[:2], 8] = 0.0
    x[codes == 0, 11] = 0.0  # constant within one section
    x = np.log1p(x)
    adata = ad.AnnData(sparse.csr_matrix(x))
    adata.obs["section"] = np.array(["a", "b", "c"])[codes]
    pca(adata, n_comps=15, seed=4, library_key="section")
    reference = _dense_reference_pca(x, 15, seed=4, codes=codes)
    np.testing.assert_allclose(adata.obsm["X_pca"], reference, atol=1e-4 * np.abs(reference).max())
    assert adata.uns["pca"]["n_spots_fitted"] == 700
    # the variance ratios are those of the dense matrix
    ratio = reference.var(axis=0) / _dense_standardised(x, codes).var(axis=0).sum()
    np.testing.assert_allclose(adata.uns["pca"]["variance_ratio"], ratio, rtol=1e-4)
    # per-section standardising matters here: the pooled PCA differs
    pooled = adata.copy()
    pca(pooled, n_comps=15, seed=4)
    assert np.abs(np.abs(pooled.obsm["X_pca"][:, 0]) - np.abs(reference[:, 0])).max() > 0.1 * np.abs(reference).max()
    # loadings fitted on a subsample: every spot is projected on them, standardised in its section
    sub = adata.copy()
    pca(sub, n_comps=5, seed=4, library_key="section", max_fit_spots=400)
    assert sub.uns["pca"]["n_spots_fitted"] == 400
    projected = _dense_standardised(x, codes) @ sub.varm["PCs"]
    np.testing.assert_allclose(sub.obsm["X_pca"], projected, atol=1e-4 * np.abs(projected).max())
    # one section alone is the plain PCA
    one = ad.AnnData(sparse.csr_matrix(x))
    one.obs["section"] = "a"
    plain = one.copy()
    pca(one, n_comps=15, seed=4, library_key="section")
    pca(plain, n_comps=15, seed=4)
    np.testing.assert_allclose(one.obsm["X_pca"], plain.obsm["X_pca"], atol=1e-5 * np.abs(plain.obsm["X_pca"]).max())


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


def test_resnet_features_cost_one_full_pass(monkeypatch):
    """BatchNorm re-estimation reads at most _RECALIBRATION_MAX_SPOTS patches; the features one pass of all."""
    import torch

    from senca.model import SENCA
    from senca.model.resnet import ResNet
    from senca.training import trainer

    from test_model import FAST, grid_adata

    a = grid_adata(side=12)
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, (a.n_obs, 3, 16, 16)).astype(np.uint8)
    seen = []
    original = ResNet.forward_texture

    def counting(self, x):
        seen.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(ResNet, "forward_texture", counting)
    monkeypatch.setattr(trainer, "_RECALIBRATION_MAX_SPOTS", 50)
    torch.set_num_threads(1)
    model = SENCA(a, patches=patches, device="cpu", **{**FAST, "epochs_warmup": 1, "epochs_shared": 1, "epochs_regions": 0})
    model.train(progress_bar=False)
    assert sum(seen) == 50 + a.n_obs  # the re-estimation on a subsample, then every patch once
    assert model.data.image_features.shape[0] == a.n_obs


def _pillow_patch(image, background, cx, cy, half, patch_px):
    """One patch as senca cut it before, spot by spot with Pillow."""
    from PIL import Image

    height, width = image.shape[:2]
    side = int(round(2 * half))
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    crop = np.empty((side, side, 3), dtype=np.uint8)
    crop[:] = background
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1, :3]
    resample = Image.Resampling.BILINEAR if side < patch_px else Image.Resampling.BOX
    return np.asarray(Image.fromarray(crop).resize((patch_px, patch_px), resample)).transpose(2, 0, 1)


@pytest.mark.parametrize("patch_px", [16, 24, 32, 64])
def test_vectorised_patches_equal_pillow_pixel_for_pixel(patch_px):
    from senca.image import extract_patches
    from senca.image.patches import _background_colour, section_image

    adata = simulate_tissue(n_spots=300, n_genes=400, seed=2)
    adata.obsm["spatial"][:2] = [[-50.0, 30.0], [1e7, 1e7]]  # one spot half off the image, one far outside
    patches = extract_patches(adata, patch_px=patch_px, show_progress=False)
    image, scale, diameter = section_image(adata)
    half = 2.0 * diameter * scale / 2.0
    background = _background_colour(image)
    for i in (0, 1, 2, 150, 299):
        cx, cy = adata.obsm["spatial"][i] * scale
        np.testing.assert_array_equal(patches[i], _pillow_patch(image, background, cx, cy, half, patch_px))
    assert (patches[1] == background[:, None, None]).all()


def test_gmm_fitted_on_a_subsample_labels_every_spot_as_the_full_fit():
    from sklearn.datasets import make_blobs
    from sklearn.metrics import adjusted_rand_score

    from senca.clustering import fit_gmm

    x, y = make_blobs(n_samples=3000, centers=4, n_features=6, cluster_std=2.0, random_state=0)
    sub = fit_gmm(x, 4, n_init=3, fit_max_spots=400, seed=0)
    full = fit_gmm(x, 4, n_init=3, fit_max_spots=None, seed=0)
    assert len(sub.labels) == 3000
    assert adjusted_rand_score(sub.labels, full.labels) > 0.99
    # The final EM ran on all spots: its means are the full fit's, not the subsample's.
    np.testing.assert_allclose(np.sort(sub.centers, axis=0), np.sort(full.centers, axis=0), atol=0.05)


def test_markers_on_a_subsample_keep_every_region_and_the_top_markers():
    import anndata as ad

    from senca.evaluation import markers

    rng = np.random.default_rng(0)
    regions = np.repeat(["a", "b", "c"], [3000, 800, 40])
    x = rng.poisson(1.0, size=(regions.size, 30)).astype(float)
    x[regions == "a", 0] += 5
    x[regions == "b", 1] += 5
    x[regions == "c", 2] += 5
    adata = ad.AnnData(sparse.csr_matrix(np.log1p(x)))
    adata.var_names = [f"g{i}" for i in range(30)]
    adata.obs["region"] = pd.Categorical(regions)
    sub = markers(adata, "region", n_genes=3, max_spots=1000)
    full = markers(adata, "region", n_genes=3, max_spots=None)
    top = lambda table: table[table["rank"] == 1].set_index("region")["gene"].to_dict()  # noqa: E731
    assert top(sub) == top(full) == {"a": "g0", "b": "g1", "c": "g2"}
    # Fewer spots tested: smaller test statistics than on all spots.
    assert sub[sub["rank"] == 1]["score"].abs().sum() < full[full["rank"] == 1]["score"].abs().sum()


def test_region_map_painted_above_the_raster_threshold(monkeypatch):
    import anndata as ad
    import matplotlib

    from senca.plotting import spatial

    side = 60
    yy, xx = np.divmod(np.arange(side * side), side)
    adata = ad.AnnData(np.zeros((side * side, 1), np.float32))
    adata.obsm["spatial"] = np.c_[xx, yy].astype(float)
    adata.obs["senca_region"] = pd.Categorical(np.where(xx < side // 2, "0", "1"))
    monkeypatch.setattr(spatial, "_RASTER_MIN_SPOTS", 100)
    fig = spatial.regions(adata, label_key=None)
    ax = fig.axes[0]
    assert not ax.collections  # no markers: one image
    raster = ax.images[-1].get_array()
    palette = spatial.region_palette(["0", "1"])
    painted = raster[raster[..., 3] > 0][:, :3]
    for region in ("0", "1"):  # both regions' colours are there
        assert np.isclose(painted, matplotlib.colors.to_rgb(palette[region])).all(axis=1).any()


def test_umap_separates_groups_is_deterministic_and_subsamples():
    import anndata as ad
    from sklearn.datasets import make_blobs
    from sklearn.metrics import silhouette_score

    from senca.tl import umap

    x, y = make_blobs(n_samples=600, centers=4, n_features=10, cluster_std=2.0, random_state=0)
    adata = ad.AnnData(np.zeros((600, 1), np.float32))
    adata.obsm["X_senca"] = x
    umap(adata, seed=0)
    first = adata.obsm["X_umap"].copy()
    assert first.shape == (600, 2) and np.isfinite(first).all()
    assert silhouette_score(first, y) > 0.6
    umap(adata, seed=0)
    np.testing.assert_array_equal(adata.obsm["X_umap"], first)
    umap(adata, seed=0, max_spots=250)
    laid_out = np.isfinite(adata.obsm["X_umap"]).all(axis=1)
    assert laid_out.sum() == 250 == adata.uns["umap"]["n_spots_laid_out"]
    assert np.isnan(adata.obsm["X_umap"][~laid_out]).all()
    assert silhouette_score(adata.obsm["X_umap"][laid_out], y[laid_out]) > 0.6
