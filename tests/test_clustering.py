"""Tests for senca.clustering: GMM (EEE), k-means, Leiden, refinement, smoothing."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import NearestNeighbors

from senca.clustering import (
    cluster,
    consensus_labels,
    fit_gmm,
    fit_kmeans,
    fit_leiden,
    refine_labels,
    smooth_representation,
)
from senca.clustering._utils import spatial_neighbours
from senca.errors import SencaInputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def grid_coords(side: int) -> np.ndarray:
    """(side*side, 2) square-lattice coordinates, row-major; spacing 100 pixels."""
    yy, xx = np.mgrid[0:side, 0:side]
    return np.column_stack([xx.ravel(), yy.ravel()]).astype(float) * 100.0


def grid_graph(side: int) -> sp.csr_matrix:
    """4-neighbour lattice graph matching grid_coords, binary, symmetric, no self loops."""
    idx = np.arange(side * side).reshape(side, side)
    right = np.column_stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()])
    down = np.column_stack([idx[:-1, :].ravel(), idx[1:, :].ravel()])
    edges = np.vstack([right, down])
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    n = side * side
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))


def blobs_adata(n: int = 400, centers: int = 4, d: int = 6, std: float = 0.8, seed: int = 0):
    x, y = make_blobs(n_samples=n, n_features=d, centers=centers, cluster_std=std,
                      center_box=(-10, 10), random_state=seed)
    adata = ad.AnnData(np.zeros((n, 2), dtype=np.float32))
    adata.obsm["X_senca"] = x
    adata.obs["label"] = pd.Categorical(y.astype(str))
    return adata, y


# --- GMM -----------------------------------------------------------------------------------


def test_gmm_recovers_blobs_and_bic_picks_true_k():
    adata, y = blobs_adata()
    cluster(adata, method="gmm", n_clusters=None, k_range=(2, 8))
    info = adata.uns["senca_region"]
    assert info["n_clusters"] == 4
    assert set(info["bic"]) == {str(k) for k in range(2, 9)}
    assert min(info["bic"], key=info["bic"].get) == "4"
    assert adjusted_rand_score(y, adata.obs["senca_region"]) == pytest.approx(1.0)
    conf = adata.obs["senca_region_confidence"].to_numpy()
    assert conf.dtype == np.float64 and conf.min() >= 0.0 and conf.max() <= 1.0
    assert info["method"] == "gmm" and info["refined"] is False and info["seed"] == 0


def test_gmm_covariance_is_shared_full_matrix():
    # Anisotropic, correlated clusters with the SAME covariance: the EEE model's home ground.
    rng = np.random.default_rng(1)
    shape = np.array([[3.0, 0.0, 0.0], [2.5, 0.5, 0.0], [0.0, 0.0, 0.3]])
    means = np.array([[0, 0, 0], [0, 4, 3], [8, 0, -3]], dtype=float)
    x = np.vstack([m + rng.normal(size=(150, 3)) @ shape.T for m in means])
    y = np.repeat(np.arange(3), 150)
    res = fit_gmm(x, 3, scale="none", seed=0)
    model = res.model
    assert model.covariance_type == "tied"
    assert model.covariances_.shape == (3, 3)  # one d x d matrix, not one per component
    cov = model.covariances_
    assert abs(cov[0, 1]) > 0.5 * np.sqrt(cov[0, 0] * cov[1, 1])  # full, not diagonal
    assert adjusted_rand_score(y, res.labels) > 0.95
    # confidence is the maximum posterior
    proba = model.predict_proba(x)
    np.testing.assert_allclose(np.sort(res.confidence), np.sort(proba.max(axis=1)))
    # centres in input space, label j -> centre j
    for j in range(3):
        np.testing.assert_allclose(res.centers[j], x[res.labels == j].mean(axis=0), atol=0.05)


@pytest.mark.parametrize("scale", ["standardize", "whiten", "none"])
def test_gmm_scale_modes_recover_blobs(scale):
    adata, y = blobs_adata(n=300, centers=3)
    res = fit_gmm(adata.obsm["X_senca"], 3, scale=scale, seed=0)
    assert adjusted_rand_score(y, res.labels) == pytest.approx(1.0)


def test_gmm_k_search_on_subsample_still_labels_all_spots():
    adata, y = blobs_adata(n=400, centers=3)
    res = fit_gmm(adata.obsm["X_senca"], None, k_range=(2, 5), fit_max_spots=120, seed=0)
    assert res.n_clusters == 3
    assert len(res.labels) == 400
    assert adjusted_rand_score(y, res.labels) == pytest.approx(1.0)


def test_regions_numbered_by_size_as_string_categories():
    x, y = make_blobs(n_samples=[50, 200, 120], n_features=4, cluster_std=0.5, random_state=3)
    adata = ad.AnnData(np.zeros((len(y), 1), dtype=np.float32))
    adata.obsm["X_senca"] = x
    cluster(adata, method="gmm", n_clusters=3)
    regions = adata.obs["senca_region"]
    assert isinstance(regions.dtype, pd.CategoricalDtype)
    assert list(regions.cat.categories) == ["0", "1", "2"]
    assert regions.value_counts().loc[["0", "1", "2"]].tolist() == [200, 120, 50]


# --- k-means -------------------------------------------------------------------------------


def test_kmeans_labels_and_distance_ratio_confidence():
    adata, y = blobs_adata(centers=3)
    cluster(adata, method="kmeans", n_clusters=3)
    assert adjusted_rand_score(y, adata.obs["senca_region"]) == pytest.approx(1.0)
    assert adata.uns["senca_region"]["bic"] == {}

    # two tight groups at -5 and +5 and one point at 0 (which joins one side)
    x = np.concatenate([np.full(20, -5.0), np.full(20, 5.0), [0.0]])[:, None]
    res = fit_kmeans(x, 2, seed=0)
    assert res.centers.shape == (2, 1)
    dist = np.sort(np.abs(x[:, 0][:, None] - res.centers.ravel()[None, :]), axis=1)
    np.testing.assert_allclose(res.confidence, 1.0 - dist[:, 0] / dist[:, 1])
    assert res.confidence[-1] < 0.1  # near the boundary
    group = 20 if res.centers.ravel()[res.labels[20]] == pytest.approx(5.0) else 0
    assert res.confidence[group] == pytest.approx(1.0)  # on a centroid


# --- Leiden --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 6])
def test_leiden_resolution_search_hits_k(k):
    # overlapping blobs: one connected kNN graph, so the count really depends on resolution
    x, _ = make_blobs(n_samples=400, n_features=5, centers=8, cluster_std=2.5, random_state=2)
    res = fit_leiden(x, k, n_neighbors=15, seed=0)
    assert res.n_clusters == k
    assert res.resolution is not None and res.resolution > 0
    assert len(np.unique(res.labels)) == k


def test_leiden_unreachable_k_warns_and_returns_closest(caplog):
    # 5 far-apart blobs: at least 5 connected components, so 2 clusters is unreachable
    x, _ = make_blobs(n_samples=250, n_features=3, centers=5, cluster_std=0.1,
                      center_box=(-100, 100), random_state=0)
    with caplog.at_level(logging.WARNING, logger="senca"):
        res = fit_leiden(x, 2, n_neighbors=5, max_steps=6, seed=0)
    assert res.n_clusters == 5
    assert any("exactly 2 clusters" in r.getMessage() for r in caplog.records)


def test_leiden_confidence_is_neighbour_agreement():
    adata, y = blobs_adata(centers=3, std=0.3)
    cluster(adata, method="leiden", n_clusters=3, n_neighbors=10)
    assert adjusted_rand_score(y, adata.obs["senca_region"]) == pytest.approx(1.0)
    np.testing.assert_allclose(adata.obs["senca_region_confidence"], 1.0)
    assert adata.uns["senca_region"]["resolution"] > 0

    # overlapping blobs: recompute "fraction of the 10 nearest neighbours sharing the label"
    x, _ = make_blobs(n_samples=200, n_features=2, centers=3, cluster_std=3.0, random_state=5)
    res = fit_leiden(x, 3, n_neighbors=10, seed=0)
    _, idx = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x)
    expected = (res.labels[idx[:, 1:]] == res.labels[:, None]).mean(axis=1)
    np.testing.assert_allclose(res.confidence, expected)
    assert ((expected > 0) & (expected < 1)).any()


# --- spatial refinement --------------------------------------------------------------------


def halves_adata(side: int = 10, isolated: int | None = 42):
    """Left half region A, right half region B (in the representation); optionally one spot
    deep inside A with B's features."""
    coords = grid_coords(side)
    right = coords[:, 0] >= side * 50
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.1, size=(side * side, 3))
    x[right] += 5.0
    if isolated is not None:
        x[isolated] += 5.0
    adata = ad.AnnData(np.zeros((side * side, 1), dtype=np.float32))
    adata.obsm["X_senca"] = x
    adata.obsm["spatial"] = coords
    return adata, right


@pytest.mark.parametrize("with_graph", [True, False])
def test_refinement_flips_isolated_spot(with_graph):
    adata, right = halves_adata(isolated=42)  # row 4, column 2: inside the left half
    assert not right[42] and not right[43] and not right[41]
    if with_graph:
        adata.obsp["spatial_connectivities"] = grid_graph(10)
    cluster(adata, method="kmeans", n_clusters=2, refine=False)
    before = adata.obs["senca_region"].to_numpy()
    assert before[42] != before[43]  # clustering alone puts it with the other half

    cluster(adata, method="kmeans", n_clusters=2, refine=True, refine_neighbors=4)
    after = adata.obs["senca_region"].to_numpy()
    assert after[42] == after[43]
    assert adata.uns["senca_region"]["refined"] is True
    assert adata.uns["senca_region"]["n_refined"] == 1
    expected = np.where(right, after[right][0], after[~right][0])
    assert (after == expected).all()  # the two coherent halves are untouched
    assert adata.obs["senca_region_confidence"].iloc[42] == pytest.approx(1.0)


def test_refine_labels_leaves_coherent_regions_and_borders_alone():
    side = 6
    graph = grid_graph(side)
    labels = (grid_coords(side)[:, 0] >= 300).astype(int)
    new, changed = refine_labels(labels, graph)
    assert not changed.any()
    np.testing.assert_array_equal(new, labels)

    # a three-way corner: no label holds a majority among the spot's neighbours -> kept
    labels = np.array([[0, 1, 1], [2, 0, 1], [2, 2, 1]]).ravel()
    new, changed = refine_labels(labels, grid_graph(3))
    assert new[4] == 0 and not changed[4]


def test_refine_labels_ignores_self_loops():
    graph = grid_graph(3) + sp.identity(9, format="csr") * 10  # heavy self loops
    labels = np.zeros(9, dtype=int)
    labels[4] = 1
    new, changed = refine_labels(labels, graph)
    assert new[4] == 0 and changed.sum() == 1


def test_spatial_neighbours_prefers_obsp_and_falls_back_to_knn():
    adata, _ = halves_adata(side=5, isolated=None)
    knn = spatial_neighbours(adata, n_neighbors=4)
    assert knn.shape == (25, 25)
    assert (knn != knn.T).nnz == 0 and knn.diagonal().sum() == 0
    assert knn[12].nnz == 4  # interior spot: its 4 lattice neighbours
    adata.obsp["spatial_connectivities"] = sp.csr_matrix((25, 25), dtype=np.float32)
    assert spatial_neighbours(adata).nnz == 0


# --- smoothing -----------------------------------------------------------------------------


def test_smooth_representation_row_normalised_average():
    adata = ad.AnnData(np.zeros((4, 1), dtype=np.float32))
    adata.obsm["X_pca"] = np.array([[0.0, 0.0], [2.0, 4.0], [4.0, 8.0], [10.0, 10.0]])
    # path 0-1-2; spot 3 isolated
    rows, cols = [0, 1, 1, 2], [1, 0, 2, 1]
    adata.obsp["spatial_connectivities"] = sp.csr_matrix(
        (np.ones(4, np.float32), (rows, cols)), shape=(4, 4)
    )
    smooth_representation(adata, alpha=0.5)
    out = adata.obsm["X_pca_smooth"]
    np.testing.assert_allclose(out[0], 0.5 * np.array([0, 0]) + 0.5 * np.array([2, 4]))
    np.testing.assert_allclose(out[1], 0.5 * np.array([2, 4]) + 0.5 * np.array([2, 4]))
    np.testing.assert_allclose(out[3], [10.0, 10.0])  # no neighbours: unchanged
    copy = smooth_representation(adata, alpha=0.0, key_added="same", copy=True)
    np.testing.assert_allclose(copy.obsm["same"], adata.obsm["X_pca"])
    assert "same" not in adata.obsm
    with pytest.raises(SencaInputError, match=r"alpha=1\.5"):
        smooth_representation(adata, alpha=1.5)


# --- determinism, outputs ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gmm", "kmeans", "leiden"])
def test_same_seed_same_regions(method):
    x, _ = make_blobs(n_samples=300, n_features=5, centers=5, cluster_std=2.0, random_state=4)
    runs = []
    for _ in range(2):
        adata = ad.AnnData(np.zeros((300, 1), dtype=np.float32))
        adata.obsm["X_senca"] = x.copy()
        cluster(adata, method=method, n_clusters=4, seed=7)
        runs.append(adata)
    np.testing.assert_array_equal(runs[0].obs["senca_region"], runs[1].obs["senca_region"])
    np.testing.assert_array_equal(
        runs[0].obs["senca_region_confidence"], runs[1].obs["senca_region_confidence"]
    )


def test_copy_key_added_and_h5ad_round_trip(tmp_path):
    adata, _ = blobs_adata(n=120, centers=3)
    out = cluster(adata, method="gmm", n_clusters=None, k_range=(2, 4), key_added="reg", copy=True)
    assert "reg" not in adata.obs and "reg" not in adata.uns
    assert {"reg", "reg_confidence"} <= set(out.obs.columns)
    out.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert back.uns["reg"]["n_clusters"] == 3
    assert set(back.uns["reg"]["bic"]) == {"2", "3", "4"}
    assert cluster(adata, n_clusters=3) is None


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"use_rep": "X_missing"},
            r"adata\.obsm has no key 'X_missing'.*available obsm keys: 'X_senca'",
        ),
        ({"method": "dbscan"}, r"method='dbscan': expected one of 'gmm', 'kmeans', 'leiden'"),
        (
            {"n_clusters": 1},
            r"n_clusters=1: expected an integer between 2 and the number of spots \(40\)",
        ),
        ({"n_clusters": 41}, r"n_clusters=41: expected an integer between 2"),
        ({"n_clusters": 2.5}, r"n_clusters=2\.5: expected an integer"),
        ({"method": "kmeans"}, r"n_clusters=None with method='kmeans'"),
        ({"k_range": (1, 5)}, r"k_range=\(1, 5\): expected 2 <= k_min <= k_max"),
        (
            {"n_clusters": 2, "refine": True},
            r"neither obsp\['spatial_connectivities'\] nor obsm\['spatial'\]",
        ),
    ],
)
def test_bad_input_messages(kwargs, message):
    adata, _ = blobs_adata(n=40, centers=2)
    with pytest.raises(SencaInputError, match=message):
        cluster(adata, **kwargs)


def test_nan_in_representation_is_rejected():
    adata, _ = blobs_adata(n=40, centers=2)
    adata.obsm["X_senca"][3, 1] = np.nan
    message = r"adata\.obsm\['X_senca'\] contains 1 NaN or infinite"
    with pytest.raises(SencaInputError, match=message):
        cluster(adata, n_clusters=2)


def test_non_numeric_representation_is_rejected():
    adata, _ = blobs_adata(n=40, centers=2)
    adata.obsm["X_text"] = np.array([["a"]] * 40)
    with pytest.raises(SencaInputError, match=r"adata\.obsm\['X_text'\] is not numeric"):
        cluster(adata, use_rep="X_text", n_clusters=2)


# --- real data -----------------------------------------------------------------------------


@pytest.mark.realdata
def test_dlpfc_pca_gmm_with_refinement_finds_layers():
    import scanpy as sc

    folder = DATA / "dlpfc" / "151510"
    if not (folder / "filtered_feature_bc_matrix.h5").exists():
        pytest.skip(f"real data not found: {folder / 'filtered_feature_bc_matrix.h5'}")
    from senca.evaluation import n_clusters_from_labels, score

    adata = sc.read_10x_h5(folder / "filtered_feature_bc_matrix.h5")
    pos = pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    adata.obsm["spatial"] = pos.loc[adata.obs_names, [5, 4]].to_numpy(dtype=float)
    layers = pd.read_csv(folder / "layer_labels.tsv", sep="\t", index_col=0)["layer"]
    adata.obs["label"] = pd.Categorical(layers.reindex(adata.obs_names))
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, random_state=0)

    k = n_clusters_from_labels(adata)
    assert k == 7
    cluster(adata, use_rep="X_pca", method="gmm", n_clusters=k, refine=True)
    refined = score(adata)
    cluster(adata, use_rep="X_pca", method="gmm", n_clusters=k, key_added="plain")
    plain = score(adata, region_key="plain")
    # expression-only PCA + EEE GMM reaches ARI ~0.4 on this section; refinement helps
    assert plain["ari"] > 0.3
    assert refined["ari"] > plain["ari"]
    assert refined["n_scored"] == adata.obs["label"].notna().sum()


def test_consensus_aligns_region_names_and_takes_the_majority():
    truth = np.repeat(["a", "b", "c"], 10)
    renamed = np.repeat(["2", "0", "1"], 10)  # the same partition under other names
    noisy = renamed.copy()
    noisy[:4] = "1"  # four spots of the first region go astray in one clustering only
    shuffled = np.repeat(["x", "y", "z"], 10)
    shuffled[25:] = "x"
    labels, confidence, reference, agreement = consensus_labels([noisy, renamed, shuffled])
    assert reference == 1  # agrees best with the others
    pairs = [(noisy, renamed), (noisy, shuffled), (renamed, shuffled)]
    assert agreement == pytest.approx(np.mean([adjusted_rand_score(a, b) for a, b in pairs]))
    assert adjusted_rand_score(labels, truth) == 1.0 and set(labels) == {"0", "1", "2"}
    assert confidence[:4].tolist() == pytest.approx([2 / 3] * 4)  # two of three agree
    assert confidence[10:20].tolist() == pytest.approx([1.0] * 10)
    # A tie keeps the reference's region; given confidences are averaged where runs agree.
    labels, confidence, _, _ = consensus_labels([np.array(["0", "1"]), np.array(["0", "0"])],
                                                [np.array([0.9, 0.8]), np.array([0.5, 0.6])])
    assert confidence[0] == pytest.approx(0.7)
    assert consensus_labels([renamed]).agreement is None
    # A clustering that lost a region is not the reference, though it agrees best with the
    # others: the consensus keeps the regions that were asked for.
    merged = renamed.copy()
    merged[merged == "1"] = "0"
    # Two clusterings agree equally with each other; the first lost a region.
    result = consensus_labels([merged, renamed])
    assert result.reference == 1 and set(result.labels) == {"0", "1", "2"}
    with pytest.raises(SencaInputError, match="same length"):
        consensus_labels([np.array(["0"]), np.array(["0", "1"])])


def test_global_scale_is_one_factor_and_select_k_ignores_an_affine_change():
    from senca.clustering import global_scale, select_k

    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (150, 4)), rng.normal(6, 1, (150, 4))] * np.array([1.0, 1.0, 0.1, 0.01]) + 3.0
    centre, factor = global_scale(x)
    z = (x - centre) / factor
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    assert z.var(axis=0, ddof=1).mean() == pytest.approx(1.0)
    # one factor for all features: their relative spread is kept (not standardised each)
    np.testing.assert_allclose(z.std(axis=0) / z.std(axis=0)[0], x.std(axis=0) / x.std(axis=0)[0])
    # select_k rescales its input itself: a shifted, scaled copy gives the same curve
    a, b = select_k(x, (2, 5), seed=0, max_spots=300), select_k(50.0 * x - 7.0, (2, 5), seed=0, max_spots=300)
    assert a.k == b.k == 2
    np.testing.assert_allclose(a.bic, b.bic, rtol=1e-6)
    assert global_scale(np.ones((5, 3)))[1] == 1e-12  # a constant input is only centred
