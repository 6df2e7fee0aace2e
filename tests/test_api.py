"""What a scanpy/squidpy user meets: one call equal to `senca run`, its files read by scanpy and
squidpy with senca's colours and names, every phase logged with its time, automatic k, saved models."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import anndata as ad
import h5py
import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

import senca
from senca.cli.main import main
from senca.clustering import K_RANGE, cluster, select_k
from senca.clustering.k_selection import bic_elbow
from senca.errors import SencaInputError
from senca.model import SENCA, SencaConfig
from senca.settings import RunSettings, read_toml
from senca.simulation import simulate_tissue
from conftest import A1_IMAGE, require
from test_model import FAST, grid_adata

ROOT = Path(__file__).resolve().parents[1]
RUN_FLAGS = ["--epochs", "6", "--patch-size", "32", "--restarts", "2"]


# ------------------------------------------------------------------ automatic number of regions


def test_bic_elbow_is_the_bend_not_the_far_minimum():
    ks = list(range(2, 13))
    # Falls steeply to k = 6, then keeps falling slowly: the minimum is at the end of the range.
    bend = [1000, 700, 450, 250, 100, 90, 80, 70, 60, 50, 40]
    assert bic_elbow(ks, bend) == 6 and int(np.argmin(bend)) + 2 == 12
    # A clear minimum (separated groups) is the bend itself.
    valley = [900, 500, 100, 120, 140, 160, 180, 200, 220, 240, 260]
    assert bic_elbow(ks, valley) == 4


def test_select_k_finds_separated_groups_and_one_range_everywhere():
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=600, centers=5, n_features=6, cluster_std=0.6, random_state=0)
    selection = select_k(x, seed=0, max_spots=300)
    assert selection.k == 5 and selection.n_spots == 300 and selection.ks == list(range(2, 13))
    assert SencaConfig().n_clusters_range == K_RANGE
    assert inspect.signature(cluster).parameters["k_range"].default == K_RANGE


def test_model_chooses_k_once_and_loads_without_an_anndata(tmp_path):
    adata = grid_adata(side=12)
    model = SENCA(adata, device="cpu", **{**FAST, "n_clusters": None}).train(progress_bar=False)
    assert model.k_selection is not None and model.k_selection["k"] == model.n_regions == model.module.centres.shape[0]
    assert "X_senca" in adata.obsm  # train() writes the embedding itself
    model.save(tmp_path / "m", save_anndata=True)
    loaded = SENCA.load(tmp_path / "m")
    assert np.array_equal(loaded.get_latent_representation(), model.get_latent_representation())
    assert loaded.k_selection == model.k_selection and loaded.adata.n_obs == adata.n_obs
    model.save(tmp_path / "bare")
    with pytest.raises(SencaInputError, match="pass adata="):
        SENCA.load(tmp_path / "bare")


# ------------------------------------------------------------------ one run, read as a scanpy user


@pytest.fixture(scope="module")
def section(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("section")
    simulate_tissue(n_spots=240, seed=3).write_h5ad(folder / "section.h5ad")
    return folder / "section.h5ad"


@pytest.fixture(scope="module")
def cli_run(section, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "out"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    stderr = io.StringIO()  # not a terminal: no progress bars expected
    capture.setattr(sys, "stderr", stderr)
    try:
        assert main(["run", str(section), "--out", str(out), "--save-model", *RUN_FLAGS]) == 0
    finally:
        capture.undo()
    return out, stderr.getvalue()


def test_every_phase_is_logged_with_its_time_and_counted_in_the_total(cli_run):
    out, log = cli_run
    for phase in ("reading", "preprocess", "patches", "training", "clustering", "markers", "umap", "plots", "writing"):
        assert re.search(rf"INFO {phase}: \d+\.\d s", log, re.IGNORECASE), phase
    assert "training restart 1/2" in log and "restart 2/2 trained" in log
    assert "image features: ResNet pass over 240 patches" in log
    assert "wrote obs" not in log
    assert "it/s" not in log and "\r" not in log  # no progress bars into a file or pipe
    seconds = json.loads((out / "metrics.json").read_text())["seconds"]
    phases = sum(v for k, v in seconds.items() if k != "total_s")
    assert seconds["total_s"] >= phases >= seconds["umap_s"] + seconds["training_s"]
    assert list(seconds)[-1] == "total_s"


def test_find_regions_equals_senca_run(cli_run, section):
    out, _ = cli_run
    settings = RunSettings.from_dict(read_toml(out / "config.toml"))
    result = senca.find_regions(senca.io.read(section), settings=settings, progress=False)
    regions = pd.read_csv(out / "regions.csv", dtype={"region": str})
    assert result.adata.obs["senca_region"].astype(str).tolist() == regions["region"].tolist()
    assert result.adata.obs["senca_region_name"].astype(str).tolist() == regions["name"].tolist()
    saved = ad.read_h5ad(out / "senca.h5ad")
    assert list(result.adata.uns["senca_region_colors"]) == list(saved.uns["senca_region_colors"])
    assert result.metrics["ari"] == pytest.approx(json.loads((out / "metrics.json").read_text())["ari"])


def test_config_supplies_the_input(cli_run, tmp_path):
    out, _ = cli_run
    again = tmp_path / "again"
    assert main(["run", "--config", str(out / "config.toml"), "--out", str(again), "-q"]) == 0
    assert (pd.read_csv(again / "regions.csv")["region"] == pd.read_csv(out / "regions.csv")["region"]).all()
    assert main(["run", "--out", str(tmp_path / "none"), "-q"]) == 2


def test_h5ad_holds_consensus_names_colours_and_loadings(cli_run):
    out, _ = cli_run
    adata = ad.read_h5ad(out / "senca.h5ad")
    info = adata.uns["senca_region"]
    assert info["restarts"] == 2 and list(info["seeds"]) == [0, 1000] and "bic" not in info
    assert info["n_clusters"] == adata.obs["senca_region"].nunique()
    names = dict(zip(adata.obs["senca_region"].cat.categories, adata.obs["senca_region_name"].cat.categories))
    assert names == {k: str(v) for k, v in info["names"].items()}
    assert len(adata.uns["senca_region_colors"]) == len(names)
    assert len(adata.uns["label_colors"]) == len(adata.obs["label"].cat.categories)
    assert adata.varm["PCs"].shape == (adata.n_vars, adata.obsm["X_pca"].shape[1])
    # The log-normalised layer is X, stored once and linked: read back, both are there and equal.
    assert (adata.layers["lognorm"] != adata.X).nnz == 0 and (adata.layers["counts"] != adata.X).nnz > 0
    with h5py.File(out / "senca.h5ad", "r") as f:
        assert f["layers/lognorm"] == f["X"] and f["layers/counts"] != f["X"]
    hvg = adata.var["highly_variable"].to_numpy()
    assert np.abs(adata.varm["PCs"][~hvg]).sum() == 0 and np.abs(adata.varm["PCs"][hvg]).sum() > 0
    loaded = SENCA.load(out / "model")  # --save-model: no AnnData needed
    assert np.allclose(loaded.get_latent_representation(), adata.obsm["X_senca"], atol=1e-5)


def _spot_colours(ax) -> list[str]:
    spots = max(ax.collections, key=lambda c: len(c.get_facecolors()))
    return [to_hex(c) for c in spots.get_facecolors()]


@pytest.mark.parametrize("key", ["senca_region", "senca_region_name", "label"])
def test_scanpy_spatial_draws_sencas_colours_and_names(cli_run, key):
    import scanpy as sc

    matplotlib.use("Agg")
    out, _ = cli_run
    adata = ad.read_h5ad(out / "senca.h5ad")
    ax = sc.pl.spatial(adata, color=key, show=False)[0]
    colours = np.asarray(adata.uns[f"{key}_colors"])[adata.obs[key].cat.codes.to_numpy()]
    assert _spot_colours(ax) == list(colours)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(adata.obs[key].cat.categories)


def test_squidpy_spatial_scatter_draws_sencas_colours(cli_run):
    sq = pytest.importorskip("squidpy", reason="squidpy is not installed (optional; pip install squidpy)")
    import matplotlib.pyplot as plt

    out, _ = cli_run
    adata = ad.read_h5ad(out / "senca.h5ad")
    sq.pl.spatial_scatter(adata, color="senca_region_name", shape="circle")
    ax = plt.gcf().axes[0]
    colours = np.asarray(adata.uns["senca_region_name_colors"])[adata.obs["senca_region_name"].cat.codes.to_numpy()]
    assert _spot_colours(ax) == list(colours)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(adata.obs["senca_region_name"].cat.categories)
    plt.close("all")


def test_without_labels_k_is_chosen_once_and_its_curve_drawn(tmp_path):
    from senca.cli.commands import scale_epochs
    from senca.outputs import write_outputs
    from senca.pipeline import run_section

    settings = RunSettings()
    scale_epochs(settings, 15)  # keeps one epoch of the region stage, which chooses k
    settings.clustering.restarts = 1
    sim = simulate_tissue(n_spots=200, seed=2)
    del sim.obs["label"]
    result = run_section(sim, settings, progress=False)
    info = result.adata.uns["senca_region"]
    selection = info["k_selection"]
    assert selection["k"] == result.model.n_regions == info["restart_k"][0] and K_RANGE[0] <= selection["k"] <= K_RANGE[1]
    assert result.metrics["n_regions"] <= selection["k"]  # refinement may empty a region, never add one
    assert result.adata.obs["senca_region_name"].astype(str).tolist() == result.adata.obs["senca_region"].astype(str).tolist()
    write_outputs(result, settings, tmp_path / "out", title="no labels")
    assert (tmp_path / "out" / "k_selection.png").is_file()
    assert 'data-file="k_selection.png"' in (tmp_path / "out" / "report.html").read_text()


# ------------------------------------------------------------------ images without texture


def test_image_too_coarse_for_texture_is_not_sent_through_the_resnet(caplog):
    from senca.cli.commands import scale_epochs
    from senca.pipeline import run_section

    settings = RunSettings()
    scale_epochs(settings, 6)
    settings.clustering.restarts = 1
    settings.image.min_spot_px = 20.0  # the simulated image has 17 px across a spot
    result = run_section(simulate_tissue(n_spots=200, seed=1), settings, progress=False)
    assert result.metrics["image"] == "none"
    lines = [r.getMessage() for r in caplog.records if "too few for texture" in r.getMessage()]
    assert len(lines) == 1 and "17.0 px across a spot" in lines[0]


# ------------------------------------------------------------------ README


def _readme_blocks(language: str, section: str) -> list[str]:
    """The ``language`` code blocks of the README section headed ``section``."""
    text = (ROOT / "README.md").read_text()
    body = text.split(section + "\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", body, re.S)


def test_readme_test_command_is_what_ci_runs():
    command = _readme_blocks("bash", "## Tests")[0].strip()
    assert command == 'pip install ".[test]" && python -m pytest -q'
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_readme_python_snippet_runs_as_written(monkeypatch, tmp_path):
    require(A1_IMAGE)
    # The snippet's paths are relative to the repository; run it from a folder beside the data
    # like the repository, so that what it saves lands in tmp_path.
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    namespace: dict = {}
    blocks = _readme_blocks("python", "## Python API")
    assert len(blocks) == 2
    for block in blocks:  # the one-call API, then the step-by-step one
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.metrics["restarts"] == 3 and result.adata.n_obs == 346
    assert "senca_region_name" in result.adata.obs and "X_senca" in result.adata.obsm
    assert SENCA.load(tmp_path / "repo" / "a1-model").adata.n_obs == 346


def test_auto_restart_jobs_uses_free_cores_only_where_safe_and_worth_it(monkeypatch):
    import senca.pipeline as pipeline
    from senca.settings import RunSettings

    settings = RunSettings()
    settings.device = "cpu"
    assert settings.clustering.restart_jobs == "auto"
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(pipeline, "workers_may_start", lambda: True)
    assert pipeline.restart_jobs(settings, 3, 5000) == 3  # three restarts share two cores, none waits
    assert pipeline.restart_jobs(settings, 4, 5000) == 2  # they divide evenly: one process per core
    assert pipeline.restart_jobs(settings, 5, 5000) == 2  # more than twice the cores: one per core
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert pipeline.restart_jobs(settings, 2, 5000) == 1  # one core: a process would only add its start-up
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert pipeline.restart_jobs(settings, 1, 5000) == 1
    monkeypatch.setattr(pipeline, "worker_server_started", lambda: True)
    assert pipeline.restart_jobs(settings, 3, 500) == 3  # forked from a running server: cheap
    monkeypatch.setattr(pipeline, "worker_server_started", lambda: False)
    assert pipeline.restart_jobs(settings, 3, 500) == 1  # too small to pay for starting one
    assert pipeline.restart_jobs(settings, 3, 5000) == 3
    monkeypatch.setattr(pipeline, "workers_may_start", lambda: False)
    assert pipeline.restart_jobs(settings, 3, 5000) == 1  # a script without a known __main__ guard


def test_workers_may_start_not_under_pytest_but_for_the_senca_command(monkeypatch):
    import sys
    import types

    import senca._process as process

    assert not process.workers_may_start()  # pytest's __main__ is a file of another package
    command = types.ModuleType("__main__")
    command.__file__ = "/venv/bin/senca"
    monkeypatch.setitem(sys.modules, "__main__", command)
    assert process.workers_may_start()
    interactive = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", interactive)
    assert process.workers_may_start()
    # a daemonic process (a Dask worker) may not start processes of its own
    monkeypatch.setattr(process.multiprocessing.current_process(), "daemon", True, raising=False)
    assert not process.workers_may_start()


def test_auto_restart_processes_are_capped_by_free_memory(monkeypatch):
    import numpy as np
    import scipy.sparse as sp
    from anndata import AnnData

    import senca.pipeline as pipeline

    adata = AnnData(sp.random(1000, 500, density=0.1, format="csr", dtype=np.float32, random_state=0))
    adata.obsm["X_pca"] = np.zeros((1000, 50), dtype=np.float32)
    patches = np.zeros((1000, 3, 64, 64), dtype=np.uint8)
    per_process = 3 * (adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes
                       + adata.obsm["X_pca"].nbytes + patches.nbytes) + pipeline._PROCESS_OVERHEAD_BYTES
    monkeypatch.setattr(pipeline, "available_memory", lambda: 10 * per_process)
    assert pipeline._affordable_jobs(3, adata, patches, None) == 3
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2 * per_process + 1)
    assert pipeline._affordable_jobs(3, adata, patches, None) == 2
    monkeypatch.setattr(pipeline, "available_memory", lambda: per_process // 2)
    assert pipeline._affordable_jobs(3, adata, patches, None) == 1
    assert pipeline.available_memory() > 0


def test_image_usable_checks_each_section_of_a_multi_section_anndata():
    import numpy as np
    from anndata import AnnData

    from senca.pipeline import _image_usable

    adata = AnnData(np.ones((4, 2), dtype=np.float32))
    adata.obs["section"] = ["a", "a", "b", "b"]

    def library(spot_px: float) -> dict:
        return {"images": {"lowres": np.zeros((50, 50, 3), dtype=np.uint8)},
                "scalefactors": {"tissue_lowres_scalef": spot_px / 100.0, "spot_diameter_fullres": 100.0}}

    adata.uns["spatial"] = {"a": library(20.0), "b": library(20.0)}
    assert _image_usable(adata, 8.0, library_key="section")
    adata.uns["spatial"]["b"] = library(4.0)  # a Visium lowres image in one of the sections
    assert not _image_usable(adata, 8.0, library_key="section")


def test_write_h5ad_stores_a_layer_that_is_x_once(tmp_path):
    adata = simulate_tissue(n_spots=200, seed=0, image=False)
    adata.layers["lognorm"] = adata.X
    adata.layers["counts"] = counts = adata.X.copy()  # equal values, but a matrix of its own
    senca.io.write_h5ad(adata, tmp_path / "a.h5ad")
    # left as it was: the same matrices, in the same order
    assert list(adata.layers) == ["lognorm", "counts"]
    assert adata.layers["lognorm"] is adata.X and adata.layers["counts"] is counts
    with h5py.File(tmp_path / "a.h5ad", "r") as f:
        assert f["layers/lognorm"] == f["X"] and f["layers/counts"] != f["X"]
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert (back.layers["lognorm"] != adata.X).nnz == 0 and (back.layers["counts"] != adata.X).nnz == 0


def test_write_h5ad_leaves_dense_embeddings_uncompressed(tmp_path):
    adata = simulate_tissue(n_spots=200, seed=0, image=False)
    adata.obsm["X_senca"] = embedding = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    adata.obsm["counts_sum"] = np.arange(200)[:, None]  # integers: compressed as before
    before = list(adata.obsm)
    senca.io.write_h5ad(adata, tmp_path / "a.h5ad")
    assert list(adata.obsm) == before and adata.obsm["X_senca"] is embedding
    with h5py.File(tmp_path / "a.h5ad", "r") as f:
        assert f["obsm/X_senca"].compression is None and f["obsm/spatial"].compression is None
        assert f["obsm/counts_sum"].compression == "gzip" and f["X/data"].compression == "gzip"
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert set(back.obsm) == set(before)
    np.testing.assert_array_equal(back.obsm["X_senca"], embedding)
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
