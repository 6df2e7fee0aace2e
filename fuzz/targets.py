"""Fuzz targets: every reader, the h5ad validator and the command line, each with an independent oracle.

A target is a hypothesis strategy of inputs (valid files, then mutated: hostile cell values,
cut or bit-flipped bytes, hostile sparse arrays and scale factors) and a check. The check runs
senca on the input and compares with an oracle that parses the same bytes without senca
(``csv``, ``gzip``, ``json``, ``h5py`` and plain Python loops):

- the oracle finds the input valid: senca must read it and give the oracle's values;
- the oracle finds it invalid: senca must raise :class:`SencaInputError`.

Anything else (another exception, a disagreement) is reported. ``tests/test_fuzz.py`` runs a
few examples of each in CI; ``fuzz/run.py`` runs many and records them in ``fuzz/RESULTS.md``.
"""

from __future__ import annotations

import csv
import gzip
import io as stdio
import json
import math
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
from hypothesis import strategies as st

import senca.io as senca_io
from senca.errors import SencaInputError
from senca.io.image import to_uint8_rgb

# Cell values a careless or hostile file holds.
TOKENS = ["", "nan", "NA", "-1", "-0.5", "1e400", "inf", "-inf", "abc", "1.5", "7", "0", "3.0", "1e30",
          "99999999999999999999", "0x1F", "1,5", " ", "\x00", "é"]
# Scale-factor values as JSON text.
JSON_VALUES = ["0", "-1", "0.0", "1e308", "1e-320", "NaN", "Infinity", "null", "true", "\"0.5\"", "[0.5]", "{}",
               "1" + "0" * 400, "0.5", "0.15", "50", "2", "101"]


class Mismatch(AssertionError):
    """senca and the oracle disagree."""


@dataclass
class Case:
    """One generated input: files under ``folder`` plus what the generator knows about them."""

    folder: Path
    info: dict


# ---- small helpers -------------------------------------------------------------------------

def _mutate_bytes(data: bytes, kind: str, where: float, value: int) -> bytes:
    if not data:
        return data
    position = min(int(where * len(data)), len(data) - 1)
    if kind == "cut":
        return data[:position]
    if kind == "flip":
        out = bytearray(data)
        out[position] ^= (value % 255) + 1
        return bytes(out)
    if kind == "insert":
        return data[:position] + bytes([value % 256]) * 3 + data[position:]
    return data


byte_mutation = st.one_of(st.none(), st.tuples(st.sampled_from(["cut", "flip", "insert"]),
                                               st.floats(0, 1), st.integers(0, 255)))


def _number(text: str) -> float | None:
    """The oracle's reading of a numeric cell: a float for what a table reader may accept, else None."""
    text = text.strip(" ")
    # Plain decimal notation only: Python's float() also takes "1_0" and strips control characters.
    if not re.fullmatch(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|inf|infinity)", text, re.IGNORECASE):
        return None
    return float(text)


def _positive(value, upper: float) -> bool:
    """The oracle's rule for a scale factor: a JSON/Python number (not a bool) in (0, upper]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return 0 < float(value) <= upper
    except OverflowError:
        return False


def _read_text(path: Path) -> str | None:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError):
        return None


def _rows(text: str, sep: str) -> list[list[str]] | None:
    if "\x00" in text:  # a text table never holds NUL; senca refuses it
        return None
    try:
        rows = list(csv.reader(stdio.StringIO(text, newline=""), delimiter=sep))
    except csv.Error:
        return None
    return [r for r in rows if r]  # blank lines are skipped by table readers


# ---- legacy ST / HER2ST ----------------------------------------------------------------------

@st.composite
def st_section(draw) -> dict:
    n = draw(st.integers(2, 12))
    n_genes = draw(st.integers(1, 5))
    cells = draw(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=n, max_size=n, unique=True))
    counts = draw(st.lists(st.lists(st.integers(0, 40), min_size=n_genes, max_size=n_genes), min_size=n, max_size=n))
    spacing = draw(st.sampled_from([1.0, 200.0, 290.5]))
    mutation = draw(st.one_of(
        st.none(),
        st.tuples(st.just("counts-cell"), st.integers(0, n - 1), st.integers(0, n_genes), st.sampled_from(TOKENS)),
        st.tuples(st.just("spots-cell"), st.integers(0, n - 1), st.sampled_from(["x", "y", "pixel_x", "pixel_y"]),
                  st.sampled_from(TOKENS)),
        st.tuples(st.just("counts-bytes"), byte_mutation),
        st.tuples(st.just("spots-bytes"), byte_mutation),
        st.tuples(st.just("duplicate-row"), st.integers(0, n - 1)),
    ))
    return {"cells": cells, "counts": counts, "spacing": spacing, "genes": [f"G{i}" for i in range(n_genes)],
            "gz": draw(st.booleans()), "mutation": mutation}


def write_st(spec: dict, folder: Path) -> tuple[Path, Path]:
    ids = [f"{x}x{y}" for x, y in spec["cells"]]
    counts_rows = [[""] + spec["genes"]] + [[i] + [str(v) for v in row] for i, row in zip(ids, spec["counts"])]
    spots_rows = [["x", "y", "pixel_x", "pixel_y", "selected"]] + [
        [str(x), str(y), repr(x * spec["spacing"] + 0.25), repr(y * spec["spacing"] - 0.25), "1"] for x, y in spec["cells"]]
    mutation = spec["mutation"]
    if mutation and mutation[0] == "counts-cell":
        counts_rows[1 + mutation[1]][mutation[2]] = mutation[3]
    if mutation and mutation[0] == "spots-cell":
        spots_rows[1 + mutation[1]][spots_rows[0].index(mutation[2])] = mutation[3]
    if mutation and mutation[0] == "duplicate-row":
        counts_rows.append(list(counts_rows[1 + mutation[1]]))
    counts_text = "".join("\t".join(r) + "\n" for r in counts_rows).encode()
    spots_text = "".join("\t".join(r) + "\n" for r in spots_rows).encode()
    counts_bytes = gzip.compress(counts_text, mtime=0) if spec["gz"] else counts_text
    if mutation and mutation[0] == "counts-bytes" and mutation[1]:
        counts_bytes = _mutate_bytes(counts_bytes, *mutation[1])
    if mutation and mutation[0] == "spots-bytes" and mutation[1]:
        spots_text = _mutate_bytes(spots_text, *mutation[1])
    counts = folder / ("S.tsv.gz" if spec["gz"] else "S.tsv")
    spots = folder / "S_selection.tsv"
    counts.write_bytes(counts_bytes)
    spots.write_bytes(spots_text)
    return counts, spots


def oracle_st(counts: Path, spots: Path) -> dict | None:
    """Independent reading of a legacy ST section: values when valid, None when senca must refuse it."""
    text = _read_text(counts)
    rows = _rows(text, "\t") if text is not None else None
    if not rows or len(rows) < 2 or len(rows[1]) < 2:
        return None
    width = len(rows[1])
    # The header may lack the spot-id column (as R writes tables); every gene needs a name.
    genes = rows[0][1:] if len(rows[0]) == width else rows[0]
    if len(genes) != width - 1 or any(len(r) != width for r in rows[1:]) or not all(genes):
        return None
    ids = [r[0] for r in rows[1:]]
    if len(set(ids)) != len(ids):
        return None
    values = [[_number(c) for c in r[1:]] for r in rows[1:]]
    flat = [v for row in values for v in row]
    if any(v is None or not math.isfinite(v) or v < 0 or v > np.finfo(np.float32).max for v in flat) or not any(flat):
        return None
    text = _read_text(spots)
    rows = _rows(text, "\t") if text is not None else None
    if not rows or len(rows) < 2:
        return None
    header = rows[0]
    if not {"x", "y", "pixel_x", "pixel_y"} <= set(header) or any(len(r) != len(header) for r in rows):
        return None
    table = {}
    for r in rows[1:]:
        cell = dict(zip(header, r))
        x, y, px, py = (_number(cell[k]) for k in ("x", "y", "pixel_x", "pixel_y"))
        if any(v is None or not math.isfinite(v) for v in (x, y, px, py)):
            return None
        if x != round(x) or y != round(y) or abs(x) > 1e6 or abs(y) > 1e6 or abs(px) > 1e8 or abs(py) > 1e8:
            return None
        key = f"{int(x)}x{int(y)}"
        if key in table:
            return None
        if _number(cell.get("selected", "1")) not in (None, 0.0):
            table[key] = (px, py)
    if any(i not in table for i in ids):
        return None
    pixels = np.array([table[i] for i in ids])
    if len(ids) < 2 or (pixels == pixels[0]).all():
        return None
    return {"ids": ids, "X": np.array(values, dtype=np.float32), "spatial": pixels, "genes": genes}


def check_st(spec: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        counts, spots = write_st(spec, Path(tmp))
        expected = oracle_st(counts, spots)
        return _compare(lambda: senca_io.read_st(counts, spots), expected, _same_section)


def _same_section(adata, expected: dict) -> None:
    if "genes" in expected and len(set(expected["genes"])) == len(expected["genes"]) and list(adata.var_names) != expected["genes"]:
        raise Mismatch(f"gene names {list(adata.var_names)[:4]} != {expected['genes'][:4]}")
    if list(adata.obs_names) != expected["ids"]:
        raise Mismatch(f"spot ids {list(adata.obs_names)[:4]} != {expected['ids'][:4]}")
    if not np.array_equal(adata.X.toarray(), expected["X"]):
        raise Mismatch("counts differ from the oracle's")
    if not np.allclose(adata.obsm["spatial"], expected["spatial"], rtol=1e-12, atol=0):
        raise Mismatch("coordinates differ from the oracle's")


def _compare(read: Callable[[], Any], expected, same: Callable[[Any, Any], None]) -> str:
    """Run the reader; 'read' / 'refused' when it agrees with the oracle, else raise Mismatch."""
    try:
        result = read()
    except SencaInputError as err:
        if expected is not None:
            raise Mismatch(f"senca refused input the oracle reads: {err}") from err
        return "refused"
    if expected is None:
        raise Mismatch("senca read input the oracle refuses")
    same(result, expected)
    return "read"


# ---- 10x Visium ----------------------------------------------------------------------------

hostile_int_arrays = st.lists(st.integers(-(2**40), 2**40) | st.integers(-3, 12), min_size=0, max_size=30)


@st.composite
def visium_section(draw) -> dict:
    n = draw(st.integers(2, 8))
    n_genes = draw(st.integers(1, 4))
    dense = draw(st.lists(st.lists(st.integers(0, 9), min_size=n_genes, max_size=n_genes), min_size=n, max_size=n))
    if not any(map(any, dense)):
        dense[0][0] = 1
    mutation = draw(st.one_of(
        st.none(),
        st.tuples(st.just("array"), st.sampled_from(["indices", "indptr", "data", "shape"]), hostile_int_arrays),
        st.tuples(st.just("index"), st.integers(0, 40), st.integers(-5, n_genes + 5)),
        st.tuples(st.just("h5-bytes"), byte_mutation),
        st.tuples(st.just("scalefactor"), st.sampled_from(["spot_diameter_fullres", "tissue_lowres_scalef"]),
                  st.sampled_from(JSON_VALUES)),
        st.tuples(st.just("json-bytes"), byte_mutation),
        st.tuples(st.just("position-cell"), st.integers(0, n - 1), st.integers(1, 5), st.sampled_from(TOKENS)),
        st.tuples(st.just("mtx-bytes"), byte_mutation),
        st.tuples(st.just("mtx-cell"), st.integers(0, 40), st.integers(0, 2), st.sampled_from(TOKENS + ["-3", "100"])),
        st.tuples(st.just("mtx-size"), st.integers(0, 2), st.sampled_from(["0", "1", "2", "99", "-1", "1e3", "x",
                                                                          "99999999999999999999999"])),
    ))
    matrix = "mtx" if mutation and mutation[0].startswith("mtx") else draw(st.sampled_from(["h5", "h5", "mtx"]))
    return {"dense": dense, "header": draw(st.booleans()), "mutation": mutation, "matrix": matrix, "gz": draw(st.booleans())}


def write_visium(spec: dict, folder: Path) -> Path:
    dense = np.array(spec["dense"], dtype=np.int32)  # spots x genes
    n, n_genes = dense.shape
    # CSR of spots x genes is the CSC of genes x spots that 10x stores.
    indptr, indices, data = [0], [], []
    for row in dense:
        nz = [j for j, v in enumerate(row) if v]
        indices += nz
        data += [int(row[j]) for j in nz]
        indptr.append(len(indices))
    arrays = {"data": np.array(data, np.int32), "indices": np.array(indices, np.int64),
              "indptr": np.array(indptr, np.int64), "shape": np.array([n_genes, n], np.int64)}
    mutation = spec["mutation"]
    if mutation and mutation[0] == "array":
        arrays[mutation[1]] = np.array(mutation[2], dtype=np.int64)
    if mutation and mutation[0] == "index" and len(arrays["indices"]):
        arrays["indices"][mutation[1] % len(arrays["indices"])] = mutation[2]
    (folder / "spatial").mkdir(parents=True)
    if spec.get("matrix") == "mtx":
        _write_mtx(spec, dense, folder / "filtered_feature_bc_matrix")
    else:
        _write_h5(spec, arrays, n, n_genes, folder / "filtered_feature_bc_matrix.h5")
    _write_spatial(spec, n, folder)
    return folder


def _write_mtx(spec: dict, dense: np.ndarray, folder: Path) -> None:
    n, n_genes = dense.shape
    entries = [[str(g + 1), str(b + 1), str(int(dense[b, g]))] for g in range(n_genes) for b in range(n) if dense[b, g]]
    size = [str(n_genes), str(n), str(len(entries))]
    mutation = spec["mutation"]
    if mutation and mutation[0] == "mtx-cell" and entries:
        entries[mutation[1] % len(entries)][mutation[2]] = mutation[3]
    if mutation and mutation[0] == "mtx-size":
        size[mutation[1]] = mutation[2]
    text = ("%%MatrixMarket matrix coordinate integer general\n%metadata_json: {}\n" + " ".join(size) + "\n"
            + "".join(" ".join(e) + "\n" for e in entries)).encode()
    if mutation and mutation[0] == "mtx-bytes" and mutation[1]:
        text = _mutate_bytes(gzip.compress(text, mtime=0) if spec["gz"] else text, *mutation[1])
    elif spec["gz"]:
        text = gzip.compress(text, mtime=0)
    folder.mkdir()
    suffix = ".gz" if spec["gz"] else ""
    (folder / f"matrix.mtx{suffix}").write_bytes(text)
    features = "".join(f"E{j}\tG{j}\tGene Expression\n" for j in range(n_genes)).encode()
    barcodes = "".join(f"BC{i}-1\n" for i in range(n)).encode()
    (folder / f"features.tsv{suffix}").write_bytes(gzip.compress(features, mtime=0) if spec["gz"] else features)
    (folder / f"barcodes.tsv{suffix}").write_bytes(gzip.compress(barcodes, mtime=0) if spec["gz"] else barcodes)


def _write_h5(spec: dict, arrays: dict, n: int, n_genes: int, h5: Path) -> None:
    mutation = spec["mutation"]
    with h5py.File(h5, "w") as f:
        g = f.create_group("matrix")
        for name, value in arrays.items():
            g[name] = value
        g["barcodes"] = np.array([f"BC{i}-1" for i in range(n)], dtype="S")
        features = g.create_group("features")
        features["name"] = np.array([f"G{j}" for j in range(n_genes)], dtype="S")
        features["id"] = np.array([f"E{j}" for j in range(n_genes)], dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * n_genes, dtype="S")
    if mutation and mutation[0] == "h5-bytes" and mutation[1]:
        h5.write_bytes(_mutate_bytes(h5.read_bytes(), *mutation[1]))


def _write_spatial(spec: dict, n: int, folder: Path) -> None:
    mutation = spec["mutation"]
    rows = [[f"BC{i}-1", "1", str(i // 3), str(i % 3), str(100 + 100 * (i // 3)), str(100 + 100 * (i % 3))] for i in range(n)]
    if mutation and mutation[0] == "position-cell":
        rows[mutation[1]][mutation[2]] = mutation[3]
    columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    name = "tissue_positions.csv" if spec["header"] else "tissue_positions_list.csv"
    table = ([columns] if spec["header"] else []) + rows
    out = stdio.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    (folder / "spatial" / name).write_text(out.getvalue())
    values = {"spot_diameter_fullres": "50.0", "tissue_lowres_scalef": "0.5"}
    if mutation and mutation[0] == "scalefactor":
        values[mutation[1]] = mutation[2]
    text = "{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}"
    json_bytes = text.encode()
    if mutation and mutation[0] == "json-bytes" and mutation[1]:
        json_bytes = _mutate_bytes(json_bytes, *mutation[1])
    (folder / "spatial" / "scalefactors_json.json").write_bytes(json_bytes)
    from PIL import Image
    Image.new("RGB", (300, 300), (210, 160, 200)).save(folder / "spatial" / "tissue_lowres_image.png")


def _oracle_mtx(folder: Path) -> tuple[np.ndarray, list[str]] | None:
    """Independent reading of a MatrixMarket folder: (spots x genes dense counts, barcodes), or None."""
    suffix = ".gz" if (folder / "matrix.mtx.gz").exists() else ""
    text = _read_text(folder / f"matrix.mtx{suffix}")
    if text is None:
        return None
    lines = text.split("\n")
    if not re.match(r"%%MatrixMarket\s+matrix\s+coordinate\s+(integer|real)\s+general", lines[0], re.I):
        return None
    body = [line for line in lines[1:] if not line.startswith("%")]
    size = body[0].split() if body else []
    if len(size) != 3 or not all(re.fullmatch(r"[0-9]+", v) for v in size):
        return None
    n_genes, n, n_entries = map(int, size)
    entries = [line.split() for line in body[1:] if line.strip()]
    if len(entries) != n_entries or any(len(e) != 3 for e in entries) or n_genes > 10**6 or n > 10**6:
        return None
    dense = np.zeros((n, n_genes))
    for gene, spot, count in entries:
        gene, spot, value = _number(gene), _number(spot), _number(count)
        if gene is None or spot is None or value is None or not (math.isfinite(gene) and math.isfinite(spot)):
            return None
        if gene != int(gene) or spot != int(spot):
            return None
        if not 1 <= gene <= n_genes or not 1 <= spot <= n:
            return None
        dense[int(spot) - 1, int(gene) - 1] += value
    if not np.isfinite(dense).all() or (dense < 0).any() or not dense.any() or dense.max() > np.finfo(np.float32).max:
        return None
    if len(_read_text(folder / f"features.tsv{suffix}").splitlines()) != n_genes:
        return None
    return dense, [f"BC{i}-1" for i in range(n)] if n == len(_read_text(folder / f"barcodes.tsv{suffix}").split()) else None


def oracle_visium(folder: Path) -> dict | None:
    """Independent reading of a Space Ranger folder (h5py, text and loops, no scipy)."""
    if (folder / "filtered_feature_bc_matrix").is_dir():
        found = _oracle_mtx(folder / "filtered_feature_bc_matrix")
        if found is None or found[1] is None:
            return None
        dense, barcodes = found
        return _oracle_spatial(folder, dense, barcodes)
    try:
        with h5py.File(folder / "filtered_feature_bc_matrix.h5", "r") as f:
            g = f["matrix"]
            data, indices, indptr, shape = (np.asarray(g[k][()]) for k in ("data", "indices", "indptr", "shape"))
            barcodes = [b.decode() for b in g["barcodes"][()]]
            names = [b.decode() for b in g["features/name"][()]]
            others = [[b.decode() for b in g[f"features/{k}"][()]] for k in ("id", "feature_type")]
    except Exception:  # noqa: BLE001 - the oracle only needs to know that the file cannot be read
        return None
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        return None
    n_genes, n = int(shape[0]), int(shape[1])
    if indices.ndim != 1 or indptr.ndim != 1 or data.ndim != 1 or len(indptr) != n + 1 or len(indices) != len(data):
        return None
    if len(names) != n_genes or len(barcodes) != n or any(len(o) != n_genes for o in others):
        return None
    dense = np.zeros((n, n_genes), dtype=np.float64)
    for spot in range(n):
        start, stop = int(indptr[spot]), int(indptr[spot + 1])
        if start < 0 or stop < start or stop > len(data):
            return None
        for k in range(start, stop):
            if not 0 <= int(indices[k]) < n_genes:
                return None
            dense[spot, int(indices[k])] += float(data[k])
    if int(indptr[0]) != 0 or int(indptr[-1]) != len(data) or (dense < 0).any() or not dense.any():
        return None
    return _oracle_spatial(folder, dense, barcodes)


def _oracle_spatial(folder: Path, dense: np.ndarray, barcodes: list[str]) -> dict | None:
    n = len(barcodes)
    try:
        scalefactors = json.loads((folder / "spatial" / "scalefactors_json.json").read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(scalefactors, dict):
        return None
    if not _positive(scalefactors.get("spot_diameter_fullres"), 1e8) or not _positive(scalefactors.get("tissue_lowres_scalef"), 100):
        return None
    path = next(folder.glob("spatial/tissue_positions*.csv"))
    rows = _rows(path.read_text(errors="replace"), ",")
    if rows is None:
        return None
    if path.name == "tissue_positions.csv":
        rows = rows[1:]
    if any(len(r) != 6 for r in rows):
        return None
    table = {}
    for r in rows:
        values = [_number(c) for c in r[1:]]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        if any(v != round(v) or abs(v) > 1e6 for v in values[:3]) or any(abs(v) > 1e8 for v in values[3:]):
            return None
        table[r[0]] = (values[4], values[3])  # x = column, y = row
    if any(b not in table for b in barcodes):
        return None
    spatial = np.array([table[b] for b in barcodes])
    if (spatial == spatial[0]).all():
        return None
    spacing = np.median([min(np.hypot(*(spatial[i] - spatial[j])) for j in range(n) if j != i
                             and np.hypot(*(spatial[i] - spatial[j])) > 0) for i in range(n)])
    if not 0.02 <= float(scalefactors["spot_diameter_fullres"]) / spacing <= 20:
        return None
    # The 300 px lowres image: spots must lie inside it and span a twentieth of it.
    scale = float(scalefactors["tissue_lowres_scalef"])
    reach = spatial.max(axis=0) * scale
    span = ((spatial.max(axis=0) - spatial.min(axis=0)) * scale / 300).max()
    if (reach > 300 * 1.10).any() or span < 0.05:
        return None
    return {"ids": barcodes, "X": dense.astype(np.float32), "spatial": spatial}


def check_visium(spec: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_visium(spec, Path(tmp) / "v")
        expected = oracle_visium(folder)
        return _compare(lambda: senca_io.read_visium(folder), expected, _same_section)


# ---- the h5ad validator ----------------------------------------------------------------------

hostile_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**400), 10**400), st.booleans(), st.none(),
    st.text(max_size=4), st.just([0.5]), st.just({}), st.sampled_from([0.0, -1.0, 0.05, 0.5, 1.0, 50.0]))
image_dtypes = st.sampled_from(["uint8", "uint16", "float32", "float64", "int32", "bool", "int8"])


@st.composite
def adata_case(draw) -> dict:
    n = draw(st.integers(2, 6))
    # Half the sections have sane coordinates, so that the image and scale-factor checks are reached.
    spatial = draw(st.one_of(
        st.lists(st.tuples(st.integers(0, 39).map(float), st.integers(0, 39).map(float)), min_size=n, max_size=n, unique=True),
        st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True) | st.integers(0, 60).map(float),
                           st.integers(0, 60).map(float) | st.floats(-1e12, 1e12)), min_size=n, max_size=n)))
    library = draw(st.one_of(
        st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2),
        st.fixed_dictionaries({
            "images": st.one_of(st.just({}), st.just([]), st.fixed_dictionaries({"hires": st.tuples(
                image_dtypes, st.sampled_from([(40, 40, 3), (40, 40, 4), (40, 40), (40, 40, 2), (1, 1, 3)]),
                st.sampled_from([0.0, 0.5, 1.0, 200.0, 255.0, 300.0, 40000.0, -1.0, float("nan")]))})),
            "scalefactors": st.one_of(st.none(), st.just("x"), st.fixed_dictionaries(
                {"tissue_hires_scalef": st.sampled_from([1.0, 0.5, 1]) | hostile_scalars,
                 "spot_diameter_fullres": st.sampled_from([5.0, 8, 20.0]) | hostile_scalars})),
        }),
    ))
    return {"spatial": spatial, "library": library}


def _image(spec) -> np.ndarray:
    dtype, shape, value = spec
    if dtype == "bool":
        return np.full(shape, bool(value) if value == value else True)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None and not (value == value and info.min <= value <= info.max):
        value = info.max
    return np.full(shape, value, dtype=dtype)


def build_adata(spec: dict):
    import anndata as ad
    import scipy.sparse as sp

    n = len(spec["spatial"])
    adata = ad.AnnData(sp.csr_matrix(np.arange(1, 2 * n + 1, dtype=np.float32).reshape(n, 2)))
    adata.obsm["spatial"] = np.array(spec["spatial"], dtype=float)
    library = spec["library"]
    if isinstance(library, dict):
        library = dict(library)
        if isinstance(library["images"], dict) and "hires" in library["images"]:
            library["images"] = {"hires": _image(library["images"]["hires"])}
        if library["scalefactors"] is None:
            del library["scalefactors"]
    if library is not None:
        adata.uns["spatial"] = {"lib": library}
    return adata


def oracle_adata(spec: dict) -> dict | None:
    spatial = np.array(spec["spatial"], dtype=float)
    if not np.isfinite(spatial).all() or np.abs(spatial).max() > 1e8 or (spatial == spatial[0]).all():
        return None
    library = spec["library"]
    if library is None:
        return {"image": None}
    if not isinstance(library, dict) or not isinstance(library["images"], dict):
        return None
    images, scalefactors = library["images"], library["scalefactors"]
    if images and not scalefactors:
        return None
    if scalefactors is not None:
        if not isinstance(scalefactors, dict):
            return None
        if not _positive(scalefactors["tissue_hires_scalef"], 100) or not _positive(scalefactors["spot_diameter_fullres"], 1e8):
            return None
        nearest = [min(math.dist(p, q) for j, q in enumerate(spatial) if j != i and math.dist(p, q) > 0)
                   for i, p in enumerate(spatial) if any(math.dist(p, q) > 0 for q in spatial)]
        if not 0.02 <= float(scalefactors["spot_diameter_fullres"]) / float(np.median(nearest)) <= 20:
            return None
    if not images:
        return {"image": None}
    dtype, shape, value = images["hires"]
    if len(shape) != 3 or shape[2] not in (3, 4) or shape[0] < 2:
        return None
    pixel = _image(images["hires"]).flat[0]
    if dtype == "bool":
        expected = 255 * int(pixel)
    elif np.dtype(dtype).kind in "iu":
        if pixel < 0 or pixel > 65535:
            return None
        expected = int(pixel) if pixel <= 255 else round(int(pixel) * 255 / 65535)
    else:
        if not math.isfinite(pixel) or pixel < 0 or pixel > 255:
            return None
        expected = round(float(pixel) * 255) if pixel <= 1 else round(float(pixel))
    scale = float(scalefactors["tissue_hires_scalef"])
    low, high = spatial.min(axis=0) * scale, spatial.max(axis=0) * scale
    if high[0] > shape[1] * 1.1 or high[1] > shape[0] * 1.1 or max((high - low) / [shape[1], shape[0]]) < 0.05:
        return None
    return {"image": expected}


def check_adata(spec: dict) -> str:
    expected = oracle_adata(spec)

    def same(adata, expected):
        if expected["image"] is None:
            return
        image = adata.uns["spatial"]["lib"]["images"]["hires"]
        if image.dtype != np.uint8 or image.shape[2] != 3 or not (np.abs(image.astype(int) - expected["image"]) <= 1).all():
            raise Mismatch(f"image converted to {image.dtype} {image.shape} {np.unique(image)[:4]}, oracle {expected['image']}")

    return _compare(lambda: senca_io.validate_adata(build_adata(spec), "fuzz.h5ad"), expected, same)


# ---- image files -----------------------------------------------------------------------------

def png_bytes(array: np.ndarray, depth: int) -> bytes:
    """A PNG written by hand, so that 16-bit colour is possible (PIL writes 16-bit greyscale only)."""
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    raw = b"".join(b"\0" + array[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@st.composite
def image_case(draw) -> dict:
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    channels = draw(st.sampled_from([1, 2, 3, 4]))
    depth = draw(st.sampled_from([8, 16]))
    fmt = draw(st.sampled_from(["png", "png", "tiff-float", "jpeg"]))
    seed = draw(st.integers(0, 2**16))
    mutation = draw(st.one_of(st.none(), byte_mutation.filter(bool),
                              st.tuples(st.just("size"), st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))))
    return {"shape": (height, width, channels), "depth": depth, "format": fmt, "seed": seed, "mutation": mutation}


def write_image(spec: dict, folder: Path) -> tuple[Path, np.ndarray | None]:
    from PIL import Image

    height, width, channels = spec["shape"]
    rng = np.random.default_rng(spec["seed"])
    if spec["format"] == "tiff-float":
        array = rng.random((height, width)).astype(np.float32)
        path = folder / "img.tiff"
        Image.fromarray(array, mode="F").save(path)
        expected = np.repeat(np.rint(array * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    elif spec["format"] == "jpeg":
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = folder / "img.jpg"
        Image.fromarray(array).save(path)
        expected = None  # lossy: only the shape is known
    else:
        top = 2**spec["depth"] - 1
        array = rng.integers(0, top + 1, (height, width, channels), dtype=np.int64)
        path = folder / "img.png"
        path.write_bytes(png_bytes(array if channels > 1 else array[:, :, 0], spec["depth"]))
        colour = array[:, :, :3] if channels >= 3 else np.repeat(array[:, :, :1], 3, axis=2)
        expected = colour.astype(np.uint8) if spec["depth"] == 8 else np.rint(colour * 255 / 65535).astype(np.uint8)
    mutation = spec["mutation"]
    if mutation and mutation[0] == "size":
        data = bytearray(path.read_bytes())
        if spec["format"] == "png":
            data[16:24] = struct.pack(">II", mutation[1], mutation[2])  # IHDR width, height (CRC left wrong)
        path.write_bytes(bytes(data))
        expected = "unknown"
    elif mutation:
        path.write_bytes(_mutate_bytes(path.read_bytes(), *mutation))
        expected = "unknown"
    return path, expected


def check_image(spec: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path, expected = write_image(spec, Path(tmp))
        height, width = spec["shape"][:2]
        try:
            rgb = senca_io.read_image(path)
        except SencaInputError:
            if isinstance(expected, np.ndarray) and height >= 2 and width >= 2:
                raise Mismatch(f"senca refused a valid {spec['format']} image") from None
            if expected is None and height >= 2 and width >= 2:
                raise Mismatch("senca refused a valid JPEG") from None
            return "refused"
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 2:
            raise Mismatch(f"image read as {rgb.dtype} {rgb.shape}")
        if isinstance(expected, np.ndarray):
            # PIL reduces 16-bit colour PNGs by their high byte: within 1 of the rounded value.
            if rgb.shape != expected.shape or np.abs(rgb.astype(int) - expected.astype(int)).max() > 1:
                raise Mismatch("pixel values differ from the oracle's")
        elif expected is None and rgb.shape[:2] != (height, width):
            raise Mismatch(f"JPEG read as {rgb.shape}, written {height} x {width}")
        return "read"


# ---- the command line ------------------------------------------------------------------------

FLAG_VALUES = {
    "--seed": ["-1", "0", "1.5", "4294967296", "abc", "7"],
    "--device": ["bogus", "cpu", "auto", "cuda", "cuda:7", "", "mps"],
    "--epochs": ["0", "-3", "2", "x"],
    "--restarts": ["0", "1", "-1", "3"],
    "--jobs": ["0", "2", "-2", "1"],
    "--k": ["1", "0", "5", "-3", "k"],
    "--patch-size": ["0", "3", "64", "100000"],
    "--patch-spots": ["0", "-1", "nan", "2.0", "inf"],
    "--image-scale": ["0", "-0.2", "nan", "0.3", "1e400"],
    "--format": ["her2st", "visium", "h5ad", "zip"],
    "--cluster-method": ["gmm", "dbscan"],
}
CONFIG_LINES = ["seed = 1.5", "seed = -2", "device = \"bogus\"", "[model]\nlr = -1.0", "[model]\nlr = nan",
                "[model]\nlr = \"fast\"", "[clustering]\nk = \"5\"", "[clustering]\nrestarts = 0", "[model]\nhidden_dim = 0",
                "[graph]\nmethod = \"star\"", "[image]\npatch_px = 2", "[nope]\na = 1", "[model]\nn_clusters_range = [5, 2]",
                "x = [", "[input]\nimage_scale = 0", "[preprocessing]\nn_comps = true", "seed = 3", ""]


@st.composite
def cli_case(draw) -> dict:
    flags = draw(st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(None), max_size=4))
    argv = []
    for flag in flags:
        argv += [flag, draw(st.sampled_from(FLAG_VALUES[flag]))]
    config = draw(st.one_of(st.none(), st.lists(st.sampled_from(CONFIG_LINES), max_size=3)))
    return {"argv": argv, "config": config, "extra": draw(st.sampled_from([[], ["--bogus"], ["--quiet"], ["--force"]]))}


def check_cli(spec: dict) -> str:
    """Every invocation on a missing input ends with exit 2 and one line (argparse usage or a senca error)."""
    import contextlib

    from senca.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["run", str(Path(tmp) / "missing.h5ad"), "--out", str(Path(tmp) / "out"), *spec["argv"], *spec["extra"]]
        if spec["config"] is not None:
            config = Path(tmp) / "c.toml"
            config.write_text("\n".join(spec["config"]) + "\n")
            argv += ["--config", str(config)]
        err = stdio.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code
        lines = [line for line in err.getvalue().splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
        if code != 2:
            raise Mismatch(f"exit {code} for {argv}: {err.getvalue()[-300:]}")
        if len(lines) != 1 or not lines[0].startswith("senca: error:"):
            raise Mismatch(f"not one error line for {argv}: {lines[:3]}")
        if Path(tmp, "out").exists():
            raise Mismatch("an output folder was created")
        return "refused"


TARGETS: dict[str, tuple[Any, Callable[[dict], str]]] = {
    "her2st_tsv": (st_section(), check_st),
    "visium_h5_positions_scalefactors": (visium_section(), check_visium),
    "h5ad_validator": (adata_case(), check_adata),
    "images": (image_case(), check_image),
    "cli": (cli_case(), check_cli),
}
