"""Several sections in one AnnData (``library_key``): nothing joins spots of different sections."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from senca.clustering import cluster
from senca.errors import SencaInputError
from senca.graph import spatial_graph
from senca.image import extract_patches
from senca.io import concat_sections, split_sections
from senca.pipeline import REGION_KEY, run_section
from senca.plotting import composition, regions_by_section
from senca.preprocessing import preprocess
from senca.settings import RunSettings
from senca.simulation import simulate_tissue
from senca.training.sampler import SubgraphSampler


@pytest.fixture(scope="module")
def two_sections():
    # Two simulated sections whose coordinates overlap (both start at the origin) on different
    # grids: any graph over the plain coordinates would join them.
    return {"s1": simulate_tissue(n_spots=200, seed=0), "s2": simulate_tissue(n_spots=200, seed=1, grid="square")}


def _cross_edges(graph: sp.spmatrix, codes: np.ndarray) -> int:
    coo = sp.coo_matrix(graph)
    return int((codes[coo.row] != codes[coo.col]).sum())


def test_concat_and_split_keep_sections_apart(two_sections):
    joined = concat_sections(two_sections)
    assert joined.n_obs == 400 and set(joined.uns["spatial"]) == {"s1", "s2"}
    assert joined.obs_names[0] == "s1:spot_00000" and joined.obs["spot_id"].iloc[0] == "spot_00000"
    parts = split_sections(joined)
    assert list(parts["s2"].obs_names) == list(two_sections["s2"].obs_names)
    assert set(parts["s2"].uns["spatial"]) == {"s2"}
    np.testing.assert_array_equal(parts["s2"].X.toarray(), two_sections["s2"].X.toarray())


def test_graph_per_section_has_no_cross_edges(two_sections):
    joined = concat_sections(two_sections)
    plain = spatial_graph(joined.copy()).obsp["spatial_connectivities"]
    codes = joined.obs["section"].cat.codes.to_numpy()
    assert _cross_edges(plain, codes) > 0  # the overlap is real: without a key the sections join
    spatial_graph(joined, library_key="section")
    graph = joined.obsp["spatial_connectivities"]
    assert _cross_edges(graph, codes) == 0
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0
    sections = joined.uns["spatial_neighbors"]["sections"]
    # each section keeps its own spacing: hex and square grids of the simulator differ
    assert sections["s1"]["spacing"] != pytest.approx(sections["s2"]["spacing"])
    # the block of each section equals that section's own graph
    alone = spatial_graph(two_sections["s2"].copy()).obsp["spatial_connectivities"]
    assert (graph[codes == 1][:, codes == 1] != alone).nnz == 0
    knn = spatial_graph(joined.copy(), method="knn", n_neighbors=4, library_key="section").obsp["spatial_connectivities"]
    assert _cross_edges(knn, codes) == 0


def test_library_key_errors_name_the_column(two_sections):
    joined = concat_sections(two_sections)
    with pytest.raises(SencaInputError, match=r"obs\['batch'\] \(library_key\) is missing"):
        spatial_graph(joined, library_key="batch")


def test_preprocess_per_section_standardises_within_sections(two_sections):
    joined = concat_sections(two_sections)
    pp = preprocess(joined, n_comps=10, library_key="section")
    assert pp.n_vars > 900 and pp.obsm["X_pca"].shape == (400, 10)
    # genes are centred per section, so every PC has mean zero within each section
    for name in ("s1", "s2"):
        rows = (pp.obs["section"] == name).to_numpy()
        np.testing.assert_allclose(pp.obsm["X_pca"][rows].mean(axis=0), 0.0, atol=1e-4)
    pooled = preprocess(joined, n_comps=10)
    rows = (pooled.obs["section"] == "s1").to_numpy()
    assert np.abs(pooled.obsm["X_pca"][rows].mean(axis=0)).max() > 0.1


def test_patches_come_from_each_sections_own_image(two_sections):
    joined = concat_sections(two_sections)
    patches = extract_patches(joined, patch_px=16, show_progress=False, library_key="section")
    alone = extract_patches(two_sections["s2"].copy(), patch_px=16, show_progress=False)
    np.testing.assert_array_equal(patches[200:], alone)
    with pytest.raises(SencaInputError, match="several libraries with images"):
        extract_patches(joined, patch_px=16, show_progress=False)


def test_refinement_stays_within_sections(two_sections):
    joined = concat_sections(two_sections)
    # A representation that puts s1 in region A and s2 in region B, except one s2 spot whose
    # nearest neighbours by plain coordinates lie in s1: refined per section it keeps its region.
    joined.obsm["rep"] = np.where((joined.obs["section"] == "s1").to_numpy()[:, None], 0.0, 10.0) + \
        np.random.default_rng(0).normal(0, 0.01, (joined.n_obs, 2))
    cluster(joined, use_rep="rep", method="kmeans", n_clusters=2, refine=True, library_key="section")
    regions = joined.obs[REGION_KEY].astype(str).to_numpy()
    s1 = (joined.obs["section"] == "s1").to_numpy()
    assert len(set(regions[s1])) == 1 and len(set(regions[~s1])) == 1 and set(regions[s1]) != set(regions[~s1])


def test_joint_run_and_plots(two_sections, tmp_path):
    joined = concat_sections(two_sections)
    settings = RunSettings()
    settings.model = settings.model.replace(epochs_warmup=2, epochs_shared=3, epochs_regions=1, use_image=False)
    settings.clustering = dataclasses.replace(settings.clustering, restarts=1, k=4)
    settings.preprocessing = dataclasses.replace(settings.preprocessing, n_comps=15)
    result = run_section(joined, settings, progress=False, library_key="section")
    adata = result.adata
    codes = adata.obs["section"].cat.codes.to_numpy()
    assert _cross_edges(adata.obsp["spatial_connectivities"], codes) == 0
    assert adata.obsm["X_senca"].shape[0] == 400 and adata.obs[REGION_KEY].nunique() == 4
    # mini-batch blocks follow sections laid side by side: few blocks take seeds of both
    sampler = SubgraphSampler(result.model.data.edge_index, 400, 2, batch_size=40, coordinates=result.model.data.coordinates)
    mixed = [len(set(codes[batch.nodes[batch.seeds].numpy()])) > 1 for batch in sampler.batches()]
    assert sum(mixed) <= 1 and len(mixed) == 10
    plain = SubgraphSampler(result.model.data.edge_index, 400, 2, batch_size=40, coordinates=adata.obsm["spatial"])
    assert sum(len(set(codes[b.nodes[b.seeds].numpy()])) > 1 for b in plain.batches()) > 5  # what the tiling avoids
    fig = regions_by_section(adata, "section")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
    table = (adata.obs.groupby(["section", REGION_KEY], observed=False).size().unstack(fill_value=0))
    fig = composition(table.div(table.sum(axis=1), axis=0))
    assert len(fig.axes[0].patches) == 2 * 4
