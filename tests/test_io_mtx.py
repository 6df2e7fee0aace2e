"""Space Ranger MTX folders: layouts, preference for the .h5, damaged files, the real DLPFC sections."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

import senca.io as io
from senca.errors import SencaInputError
from conftest import DATA, require
from test_io_errors import write_visium

COUNTS = np.array([[1, 0, 3], [0, 5, 0], [7, 0, 9], [2, 2, 0], [0, 0, 4], [6, 1, 1]])  # spots x genes


def write_mtx(folder, gz=True, feature_columns=3, genes_name="features.tsv", counts=COUNTS, barcodes=None):
    """A filtered_feature_bc_matrix/ folder as Space Ranger writes it (genes x barcodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_spots, n_genes = counts.shape
    barcodes = barcodes or [f"BC{i}-1" for i in range(n_spots)]
    features = pd.DataFrame({"id": [f"E{g}" for g in range(n_genes)], "name": [f"G{g}" for g in range(n_genes)],
                             "type": ["Gene Expression"] * n_genes}).iloc[:, :feature_columns]
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(counts.T), field="integer")
    features.to_csv(folder / genes_name, sep="\t", header=False, index=False)
    pd.Series(barcodes).to_csv(folder / "barcodes.tsv", header=False, index=False)
    if gz:
        for name in ("matrix.mtx", genes_name, "barcodes.tsv"):
            with open(folder / name, "rb") as src, gzip.open(folder / f"{name}.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            (folder / name).unlink()
    return folder


def visium_with_mtx(tmp_path, **kwargs):
    folder = write_visium(tmp_path / "v")
    (folder / "filtered_feature_bc_matrix.h5").unlink()
    write_mtx(folder / "filtered_feature_bc_matrix", **kwargs)
    return folder


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("feature_columns,genes_name", [(3, "features.tsv"), (2, "genes.tsv"), (1, "genes.tsv")])
def test_mtx_layouts_read_the_same_counts(tmp_path, gz, feature_columns, genes_name):
    folder = visium_with_mtx(tmp_path, gz=gz, feature_columns=feature_columns, genes_name=genes_name)
    assert io.detect_format(folder) == "visium"
    adata = io.read(folder)
    assert adata.X.toarray().tolist() == COUNTS.tolist()
    expected_names = [f"G{g}" for g in range(3)] if feature_columns > 1 else [f"E{g}" for g in range(3)]
    assert list(adata.var_names) == expected_names
    assert list(adata.obs_names) == [f"BC{i}-1" for i in range(6)]
    assert np.allclose(adata.obsm["spatial"][1], [200.0, 100.0])


def test_h5_preferred_over_mtx(tmp_path):
    folder = write_visium(tmp_path / "v")  # .h5 holds other counts (1..18)
    write_mtx(folder / "filtered_feature_bc_matrix")
    adata = io.read_visium(folder)
    assert adata.X[0].toarray().ravel().tolist() == [1, 7, 13]


def test_only_gene_expression_features_kept(tmp_path):
    folder = write_mtx(tmp_path / "m", gz=False)
    table = pd.read_csv(folder / "features.tsv", sep="\t", header=None)
    table.iloc[1, 2] = "Antibody Capture"
    table.to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
    adata = io.read_10x_mtx(folder)
    assert list(adata.var_names) == ["G0", "G2"]
    assert adata.X.toarray().tolist() == COUNTS[:, [0, 2]].tolist()


def _rewrite(path, edit):
    path.write_text(edit(path.read_text()))


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("%%MatrixMarket", "%%Nonsense"), "expected a MatrixMarket header"),
    (lambda t: t.replace("\n3 6 ", "\n3 x ", 1), "size line"),
    (lambda t: t.rstrip("\n").rsplit("\n", 1)[0] + "\n", "entries; the size line declares"),
    (lambda t: t.rstrip("\n") + "\n",  None),  # unchanged: must read
])
def test_damaged_matrix_named(tmp_path, edit, message):
    folder = write_mtx(tmp_path / "m", gz=False)
    _rewrite(folder / "matrix.mtx", edit)
    if message is None:
        assert io.read_10x_mtx(folder).n_obs == 6
    else:
        with pytest.raises(SencaInputError, match=message) as err:
            io.read_10x_mtx(folder)
        assert "matrix.mtx" in str(err.value)


def test_index_out_of_range_caught_before_scipy(tmp_path):
    folder = write_mtx(tmp_path / "m", gz=False)
    lines = (folder / "matrix.mtx").read_text().splitlines()
    header_end = next(i for i, line in enumerate(lines) if not line.startswith("%"))
    lines[header_end + 1] = "4 1 5"  # gene 4 of 3
    (folder / "matrix.mtx").write_text("\n".join(lines) + "\n")
    with pytest.raises(SencaInputError, match=r"gene indices range .*expected 1\.\.3"):
        io.read_10x_mtx(folder)


def test_table_lengths_must_match_the_matrix(tmp_path):
    folder = write_mtx(tmp_path / "m", gz=False, barcodes=[f"BC{i}-1" for i in range(6)])
    (folder / "barcodes.tsv").write_text("A-1\nB-1\n")
    with pytest.raises(SencaInputError, match=r"barcodes.tsv: 2 barcodes; matrix.mtx declares 6 spots"):
        io.read_10x_mtx(folder)


def test_corrupt_gzip_named(tmp_path):
    folder = write_mtx(tmp_path / "m", gz=True)
    data = bytearray((folder / "matrix.mtx.gz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "matrix.mtx.gz").write_bytes(bytes(data))
    with pytest.raises(SencaInputError, match="matrix.mtx.gz"):
        io.read_10x_mtx(folder)


def test_missing_files_named(tmp_path):
    folder = write_mtx(tmp_path / "m", gz=True)
    (folder / "barcodes.tsv.gz").unlink()
    with pytest.raises(SencaInputError, match=r"barcodes.tsv\(.gz\) not found"):
        io.read_10x_mtx(folder)


@pytest.mark.parametrize("name,n_spots,positions", [("151673", 3639, "tissue_positions_list.csv"),
                                                    ("151674", 3673, "tissue_positions.csv")])
def test_real_dlpfc_mtx_sections(name, n_spots, positions):
    folder = require(DATA / "dlpfc" / name)
    assert (folder / "spatial" / positions).is_file()
    adata = io.read(folder, labels=folder / "layer_labels.tsv")
    assert adata.shape == (n_spots, 5000)
    assert adata.var_names[0].startswith("ENSG")
    assert set(adata.obs["label"].dropna().unique()) == {f"Layer{i}" for i in range(1, 7)} | {"WM"}
    assert 26 <= adata.obs["label"].isna().sum() <= 38
    # Raw integer UMI counts, independent check of the first entry against the file itself.
    x = adata.X
    assert np.all(x.data == np.round(x.data)) and x.data.min() >= 1
    with gzip.open(folder / "filtered_feature_bc_matrix" / "matrix.mtx.gz", "rt") as f:
        f.readline(), f.readline()
        gene, spot, count = (int(v) for v in f.readline().split())
    assert x[spot - 1, gene - 1] == count
