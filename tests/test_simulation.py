"""Tests of the built-in simulated tissue (senca.simulation)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse, stats
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler

from senca.errors import SencaInputError
from senca.simulation import EXPRESSION_CONFOUNDED, IMAGE_CONFOUNDED, REGIONS, simulate_tissue


@pytest.fixture(scope="module")
def sim():
    return simulate_tissue(n_spots=3000, seed=0)


def _interior(adata, region):
    """Spots whose whole capture area lies inside ``region``."""
    k = list(adata.uns["simulation"]["regions"]).index(region)
    return (adata.obs["label"] == region).to_numpy() & (
        adata.obsm["simulation_composition"][:, k] == 1
    )


def _lognorm(adata):
    x = adata.X.toarray()
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


def _patch_features(adata):
    """Per spot: mean RGB, RGB std, dark (nuclear) and white pixel fractions, edge energy."""
    lib = adata.uns["spatial"]["simulated"]
    img = lib["images"]["hires"].astype(np.float32) / 255.0
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    half = int(round(0.5 * adata.uns["simulation"]["params"]["spot_spacing_px"] * scale))
    xy = np.rint(adata.obsm["spatial"] * scale).astype(int)
    gray = img.mean(axis=2)
    feats = []
    for x, y in xy:
        p = img[y - half : y + half, x - half : x + half].reshape(-1, 3)
        g = gray[y - half : y + half, x - half : x + half]
        edges = np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()
        feats.append(np.r_[p.mean(0), p.std(0), (g < 0.5).mean(), (g > 0.9).mean(), edges])
    return np.asarray(feats)


def _bh(p):
    """Benjamini-Hochberg adjusted p-values."""
    n = p.size
    order = np.argsort(p)
    q = np.minimum.accumulate((p[order] * n / np.arange(1, n + 1))[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def test_anndata_conventions(sim, tmp_path):
    n = sim.n_obs
    assert sim.shape == (3000, 1000)
    assert sparse.isspmatrix_csr(sim.X) and sim.X.dtype == np.float32
    assert sim.obs_names.is_unique and sim.var_names.is_unique
    assert isinstance(sim.obs["label"].dtype, pd.CategoricalDtype)
    assert list(sim.obs["label"].cat.categories) == list(REGIONS)
    assert set(sim.obs["label"]) == set(REGIONS)
    assert sim.obsm["spatial"].shape == (n, 2) and sim.obsm["spatial"].dtype == np.float64

    lib = sim.uns["spatial"]["simulated"]
    img = lib["images"]["hires"]
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert 1500 <= max(img.shape[:2]) <= 2600
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(0.17)
    assert sf["spot_diameter_fullres"] == pytest.approx(100.0)
    # Spots (full-resolution pixels) land inside the hires image once scaled.
    xy = sim.obsm["spatial"] * sf["tissue_hires_scalef"]
    assert (xy >= 0).all() and (xy[:, 0] < img.shape[1]).all() and (xy[:, 1] < img.shape[0]).all()
    # Background outside the tissue is near white, the tissue is not.
    assert img[:5, :5].min() >= 230
    x0, y0 = np.rint(xy[0]).astype(int)
    assert img[y0, x0].min() < 230

    meta = sim.uns["simulation"]
    for pair in list(meta["image_confounded"]) + list(meta["expression_confounded"]):
        assert set(pair) <= set(REGIONS)
    assert [tuple(p) for p in meta["image_confounded"]] == list(IMAGE_CONFOUNDED)
    assert [tuple(p) for p in meta["expression_confounded"]] == list(EXPRESSION_CONFOUNDED)
    for genes in meta["markers"].values():
        assert set(genes) <= set(sim.var_names)
    comp = sim.obsm["simulation_composition"]
    np.testing.assert_allclose(comp.sum(axis=1), 1.0, rtol=1e-5)

    # Everything in uns survives an h5ad round trip.
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    back = ad.read_h5ad(path)
    np.testing.assert_array_equal(back.uns["spatial"]["simulated"]["images"]["hires"], img)
    assert back.uns["simulation"]["params"]["grid"] == "hex"


@pytest.mark.parametrize("grid, n_neighbours", [("hex", 6), ("square", 4)])
def test_grid_geometry(grid, n_neighbours):
    a = simulate_tissue(n_spots=400, grid=grid, n_genes=400, seed=3)
    spacing = a.uns["simulation"]["params"]["spot_spacing_px"]
    expected = {"hex": 100.0 / 55.0 * 100.0, "square": 200.0 / 100.0 * 100.0}[grid]
    assert spacing == pytest.approx(expected)
    tree = cKDTree(a.obsm["spatial"])
    d, _ = tree.query(a.obsm["spatial"], 2)
    np.testing.assert_allclose(d[:, 1], spacing, rtol=1e-6)
    # Interior spots have exactly the grid's number of neighbours at one spacing.
    balls = tree.query_ball_point(a.obsm["spatial"], 1.01 * spacing)
    counts = np.array([len(v) - 1 for v in balls])
    assert counts.max() == n_neighbours
    if grid == "hex":
        # Visium layout: odd rows on odd array columns, shifted by half a spacing.
        assert ((a.obs["array_row"] % 2) == (a.obs["array_col"] % 2)).all()


def test_deterministic_per_seed():
    kw = dict(n_spots=300, n_genes=400)
    a, b = simulate_tissue(seed=5, **kw), simulate_tissue(seed=5, **kw)
    c = simulate_tissue(seed=6, **kw)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(
        a.uns["spatial"]["simulated"]["images"]["hires"],
        b.uns["spatial"]["simulated"]["images"]["hires"],
    )
    assert (a.obs["label"] == b.obs["label"]).all()
    assert (a.X != c.X).nnz > 0
    assert not (a.obs["label"] == c.obs["label"]).all()


def test_counts_are_realistic(sim):
    x = sim.X.toarray()
    assert (x >= 0).all() and np.array_equal(x, np.round(x))
    zeros = (x == 0).mean()
    assert 0.45 < zeros < 0.9, zeros
    lib = x.sum(axis=1)
    assert lib.min() > 0
    assert 0.2 < lib.std() / lib.mean() < 1.0
    # Overdispersion: within one region, marker genes have variance well above the mean.
    m = _interior(sim, "tumour_clone_A")
    genes = sim.var_names.isin(sim.uns["simulation"]["markers"]["TUMOUR"])
    sub = x[m][:, genes]
    assert np.median(sub.var(axis=0) / sub.mean(axis=0)) > 1.5


def test_regions_are_spatially_coherent(sim):
    codes = sim.obs["label"].cat.codes.to_numpy()
    _, nn = cKDTree(sim.obsm["spatial"]).query(sim.obsm["spatial"], 7)
    assert (codes[nn[:, 1:]] == codes[:, None]).mean() > 0.8
    counts = sim.obs["label"].value_counts()
    assert counts.min() > 0.08 * sim.n_obs


def test_expression_confound(sim):
    """Stroma pair: indistinguishable expression. Tumour clones: clearly different."""
    logx = _lognorm(sim)
    (c, d), = EXPRESSION_CONFOUNDED
    (a, b), = IMAGE_CONFOUNDED

    def n_significant(r1, r2):
        _, p = stats.ttest_ind(logx[_interior(sim, r1)], logx[_interior(sim, r2)], equal_var=False)
        return int((_bh(np.nan_to_num(p, nan=1.0)) < 0.05).sum())

    assert n_significant(c, d) <= 0.005 * sim.n_vars
    assert n_significant(a, b) >= 40
    # Clone markers are up in their own clone.
    markers = sim.uns["simulation"]["markers"]
    for clone, other, prog in ((a, b, "CLONE_A"), (b, a, "CLONE_B")):
        g = sim.var_names.isin(markers[prog])
        mean_own = logx[_interior(sim, clone)][:, g].mean(axis=0)
        mean_other = logx[_interior(sim, other)][:, g].mean(axis=0)
        assert (mean_own > mean_other).all()


def test_image_confound(sim):
    """Tumour clones: same colour/texture statistics. Stroma pair: clearly different."""
    f = _patch_features(sim)
    (c, d), = EXPRESSION_CONFOUNDED
    (a, b), = IMAGE_CONFOUNDED
    fa, fb = f[_interior(sim, a)], f[_interior(sim, b)]
    fc, fd = f[_interior(sim, c)], f[_interior(sim, d)]
    rgb = slice(0, 3)
    assert np.abs(fa[:, rgb].mean(0) - fb[:, rgb].mean(0)).max() * 255 < 3.0
    assert abs(fa[:, 6].mean() - fb[:, 6].mean()) < 0.1 * fa[:, 6].mean()  # nuclear fraction
    assert np.abs(fa.mean(0) - fb.mean(0)).max() < 0.01
    assert np.abs(fc[:, rgb].mean(0) - fd[:, rgb].mean(0)).max() * 255 > 15.0
    # Per-spot separability: the stroma pair differs by many spot-to-spot SDs, the clones do not.
    sd = np.sqrt(0.5 * (fc.var(0) + fd.var(0)))
    assert (np.abs(fc.mean(0) - fd.mean(0)) / sd).max() > 2.0
    sd = np.sqrt(0.5 * (fa.var(0) + fb.var(0)))
    assert (np.abs(fa.mean(0) - fb.mean(0)) / sd).max() < 0.25


def test_fusion_beats_each_modality(sim):
    """GMM on expression+image features recovers more of the truth than either alone."""
    truth = sim.obs["label"].cat.codes.to_numpy()
    expr = PCA(15, random_state=0).fit_transform(_lognorm(sim))
    expr = expr - expr.mean(axis=0)
    img = StandardScaler().fit_transform(_patch_features(sim))
    both = np.c_[expr / expr.std(), img / img.std()]

    def ari(features):
        gmm = GaussianMixture(len(REGIONS), covariance_type="tied", n_init=10, random_state=0)
        return adjusted_rand_score(truth, gmm.fit_predict(features))

    ari_expr, ari_img, ari_both = ari(expr), ari(img), ari(both)
    assert ari_both > max(ari_expr, ari_img) + 0.1, (ari_expr, ari_img, ari_both)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n_spots=10), "n_spots"),
        (dict(n_spots=3000.0), "n_spots"),
        (dict(grid="triangle"), "grid"),
        (dict(n_genes=50), "n_genes"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(spot_diameter_px=0), "spot_diameter_px"),
        (dict(spot_diameter_px=float("nan")), "spot_diameter_px"),
        (dict(image_scale=2.0), "image_scale"),
        (dict(image_scale=True), "image_scale"),
        (dict(image_scale=0.01), "px apart"),
        (dict(n_spots=200_000, image_scale=1.0), "px per side"),
    ],
)
def test_bad_parameters_raise(kwargs, field):
    with pytest.raises(SencaInputError, match=field):
        simulate_tissue(**kwargs)
