"""Hostile files at the reader boundary: each one is refused with a SencaInputError naming file and field.

Before these checks, some of them crashed the process (a segmentation fault in scipy), read
as all-zero counts, or turned the image all white or all black without a word.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

import senca.io as io
from senca.errors import SencaInputError
from senca.io._tables import read_number_table, read_table
from senca.io.image import read_image, to_uint8_rgb
from test_io_errors import write_st, write_visium

H5 = "filtered_feature_bc_matrix.h5"


def edit_matrix(folder, **fields):
    with h5py.File(folder / H5, "a") as f:
        for name, value in fields.items():
            del f[f"matrix/{name}"]
            f[f"matrix/{name}"] = value


@pytest.mark.parametrize("fields, message", [
    ({"indices": np.array([0, 1, 2, 0, 1, 99] * 3, dtype=np.int64)}, r"'matrix/indices' range over 0\.\.99; expected gene indices 0\.\.2"),
    ({"indices": np.array([0, 1, 2, 0, 1, 3] * 3, dtype=np.int64)}, r"range over 0\.\.3; expected gene indices 0\.\.2"),
    ({"indices": np.array([0, 1, -5, 0, 1, 2] * 3, dtype=np.int64)}, r"range over -5\.\.2"),
    ({"indptr": np.array([0, 3, 2, 9, 12, 15, 18])}, r"'matrix/indptr' must rise from 0 to 18"),
    ({"indptr": np.array([0, 3, 6])}, r"'matrix/indptr' has 3 entries; expected 7"),
    ({"shape": np.array([3, 6, 1])}, r"'matrix/shape' is \[3, 6, 1\]; expected two non-negative integers"),
    ({"shape": np.array([2, 6])}, r"range over 0\.\.2; expected gene indices 0\.\.1"),
    ({"shape": np.array([3.5, 6.0])}, r"'matrix/shape' is \[3\.5, 6\.0\]"),
    ({"barcodes": np.array([b"A-1", b"B-1"])}, r"'matrix/barcodes' has 2 entries; expected 6"),
    ({"indices": np.array([0.5] * 18)}, r"'matrix/indices' has dtype float64"),
])
def test_10x_sparse_arrays_checked_before_scipy(tmp_path, fields, message):
    folder = write_visium(tmp_path / "v")
    edit_matrix(folder, **fields)
    with pytest.raises(SencaInputError, match=message) as err:
        io.read_visium(folder)
    assert H5 in str(err.value)


def test_corrupt_h5_and_gz_are_input_errors(tmp_path):
    folder = write_visium(tmp_path / "v")
    raw = bytearray((folder / H5).read_bytes())
    (folder / H5).write_bytes(bytes(raw[: len(raw) // 3]))  # cut short
    with pytest.raises(SencaInputError, match=r"filtered_feature_bc_matrix\.h5: cannot read the 10x HDF5 matrix"):
        io.read_visium(folder)
    counts, spots, _, _ = write_st(tmp_path)
    data = bytearray(counts.read_bytes())
    for i in range(12, len(data) - 8, 7):  # flip bits inside the deflate stream
        data[i] ^= 0x55
    counts.write_bytes(bytes(data))
    with pytest.raises(SencaInputError, match=r"S\.tsv\.gz: cannot read the counts table"):
        io.read_st(counts, spots)


@pytest.mark.parametrize("value", ["0.5", None, float("nan"), 10**400, 0, -0.2, True, [0.5], 1e308])
def test_visium_bad_image_scale_factor(tmp_path, value):
    text = json.dumps({"spot_diameter_fullres": 50.0, "tissue_lowres_scalef": value})
    folder = write_visium(tmp_path / "v")
    (folder / "spatial" / "scalefactors_json.json").write_text(text)
    with pytest.raises(SencaInputError, match=r"scalefactors_json\.json: scale factor 'tissue_lowres_scalef' is .*expected a positive number"):
        io.read_visium(folder)


@pytest.mark.parametrize("value", [0, float("nan"), 1e308, -3, "50", 0.01, 1e6])
def test_visium_bad_spot_diameter(tmp_path, value):
    folder = write_visium(tmp_path / "v")
    (folder / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": value, "tissue_lowres_scalef": 0.5}))
    with pytest.raises(SencaInputError, match=r"scalefactors_json\.json: scale factor 'spot_diameter_fullres' is"):
        io.read_visium(folder)


def test_huge_array_coordinates_refused_not_overflowed(tmp_path):
    folder = write_visium(tmp_path / "v")
    path = folder / "spatial" / "tissue_positions_list.csv"
    lines = path.read_text().splitlines()
    fields = lines[0].split(",")
    fields[2] = "1" + "0" * 30
    path.write_text("\n".join([",".join(fields)] + lines[1:]) + "\n")
    with pytest.raises(SencaInputError, match=r"tissue_positions_list\.csv: column 'array_row' of the tissue positions must hold whole numbers"):
        io.read_visium(folder)
    counts, spots, _, _ = write_st(tmp_path)
    table = spots.read_text().splitlines()
    row = table[1].split("\t")
    row[0] = "1e300"
    spots.write_text("\n".join([table[0], "\t".join(row)] + table[2:]) + "\n")
    with pytest.raises(SencaInputError, match=r"S_selection\.tsv: column 'x' of the spot selection file"):
        io.read_st(counts, spots)


def _section(n=3):
    adata = ad.AnnData(sp.csr_matrix(np.arange(1, 2 * n + 1, dtype=np.float32).reshape(n, 2)))
    adata.obsm["spatial"] = np.array([[10.0, 10], [20, 20], [30, 30]])[:n]
    return adata


@pytest.mark.parametrize("scalefactors, message", [
    ({"tissue_hires_scalef": 0, "spot_diameter_fullres": 5.0}, r"'tissue_hires_scalef' is 0; expected a positive number"),
    ({"tissue_hires_scalef": -1.0, "spot_diameter_fullres": 5.0}, r"'tissue_hires_scalef' is -1\.0"),
    ({"tissue_hires_scalef": "1", "spot_diameter_fullres": 5.0}, r"'tissue_hires_scalef' is '1' \(str\)"),
    ({"tissue_hires_scalef": 1.0, "spot_diameter_fullres": np.inf}, r"'spot_diameter_fullres' is inf"),
    ([1.0], r"\['scalefactors'\]: scale factors are a list"),
])
def test_h5ad_scalefactors_validated(scalefactors, message):
    adata = _section()
    adata.uns["spatial"] = {"lib": {"images": {"hires": np.zeros((40, 40, 3), np.uint8)}, "scalefactors": scalefactors}}
    with pytest.raises(SencaInputError, match=r"x\.h5ad: uns\['spatial'\]\['lib'\].*" + message):
        io.validate_adata(adata, "x.h5ad")


@pytest.mark.parametrize("spatial, message", [
    ("a string", r"uns\['spatial'\] is a str; expected a dict of libraries"),
    ({"lib": [1, 2]}, r"uns\['spatial'\]\['lib'\] is a list; expected a dict"),
    ({"lib": {"images": [np.zeros((4, 4, 3))]}}, r"uns\['spatial'\]\['lib'\]\['images'\] is a list; expected a dict"),
])
def test_h5ad_uns_spatial_of_wrong_type(spatial, message):
    adata = _section()
    adata.uns["spatial"] = spatial
    with pytest.raises(SencaInputError, match=r"x\.h5ad: " + message):
        io.validate_adata(adata, "x.h5ad")


def test_h5ad_coordinates_that_coincide_or_explode():
    adata = _section()
    adata.obsm["spatial"] = np.ones((3, 2))
    with pytest.raises(SencaInputError, match=r"x\.h5ad: all 3 spots of obsm\['spatial'\] sit at the same point"):
        io.validate_adata(adata, "x.h5ad")
    adata.obsm["spatial"] = np.array([[0.0, 0], [1e300, 1], [2, 2]])
    with pytest.raises(SencaInputError, match=r"x\.h5ad: obsm\['spatial'\] reach 1e\+300"):
        io.validate_adata(adata, "x.h5ad")


def test_float_image_of_scanpy_becomes_8bit():
    """sc.read_visium stores images as floats in 0..1; they must not turn black."""
    adata = _section()
    image = np.full((40, 40, 3), 0.8, dtype=np.float32)
    adata.uns["spatial"] = {"lib": {"images": {"hires": image}, "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 5.0}}}
    io.validate_adata(adata, "x.h5ad")
    out = adata.uns["spatial"]["lib"]["images"]["hires"]
    assert out.dtype == np.uint8 and out.shape == (40, 40, 3) and (out == 204).all()


@pytest.mark.parametrize("array, expected", [
    (np.full((4, 4, 3), 0.5, np.float64), 128),
    (np.full((4, 4, 3), 200.0, np.float32), 200),
    (np.full((4, 4), 65535, np.uint16), 255),
    (np.full((4, 4, 4), 32768, np.uint16), 128),
    (np.full((4, 4), True), 255),
    (np.full((4, 4, 1), 100, np.int32), 100),
])
def test_any_bit_depth_to_uint8(array, expected):
    out = to_uint8_rgb(array, "img")
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3) and (out == expected).all()


@pytest.mark.parametrize("array, message", [
    (np.full((4, 4, 3), np.nan), r"img: image holds 48 NaN/infinite value"),
    (np.full((4, 4, 3), 300.0), r"img: float image ranges over 300\.\.300; expected 0\.\.1"),
    (np.full((4, 4, 3), -1, np.int16), r"img: image holds negative values"),
    (np.full((4, 4, 3), 2**20, np.int32), r"img: image values reach 1048576; expected 8- or 16-bit"),
    (np.zeros((4, 4, 5), np.uint8), r"img: image has shape \(4, 4, 5\)"),
])
def test_unconvertible_images_refused(array, message):
    with pytest.raises(SencaInputError, match=message):
        to_uint8_rgb(array, "img")


def _png(path, array, depth=16):
    """A PNG written by hand (PIL cannot write 16-bit colour)."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\0" + array[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("shape", [(30, 40), (30, 40, 3), (30, 40, 4)])
def test_16bit_png_scaled_not_clipped(tmp_path, shape):
    array = np.zeros(shape, np.uint16)
    array[...] = 40000
    if len(shape) == 3 and shape[2] == 4:
        array[..., 3] = 65535
    rgb = read_image(_png(tmp_path / "deep.png", array))
    assert rgb.dtype == np.uint8 and rgb.shape == (30, 40, 3)
    assert np.abs(rgb.astype(int) - 40000 / 257).max() <= 1  # not 255 (white) as PIL's clipping gave


def test_image_declaring_huge_size_refused_before_decoding(tmp_path, monkeypatch):
    # A few hundred bytes that declare 60000 x 60000 px: the header alone must be enough to refuse it.
    path = _png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8), depth=8)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    with pytest.raises(SencaInputError, match=r"bomb\.png: image declares 60000 x 60000 px \(L\), which needs 13\.4 GiB.*limit is 4\.0 GiB"):
        read_image(path)
    Image.new("RGB", (100, 100)).save(tmp_path / "ok.png")
    monkeypatch.setenv("SENCA_MAX_IMAGE_GB", "0.00001")
    with pytest.raises(SencaInputError, match=r"ok\.png: image declares 100 x 100 px \(RGB\).*SENCA_MAX_IMAGE_GB"):
        read_image(tmp_path / "ok.png")


def test_implausible_image_scale_refused(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)  # spots at 400..1000 px
    Image.new("RGB", (1000, 1000), (200, 150, 190)).save(tmp_path / "he.png")
    io.read_st(counts, spots, image=tmp_path / "he.png", image_scale=1.0)
    with pytest.raises(SencaInputError, match=r"he\.png: with the scale factor 0\.01 the spots cover only 0\.6% of the 1000 x 1000 px image"):
        io.read_st(counts, spots, image=tmp_path / "he.png", image_scale=0.01)
    for bad in (0.0, float("nan"), -1.0, "x"):
        with pytest.raises(SencaInputError, match=r"he\.png: scale factor 'tissue_hires_scalef' is"):
            io.read_st(counts, spots, image=tmp_path / "he.png", image_scale=bad)


def test_truncated_gz_of_labels_and_counts(tmp_path):
    counts, spots, _, _ = write_st(tmp_path)
    data = counts.read_bytes()
    counts.write_bytes(data[: len(data) - 12])
    with pytest.raises(SencaInputError, match=r"S\.tsv\.gz: cannot read the counts table"):
        io.read_st(counts, spots)
    with gzip.open(counts, "wb") as f:
        f.write(b"\xff\xfe\x00garbage\n\x00\x01")
    with pytest.raises(SencaInputError, match=r"S\.tsv\.gz"):
        io.read_st(counts, spots)


@pytest.mark.parametrize("size, entry", [("3 6 99999999999999999999999", None), ("3 999999999999999 18", None),
                                         (None, "99999999999999999999999 1 5"), (None, "1 -inf 5"), (None, "1 2 nan")])
def test_mtx_sizes_and_indices_beyond_any_matrix(tmp_path, size, entry):
    from test_io_mtx import visium_with_mtx

    folder = visium_with_mtx(tmp_path, gz=False)
    path = folder / "filtered_feature_bc_matrix" / "matrix.mtx"
    lines = path.read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if not line.startswith("%"))
    if size:
        lines[body] = size
    if entry:
        lines[body + 1] = entry
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SencaInputError, match=r"matrix\.mtx"):
        io.read_visium(folder)


def test_image_that_does_not_fit_the_spots_is_called_out(tmp_path, caplog):
    from senca.image import extract_patches

    counts, spots, _, _ = write_st(tmp_path)
    rng = np.random.default_rng(0)
    tissue = rng.integers(60, 200, (1200, 1200, 3), dtype=np.uint8)
    Image.fromarray(tissue).save(tmp_path / "fits.png")
    glass = np.full((1200, 1200, 3), 245, np.uint8)
    glass[:, :300] = tissue[:, :300]  # the tissue lies left of the spots
    Image.fromarray(glass).save(tmp_path / "other.png")
    with caplog.at_level("WARNING"):
        extract_patches(io.read_st(counts, spots, image=tmp_path / "fits.png", image_scale=1.0), show_progress=False)
    assert "image is not this section's" not in caplog.text
    with caplog.at_level("WARNING"):
        extract_patches(io.read_st(counts, spots, image=tmp_path / "other.png", image_scale=1.0), show_progress=False)
    assert "12 fall on blank background" in caplog.text and "image is not this section's or its scale factor is wrong" in caplog.text


@pytest.mark.realdata
def test_another_sections_image_is_called_out(caplog):
    from conftest import DATA, require
    from senca.image import extract_patches

    image = DATA / "her2st" / "ST-imgs" / "A" / "A1" / "A1_HE_display_2000px.png"
    require(image)
    with caplog.at_level("WARNING"):
        extract_patches(io.read(DATA / "her2st", sample="A1", image=image, image_scale=0.28761), show_progress=False)
    assert "not this section's" not in caplog.text
    with caplog.at_level("WARNING"):
        extract_patches(io.read(DATA / "her2st", sample="C1", image=image, image_scale=0.28761), show_progress=False)
    assert "55 fall on blank background" in caplog.text and "not this section's" in caplog.text


def test_bad_image_feature_files(tmp_path):
    from senca.pipeline import _image_features

    adata = _section()
    cases = {"nan.npy": np.full((3, 4), np.nan), "text.npy": np.array([["a"] * 4] * 3), "shape.npy": np.ones((2, 4))}
    for name, array in cases.items():
        np.save(tmp_path / name, array)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "shape.npy").read_bytes()[:70])
    for name, message in [("nan.npy", "hold 12 NaN/infinite"), ("text.npy", "dtype <U1"), ("shape.npy", r"shape \(2, 4\)"),
                          ("cut.npy", "cannot read as a NumPy array")]:
        with pytest.raises(SencaInputError, match=rf"{name}: .*{message}"):
            _image_features(adata, str(tmp_path / name))


def test_counts_header_with_an_empty_gene_name(tmp_path):
    """A header one field short with an empty name would slide every gene name onto its neighbour."""
    counts, spots, _, _ = write_st(tmp_path)
    lines = gzip.decompress(counts.read_bytes()).decode().splitlines()
    assert lines[0].startswith("\tG0\tG1")
    r_style = tmp_path / "R.tsv"
    r_style.write_text("\n".join([lines[0].lstrip("\t")] + lines[1:]) + "\n")  # no spot-id column: R's layout
    assert list(io.read_st(r_style, spots).var_names) == ["G0", "G1", "G2", "G3", "G4"]
    broken = tmp_path / "B.tsv"
    broken.write_text("\n".join([lines[0].replace("\tG1", "aG1", 1)] + lines[1:]) + "\n")
    with pytest.raises(SencaInputError, match=r"B\.tsv: the counts table's header has an empty gene name \(column 2\)"):
        io.read_st(broken, spots)


def test_nul_bytes_in_a_table_refused(tmp_path):
    """pandas cuts a field at a NUL byte ("2x7\\0\\0" reads as "2x7"), so such files are refused."""
    counts, spots, _, _ = write_st(tmp_path)
    text = gzip.decompress(counts.read_bytes())
    counts.write_bytes(gzip.compress(text.replace(b"\tG1", b"\tG1\x00\x00", 1)))
    with pytest.raises(SencaInputError, match=r"S\.tsv\.gz: the counts table holds NUL bytes"):
        io.read_st(counts, spots)


def test_damaged_tiff_is_an_input_error(tmp_path):
    """A flipped byte in a TIFF tag made PIL raise TypeError (found by the fuzz run)."""
    path = tmp_path / "img.tiff"
    Image.fromarray(np.random.default_rng(0).random((9, 1)).astype(np.float32), mode="F").save(path)
    data = bytearray(path.read_bytes())
    data[int(0.4272386980870376 * len(data))] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(SencaInputError, match=r"img\.tiff: cannot read the H&E image"):
        read_image(path)


def test_wide_counts_table_parsed_as_one_column_reads_as_pandas(tmp_path):
    """The fast reader of tab-separated counts gives pandas' table: values, spot ids, genes."""
    rng = np.random.default_rng(0)
    values = rng.poisson(2.0, (40, 300)).astype(float)
    values[0, :3] = (1.5, 2e3, 0.25)
    genes = [f"G{i}" for i in range(300)]
    lines = ["spot\t" + "\t".join(genes)] + [f"{i}x{i + 1}\t" + "\t".join(f"{v:g}" for v in row) for i, row in enumerate(values)]
    path = tmp_path / "S.tsv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    fast = read_number_table(path, "counts table")
    slow = read_table(path, "counts table", index_col=0)
    assert fast is not None
    np.testing.assert_array_equal(fast.to_numpy(np.float32), slow.to_numpy(np.float32))
    assert list(fast.index) == list(slow.index) and fast.index.name == slow.index.name == "spot"
    assert list(fast.columns) == list(slow.columns) == genes


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("\tG1\t", '\t"G1"\t'),            # quoted names
    lambda t: t.replace("\tG2\t", "\tG1\t"),              # duplicate gene (pandas renames it)
    lambda t: t.replace("\n1x2\t", "\n1x2\tNA\t", 1),     # a missing value
    lambda t: t.replace("\t", "\t\t", 1),                 # an empty header field
    lambda t: t.replace("\n", "\r\n"),                    # Windows line ends
    lambda t: "\n".join(line + "\t" if i == 2 else line for i, line in enumerate(t.split("\n"))),  # trailing tab
    lambda t: "\n".join(line.split("\t", 1)[1] if i == 0 else line for i, line in enumerate(t.split("\n"))),  # R's header
    lambda t: t.replace("\n0x1\t", "\n0x1\t5\t", 1).replace("\n1x2\t5\t", "\n1x2\t", 1),  # ragged rows, same total
    lambda t: "\n".join(line if i == 0 else f"0{i}" + line[line.index("\t"):] for i, line in enumerate(t.split("\n")) if line),  # numeric ids
])
def test_counts_tables_the_fast_reader_leaves_to_pandas(tmp_path, edit):
    """Anything the one-column parse could misread goes to pandas' reader and its errors."""
    genes = "\t".join(f"G{i}" for i in range(4))
    text = f"spot\t{genes}\n" + "".join(f"{i}x{i + 1}\t5\t{i}\t1\t0\n" for i in range(3))
    path = tmp_path / "S.tsv"
    path.write_text(edit(text))
    assert read_number_table(path, "counts table") is None
