"""Every bad input gets a SencaInputError naming the file, the field and what was expected."""

from __future__ import annotations

import gzip
import json

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image

import senca.io as io
from senca.errors import SencaInputError


def write_st(tmp_path, n=12, counts=None, selection=None, labels=None):
    """A small legacy-ST section on disk: 4 x 3 grid, 200 px apart."""
    xs, ys = np.meshgrid(np.arange(4) + 2, np.arange(3) + 2)
    xs, ys = xs.ravel()[:n], ys.ravel()[:n]
    ids = [f"{x}x{y}" for x, y in zip(xs, ys)]
    rng = np.random.default_rng(0)
    if counts is None:
        counts = pd.DataFrame(rng.poisson(3, (n, 5)), index=ids, columns=[f"G{i}" for i in range(5)])
    if selection is None:
        selection = pd.DataFrame({"x": xs, "y": ys, "new_x": xs, "new_y": ys,
                                  "pixel_x": xs * 200.0, "pixel_y": ys * 200.0, "selected": 1})
    counts_path = tmp_path / "S.tsv.gz"
    with gzip.open(counts_path, "wt") as f:
        counts.to_csv(f, sep="\t")
    selection_path = tmp_path / "S_selection.tsv"
    selection.to_csv(selection_path, sep="\t", index=False)
    label_path = None
    if labels is not None:
        label_path = tmp_path / "S_labels.tsv"
        labels.to_csv(label_path, sep="\t", index=False)
    return counts_path, selection_path, label_path, ids


def test_valid_small_section_reads(tmp_path):
    labels = pd.DataFrame({"x": np.r_[2:6, 2:6, 2:6] + 0.02, "y": np.repeat([2, 3, 4], 4) - 0.01,
                           "label": ["a", "b"] * 6})
    counts, spots, label_path, ids = write_st(tmp_path, labels=labels)
    adata = io.read_st(counts, spots, labels=label_path)
    assert list(adata.obs_names) == ids
    assert np.allclose(adata.obsm["spatial"][0], [400.0, 400.0])
    assert list(adata.obs["label"]) == ["a", "b"] * 6
    assert adata.uns["spatial"]["S"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100.0)


def test_missing_column_named(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    table = pd.read_csv(spots, sep="\t").drop(columns="pixel_y")
    table.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SencaInputError, match=r"S_selection\.tsv: the spot selection file lacks column\(s\) 'pixel_y'"):
        io.read_st(counts, spots)


def test_label_file_missing_label_column(tmp_path):
    labels = pd.DataFrame({"x": [2], "y": [2], "region": ["a"]})
    counts, spots, label_path, _ = write_st(tmp_path, labels=labels)
    with pytest.raises(SencaInputError, match=r"S_labels\.tsv: the label file lacks column\(s\) 'label'"):
        io.read_st(counts, spots, labels=label_path)


def test_spot_ids_that_do_not_join_are_counted_and_shown(tmp_path):
    counts, spots, _, ids = write_st(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    table.loc[:2, "x"] += 100  # three spots lose their coordinates
    table.to_csv(spots, sep="\t", index=False)
    with pytest.raises(SencaInputError) as err:
        io.read_st(counts, spots)
    message = str(err.value)
    assert "S.tsv.gz: 3 of 12 spot id(s) in the counts table have no row in the spot selection file" in message
    assert ids[0] in message and ids[1] in message


def test_labels_that_join_nowhere(tmp_path):
    labels = pd.DataFrame({"x": [90, 91], "y": [90, 91], "label": ["a", "b"]})
    counts, spots, label_path, _ = write_st(tmp_path, labels=labels)
    with pytest.raises(SencaInputError, match=r"S_labels\.tsv: none of the 2 labelled spot id\(s\) match the 12 spots"):
        io.read_st(counts, spots, labels=label_path)


def test_duplicate_spot_ids(tmp_path):
    counts_table = pd.DataFrame(np.ones((3, 2)), index=["2x2", "3x2", "2x2"], columns=["A", "B"])
    counts, spots, _, _ = write_st(tmp_path, counts=counts_table)
    with pytest.raises(SencaInputError, match=r"spot ids \(row names\) of the counts table must be unique; 1 id\(s\) repeat, e\.g\. 2x2"):
        io.read_st(counts, spots)


def test_duplicate_selection_ids(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    table = pd.read_csv(spots, sep="\t")
    pd.concat([table, table.iloc[:1]]).to_csv(spots, sep="\t", index=False)
    with pytest.raises(SencaInputError, match=r"S_selection\.tsv: spot ids built from 'x' and 'y' .* must be unique"):
        io.read_st(counts, spots)


@pytest.mark.parametrize("value, expected", [(np.nan, "NaN/infinite"), (-2, "negative value")])
def test_bad_count_values(tmp_path, value, expected):
    counts, spots, _, ids = write_st(tmp_path)
    table = pd.read_csv(counts, sep="\t", index_col=0)
    table.iloc[1, 1] = value
    with gzip.open(counts, "wt") as f:
        table.to_csv(f, sep="\t")
    with pytest.raises(SencaInputError, match=rf"S\.tsv\.gz: counts contain 1 {expected}"):
        io.read_st(counts, spots)


def test_empty_counts(tmp_path):
    empty = pd.DataFrame(columns=["A", "B"], dtype=float)
    counts, spots, _, _ = write_st(tmp_path, counts=empty)
    with pytest.raises(SencaInputError, match=r"S\.tsv\.gz: the counts table has no rows"):
        io.read_st(counts, spots)


def test_all_zero_counts(tmp_path):
    zeros = pd.DataFrame(np.zeros((12, 3)), index=write_st(tmp_path)[3], columns=["A", "B", "C"])
    counts, spots, _, _ = write_st(tmp_path, counts=zeros)
    with pytest.raises(SencaInputError, match=r"counts matrix has no non-zero value"):
        io.read_st(counts, spots)


def test_unreadable_image(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    bad = tmp_path / "he.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(SencaInputError, match=r"he\.png: cannot read the H&E image"):
        io.read_st(counts, spots, image=bad, image_scale=1.0)


def test_image_far_smaller_than_coordinates_imply(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 80), (200, 150, 200)).save(small)
    with pytest.raises(SencaInputError, match=r"small\.png: image is 100 x 80 px but the spot coordinates times the scale factor 1 reach x=1000, y=800"):
        io.read_st(counts, spots, image=small, image_scale=1.0)


def test_image_without_scale_factor(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    image = tmp_path / "he.png"
    Image.new("RGB", (1200, 1000), (200, 150, 200)).save(image)
    with pytest.raises(SencaInputError, match=r"he\.png: the image scale factor is missing"):
        io.read_st(counts, spots, image=image)


def test_missing_counts_file(tmp_path):
    with pytest.raises(SencaInputError, match=r"nope\.tsv\.gz: counts table not found"):
        io.read_st(tmp_path / "nope.tsv.gz", tmp_path / "x.tsv")


def test_her2st_unknown_sample_lists_known(tmp_path):
    (tmp_path / "ST-cnts").mkdir()
    (tmp_path / "ST-cnts" / "A1.tsv.gz").write_bytes(b"")
    with pytest.raises(SencaInputError, match=r"no counts for sample 'Z9'.*samples found: A1"):
        io.read_her2st(tmp_path, "Z9")


# ---- Visium ----------------------------------------------------------------------------------

def write_visium(folder, n=6, header=False, scalefactors=None, barcodes=None, positions_barcodes=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spatial").mkdir(exist_ok=True)
    barcodes = barcodes or [f"BC{i}-1" for i in range(n)]
    matrix = sp.csc_matrix(np.arange(1, 3 * n + 1, dtype=np.int32).reshape(3, n))  # genes x spots
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = matrix.data, matrix.indices, matrix.indptr
        g["shape"] = np.array(matrix.shape)
        g["barcodes"] = np.array(barcodes, dtype="S")
        feats = g.create_group("features")
        feats["name"] = np.array(["GA", "GB", "GC"], dtype="S")
        feats["id"] = np.array(["E1", "E2", "E3"], dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * 3, dtype="S")
    rows = [[b, 1, i // 3, i % 3, 100 + 100 * (i // 3), 100 + 100 * (i % 3)] for i, b in enumerate(positions_barcodes or barcodes)]
    table = pd.DataFrame(rows, columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"])
    if header:
        table.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    else:
        table.to_csv(folder / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    sf = {"spot_diameter_fullres": 50.0, "tissue_lowres_scalef": 0.5} if scalefactors is None else scalefactors
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    Image.new("RGB", (300, 300), (210, 160, 200)).save(folder / "spatial" / "tissue_lowres_image.png")
    return folder


@pytest.mark.parametrize("header", [False, True])
def test_visium_both_position_layouts(tmp_path, header):
    adata = io.read_visium(write_visium(tmp_path / "v", header=header))
    assert adata.n_obs == 6 and list(adata.var_names) == ["GA", "GB", "GC"]
    assert adata.X[0].toarray().ravel().tolist() == [1, 7, 13]
    assert np.allclose(adata.obsm["spatial"][1], [200.0, 100.0])  # [x=col, y=row]
    assert "lowres" in adata.uns["spatial"]["v"]["images"]


def test_visium_missing_image_scale_factor(tmp_path):
    folder = write_visium(tmp_path / "v", scalefactors={"spot_diameter_fullres": 50.0})
    with pytest.raises(SencaInputError, match=r"scalefactors_json\.json: field 'tissue_lowres_scalef' is missing"):
        io.read_visium(folder)


def test_visium_missing_spot_diameter(tmp_path):
    folder = write_visium(tmp_path / "v", scalefactors={"tissue_lowres_scalef": 0.5})
    with pytest.raises(SencaInputError, match=r"scalefactors_json\.json: field 'spot_diameter_fullres' is missing"):
        io.read_visium(folder)


def test_visium_barcodes_that_do_not_join(tmp_path):
    folder = write_visium(tmp_path / "v", positions_barcodes=[f"XX{i}-1" for i in range(6)])
    with pytest.raises(SencaInputError, match=r"filtered_feature_bc_matrix\.h5: 6 of 6 spot id\(s\) in the feature-barcode matrix have no row in the tissue positions"):
        io.read_visium(folder)


def test_visium_positions_with_wrong_columns(tmp_path):
    folder = write_visium(tmp_path / "v")
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(folder / "spatial" / "tissue_positions_list.csv", index=False, header=False)
    with pytest.raises(SencaInputError, match=r"tissue_positions_list\.csv: tissue positions have 2 column\(s\); expected 6"):
        io.read_visium(folder)


def test_visium_matrix_without_required_field(tmp_path):
    folder = write_visium(tmp_path / "v")
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "a") as f:
        del f["matrix/indptr"]
    with pytest.raises(SencaInputError, match=r"'matrix/indptr' is missing"):
        io.read_visium(folder)


def test_label_table_missing_column_and_duplicates(tmp_path):
    adata = io.read_visium(write_visium(tmp_path / "v"))
    single = tmp_path / "one.tsv"
    pd.DataFrame({"barcode": ["BC0-1"]}).to_csv(single, sep="\t", index=False)
    with pytest.raises(SencaInputError, match=r"one\.tsv: label table has 1 column\(s\)"):
        io.read_labels(adata, single)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"barcode": ["BC0-1", "BC0-1"], "layer": ["L1", "L2"]}).to_csv(dup, index=False)
    with pytest.raises(SencaInputError, match=r"dup\.csv: spot ids in column 'barcode' of the label table must be unique"):
        io.read_labels(adata, dup)
    good = tmp_path / "good.csv"
    pd.DataFrame({"barcode": ["BC0-1", "BC3-1"], "layer": ["L1", "L2"]}).to_csv(good, index=False)
    io.read_labels(adata, good)
    assert adata.obs["label"].iloc[[0, 3]].tolist() == ["L1", "L2"] and adata.obs["label"].isna().sum() == 4


# ---- h5ad ------------------------------------------------------------------------------------

def test_h5ad_round_trip_and_validation(tmp_path):
    adata = io.read_visium(write_visium(tmp_path / "v"))
    path = tmp_path / "ok.h5ad"
    adata.write_h5ad(path)
    back = io.read(path)
    assert back.n_obs == 6 and np.allclose(back.obsm["spatial"], adata.obsm["spatial"])
    del adata.obsm["spatial"]
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(SencaInputError, match=r"bad\.h5ad: obsm\['spatial'\] is missing"):
        io.read(tmp_path / "bad.h5ad")


def test_h5ad_image_without_scalefactor(tmp_path):
    adata = ad.AnnData(sp.csr_matrix(np.ones((3, 2), np.float32)))
    adata.obsm["spatial"] = np.array([[1.0, 1], [2, 2], [3, 3]])
    adata.uns["spatial"] = {"lib": {"images": {"hires": np.zeros((10, 10, 3), np.uint8)}, "scalefactors": {"spot_diameter_fullres": 1.0}}}
    with pytest.raises(SencaInputError, match=r"\['scalefactors'\]\['tissue_hires_scalef'\] is missing"):
        io.validate_adata(adata, "x.h5ad")


def test_unknown_format(tmp_path):
    (tmp_path / "thing.txt").write_text("x")
    with pytest.raises(SencaInputError, match=r"thing\.txt: cannot tell the input format"):
        io.read(tmp_path / "thing.txt")
