"""SpatialData stores in and out, Space Ranger run folders and .h5 paths."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from senca.io import detect_format, read
from senca.simulation import simulate_tissue

sd = pytest.importorskip("spatialdata", reason="spatialdata is not installed (pip install \"senca[spatialdata]\")")


def write_store(path, n_spots=200, seed=0):
    """A small SpatialData store as spatialdata-io writes Visium: table, circles, hires image."""
    from geopandas import GeoDataFrame
    from shapely import points
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    sim = simulate_tissue(n_spots=n_spots, seed=seed)
    library = next(iter(sim.uns["spatial"].values()))
    scalef = library["scalefactors"]["tissue_hires_scalef"]
    diameter = library["scalefactors"]["spot_diameter_fullres"]
    ids = np.arange(sim.n_obs) + 100  # instance ids differ from the table's obs names
    circles = ShapesModel.parse(GeoDataFrame({"radius": np.full(sim.n_obs, diameter / 2)}, geometry=points(sim.obsm["spatial"]),
                                             index=pd.Index(ids)), transformations={"global": Identity()})
    image = Image2DModel.parse(np.moveaxis(library["images"]["hires"], -1, 0), dims=("c", "y", "x"),
                               transformations={"global": Scale([1 / scalef, 1 / scalef], axes=("x", "y"))})
    table = ad.AnnData(sim.X.copy(), obs=pd.DataFrame({"region": pd.Categorical(["spots"] * sim.n_obs), "spot_id": ids,
                                                        "label": sim.obs["label"].to_numpy()}, index=sim.obs_names),
                       var=sim.var[[]].copy())
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    sd.SpatialData(images={"sample_hires_image": image}, shapes={"spots": circles}, tables={"table": table}).write(path)
    return sim


def test_spatialdata_store_reads_like_the_section_it_was_written_from(tmp_path):
    store = tmp_path / "section.zarr"
    sim = write_store(store)
    assert detect_format(store) == "spatialdata"
    adata = read(store)
    assert adata.n_obs == sim.n_obs and list(adata.obs_names) == list(sim.obs_names)
    np.testing.assert_allclose(adata.obsm["spatial"], sim.obsm["spatial"])
    assert (adata.X != sim.X).nnz == 0
    library = adata.uns["spatial"]["spots"]
    original = next(iter(sim.uns["spatial"].values()))
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(original["scalefactors"]["spot_diameter_fullres"])
    assert library["scalefactors"]["tissue_hires_scalef"] == pytest.approx(original["scalefactors"]["tissue_hires_scalef"])
    np.testing.assert_array_equal(library["images"]["hires"], original["images"]["hires"])
    assert adata.uns["spatialdata"]["instance_key"] == "spot_id" and adata.obs["spot_id"].iloc[0] == 100


def test_senca_run_on_a_store_writes_the_regions_back_as_a_spatialdata_table(tmp_path):
    from senca.cli.main import main

    store = tmp_path / "section.zarr"
    sim = write_store(store)
    out = tmp_path / "out"
    assert main(["run", str(store), "--out", str(out), "-q", "--epochs", "6", "--patch-size", "32", "--restarts", "1"]) == 0
    regions = pd.read_csv(out / "regions.csv", dtype={"region": str})
    back = sd.read_zarr(out / "senca.zarr")
    table = back.tables["senca_regions"]
    assert table.uns["spatialdata_attrs"]["region"] == "spots"
    assert list(table.obs_names) == list(regions["spot"])
    assert table.obs["senca_region"].astype(str).tolist() == regions["region"].tolist()
    # The same spot ids as the input store's table, so the table can join it there.
    input_ids = dict(zip(sim.obs_names, np.arange(sim.n_obs) + 100))
    assert table.obs["instance_id"].tolist() == [input_ids[s] for s in regions["spot"]]
    assert list(table.uns["senca_region_colors"]) == list(ad.read_h5ad(out / "senca.h5ad").uns["senca_region_colors"])
    assert back.shapes["spots"].shape[0] == len(regions)


def test_space_ranger_run_folder_and_h5_path_are_recognised(tmp_path):
    from conftest import DLPFC, require

    require(DLPFC)
    run = tmp_path / "run"
    outs = run / "outs"
    shutil.copytree(DLPFC, outs)
    assert detect_format(run) == "visium" and detect_format(outs / "filtered_feature_bc_matrix.h5") == "visium"
    a, b = read(run), read(outs / "filtered_feature_bc_matrix.h5")
    assert a.n_obs == b.n_obs == read(DLPFC).n_obs
    assert json.loads((outs / "spatial" / "scalefactors_json.json").read_text())["spot_diameter_fullres"] > 0
