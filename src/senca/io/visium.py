"""10x Visium Space Ranger output folder."""

from __future__ import annotations

import json
import logging
import re
import zlib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from senca.errors import SencaInputError
from senca.io._tables import (
    checked_coordinates,
    checked_csr,
    checked_integers,
    open_text,
    read_table,
    require_columns,
    require_file,
    require_joined,
    require_unique,
    validate_counts,
)
from senca.io.image import attach_image, checked_scalefactors, read_image

logger = logging.getLogger(__name__)

_POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _shape(values: np.ndarray, path: Path) -> tuple[int, int]:
    values = np.asarray(values)
    if values.shape != (2,) or not np.issubdtype(values.dtype, np.integer) or (values < 0).any() or (values >= 2**40).any():
        raise SencaInputError(f"{path}: 'matrix/shape' is {values.tolist()}; expected two non-negative integers (genes, barcodes)")
    return int(values[0]), int(values[1])


def read_10x_h5(path: str | Path) -> ad.AnnData:
    """Read a 10x HDF5 feature-barcode matrix (Cell Ranger / Space Ranger v3 layout).

    Only "Gene Expression" features are kept when a feature type is recorded. The sparse
    arrays are checked against ``matrix/shape`` before scipy sees them.
    """
    path = require_file(path, "10x feature-barcode matrix")
    try:
        with h5py.File(path, "r") as f:
            if "matrix" not in f:
                raise SencaInputError(f"{path}: no 'matrix' group; expected a 10x v3 HDF5 feature-barcode matrix")
            group = f["matrix"]
            for field in ("data", "indices", "indptr", "shape", "barcodes", "features"):
                if field not in group:
                    raise SencaInputError(f"{path}: 'matrix/{field}' is missing; expected a 10x v3 HDF5 feature-barcode matrix")
            n_genes, n_spots = _shape(group["shape"][:], path)
            # 10x stores genes x barcodes in CSC, i.e. barcodes x genes in CSR.
            matrix = checked_csr(group["data"][:], group["indices"][:], group["indptr"][:], (n_spots, n_genes), path)
            features = group["features"]
            names = _decode(features["name"][:])
            ids = _decode(features["id"][:]) if "id" in features else names
            types = _decode(features["feature_type"][:]) if "feature_type" in features else ["Gene Expression"] * len(names)
            barcodes = _decode(group["barcodes"][:])
    # Whatever h5py or numpy raise inside this block comes from the file's content.
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, IndexError) as err:
        if isinstance(err, SencaInputError):
            raise
        raise SencaInputError(f"{path}: cannot read the 10x HDF5 matrix ({type(err).__name__}: {err})") from err
    for field, values, expected in (("features/name", names, n_genes), ("features/id", ids, n_genes),
                                    ("features/feature_type", types, n_genes), ("barcodes", barcodes, n_spots)):
        if len(values) != expected:
            raise SencaInputError(f"{path}: 'matrix/{field}' has {len(values)} entries; expected {expected} as 'matrix/shape' says")
    matrix = validate_counts(matrix, path)
    keep = np.array([t == "Gene Expression" for t in types])
    if not keep.any():
        raise SencaInputError(f"{path}: no feature of type 'Gene Expression' in 'matrix/features/feature_type'")
    require_unique(barcodes, path, "barcodes ('matrix/barcodes')")
    adata = ad.AnnData(
        X=matrix[:, keep],
        obs=pd.DataFrame(index=pd.Index(barcodes)),
        var=pd.DataFrame({"gene_ids": np.array(ids)[keep]}, index=pd.Index(np.array(names)[keep])),
    )
    adata.var_names_make_unique()
    return adata


def _find(folder: Path, stems: tuple[str, ...]) -> Path | None:
    """The first of ``stem`` or ``stem.gz`` for ``stems`` that exists in ``folder``."""
    for stem in stems:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_matrix_market(path: Path) -> sp.csr_matrix:
    """Read a MatrixMarket ``coordinate`` matrix (genes x barcodes) as barcodes x genes CSR.

    The coordinates are checked against the declared shape before scipy builds the matrix, so
    a damaged file gives an error naming it instead of wrong counts or a crash.
    """
    try:
        with open_text(path) as f:
            header = f.readline()
            if not re.match(r"%%MatrixMarket\s+matrix\s+coordinate\s+(integer|real)\s+general", header, re.I):
                raise SencaInputError(
                    f"{path}: first line {header.strip()[:80]!r}; expected a MatrixMarket header "
                    "'%%MatrixMarket matrix coordinate integer general'"
                )
            line = f.readline()
            while line.startswith("%"):
                line = f.readline()
            size = line.split()
            if len(size) != 3 or not all(re.fullmatch(r"[0-9]{1,12}", v) for v in size):
                raise SencaInputError(f"{path}: size line {line.strip()[:80]!r}; expected 'n_genes n_barcodes n_entries' "
                                      "(three whole numbers below 10**12)")
            n_genes, n_spots, n_entries = (int(v) for v in size)
            entries = pd.read_csv(f, sep=r"\s+", header=None, names=["gene", "spot", "count"], comment="%",
                                  dtype={"gene": np.int64, "spot": np.int64, "count": np.float64}, engine="c")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError, OverflowError, pd.errors.ParserError) as err:
        raise SencaInputError(f"{path}: cannot read the MatrixMarket counts ({err})") from err
    if len(entries) != n_entries:
        raise SencaInputError(f"{path}: {len(entries)} entries; the size line declares {n_entries}")
    for column, bound in (("gene", n_genes), ("spot", n_spots)):
        values = entries[column].to_numpy()
        if values.size and (values.min() < 1 or values.max() > bound):
            raise SencaInputError(
                f"{path}: {column} indices range {values.min()}..{values.max()}; expected 1..{bound} (the size line)"
            )
    return sp.csr_matrix(
        (entries["count"].to_numpy(), (entries["spot"].to_numpy() - 1, entries["gene"].to_numpy() - 1)),
        shape=(n_spots, n_genes),
    )


def read_10x_mtx(path: str | Path) -> ad.AnnData:
    """Read a 10x MTX feature-barcode folder (``matrix.mtx``, ``features.tsv`` or ``genes.tsv``, ``barcodes.tsv``).

    Files may be gzipped or not (Space Ranger 1.x writes ``genes.tsv``, later versions
    ``features.tsv.gz``); the feature table has 1 to 3 columns (id, name, type). Only
    "Gene Expression" features are kept when a type is recorded. Repeated names are made
    unique, and the name column falls back to the id when it is absent.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SencaInputError(f"{folder}: not a folder (expected a 10x MTX folder with matrix.mtx(.gz))")
    matrix_path = _find(folder, ("matrix.mtx",))
    features_path = _find(folder, ("features.tsv", "genes.tsv"))
    barcodes_path = _find(folder, ("barcodes.tsv",))
    for found, what in ((matrix_path, "matrix.mtx(.gz)"), (features_path, "features.tsv(.gz) or genes.tsv(.gz)"),
                        (barcodes_path, "barcodes.tsv(.gz)")):
        if found is None:
            raise SencaInputError(f"{folder}: {what} not found; expected a 10x MTX feature-barcode folder")
    matrix = _read_matrix_market(matrix_path)
    features = _read_lines_table(features_path, "feature table", max_columns=3)
    barcodes = _read_lines_table(barcodes_path, "barcode table", max_columns=1)[0].astype(str).tolist()
    if len(features) != matrix.shape[1]:
        raise SencaInputError(f"{features_path}: {len(features)} feature rows; {matrix_path.name} declares {matrix.shape[1]} genes")
    if len(barcodes) != matrix.shape[0]:
        raise SencaInputError(f"{barcodes_path}: {len(barcodes)} barcodes; {matrix_path.name} declares {matrix.shape[0]} spots")
    require_unique(barcodes, barcodes_path, "barcodes")
    matrix = validate_counts(matrix, matrix_path)
    ids = features[0].astype(str).to_numpy()
    names = features[1].astype(str).to_numpy() if features.shape[1] > 1 else ids
    keep = (features[2].astype(str).to_numpy() == "Gene Expression") if features.shape[1] > 2 else np.ones(len(ids), bool)
    adata = ad.AnnData(
        X=matrix[:, keep],
        obs=pd.DataFrame(index=pd.Index(barcodes)),
        var=pd.DataFrame({"gene_ids": ids[keep]}, index=pd.Index(names[keep])),
    )
    adata.var_names_make_unique()
    return adata


def _read_lines_table(path: Path, what: str, max_columns: int) -> pd.DataFrame:
    """A headerless tab-separated table with 1..``max_columns`` columns (10x's features / barcodes)."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        raise SencaInputError(f"{path}: cannot read the {what} ({err})") from err
    if not 1 <= table.shape[1] <= max_columns:
        raise SencaInputError(f"{path}: the {what} has {table.shape[1]} columns; expected 1 to {max_columns}, tab-separated")
    return table


def matrix_source(path: Path) -> Path | None:
    """The counts of a Space Ranger folder: ``filtered_feature_bc_matrix.h5``, else the MTX folder."""
    h5 = path / "filtered_feature_bc_matrix.h5"
    if h5.is_file():
        return h5
    mtx = path / "filtered_feature_bc_matrix"
    return mtx if mtx.is_dir() else None


def _read_positions(spatial: Path) -> tuple[pd.DataFrame, Path]:
    with_header = spatial / "tissue_positions.csv"
    without_header = spatial / "tissue_positions_list.csv"
    if with_header.is_file():
        path, table = with_header, read_table(with_header, "tissue positions")
    elif without_header.is_file():
        path, table = without_header, read_table(without_header, "tissue positions", header=None)
        if table.shape[1] != len(_POSITION_COLUMNS):
            raise SencaInputError(
                f"{without_header}: tissue positions have {table.shape[1]} column(s); expected "
                f"{len(_POSITION_COLUMNS)} without a header ({', '.join(_POSITION_COLUMNS)})"
            )
        table.columns = _POSITION_COLUMNS
    else:
        raise SencaInputError(f"{spatial}: neither tissue_positions.csv nor tissue_positions_list.csv found")
    require_columns(table, _POSITION_COLUMNS, path, "tissue positions")
    table["barcode"] = table["barcode"].astype(str)
    require_unique(table["barcode"], path, "barcodes of the tissue positions")
    for column in _POSITION_COLUMNS[1:4]:
        table[column] = checked_integers(table[column], path, f"column {column!r} of the tissue positions")
    for column in _POSITION_COLUMNS[4:]:
        if not pd.api.types.is_numeric_dtype(table[column]) or table[column].isna().any():
            raise SencaInputError(f"{path}: column {column!r} of the tissue positions must hold numbers")
    return table.set_index("barcode"), path


def read_visium(path: str | Path, library_id: str | None = None, load_image: bool = True) -> ad.AnnData:
    """Read a Space Ranger output folder.

    Parameters
    ----------
    path
        Folder with ``filtered_feature_bc_matrix.h5`` (preferred) or the MTX folder
        ``filtered_feature_bc_matrix/`` (see :func:`read_10x_mtx`), and ``spatial/`` (``tissue_positions.csv``
        with a header or ``tissue_positions_list.csv`` without, ``scalefactors_json.json`` and
        ``tissue_hires_image.png`` and/or ``tissue_lowres_image.png``).
    library_id
        Key under ``uns["spatial"]``; defaults to the folder name.
    load_image
        Attach the hires image when present, otherwise the lowres one.

    Returns
    -------
    AnnData with raw counts in ``X``, ``obsm["spatial"]`` ``[x, y]`` in full-resolution pixels,
    ``obs["array_row"]``, ``obs["array_col"]``, and ``uns["spatial"][library_id]``.
    """
    path = Path(path)
    if not path.is_dir():
        raise SencaInputError(f"{path}: not a folder (expected a Space Ranger output folder)")
    library_id = library_id or path.resolve().name
    matrix_path = matrix_source(path)
    if matrix_path is None:
        raise SencaInputError(
            f"{path}: neither filtered_feature_bc_matrix.h5 nor a filtered_feature_bc_matrix/ MTX folder found; "
            "expected a Space Ranger output folder"
        )
    adata = read_10x_h5(matrix_path) if matrix_path.suffix == ".h5" else read_10x_mtx(matrix_path)
    spatial = path / "spatial"
    positions, positions_path = _read_positions(spatial)
    require_joined(adata.obs_names, positions.index, matrix_path, "feature-barcode matrix", f"tissue positions {positions_path.name}")
    positions = positions.loc[adata.obs_names]
    adata.obs["in_tissue"] = positions["in_tissue"].to_numpy(int)
    adata.obs["array_row"] = positions["array_row"].to_numpy(int)
    adata.obs["array_col"] = positions["array_col"].to_numpy(int)
    adata.obsm["spatial"] = checked_coordinates(positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float),
                                                positions_path, "pixel coordinates (pxl_col_in_fullres, pxl_row_in_fullres)")

    scalefactor_path = require_file(spatial / "scalefactors_json.json", "scale factors")
    try:
        scalefactors = json.loads(scalefactor_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as err:
        raise SencaInputError(f"{scalefactor_path}: not valid JSON ({err})") from err
    if not isinstance(scalefactors, dict) or "spot_diameter_fullres" not in scalefactors:
        raise SencaInputError(f"{scalefactor_path}: field 'spot_diameter_fullres' is missing; expected Space Ranger scale factors")
    scalefactors = checked_scalefactors(scalefactors, scalefactor_path, adata.obsm["spatial"])
    adata.uns["spatial"] = {
        library_id: {
            "images": {},
            "scalefactors": scalefactors,
            "metadata": {"platform": "Visium", "source": str(path)},
        }
    }
    if load_image:
        for resolution in ("hires", "lowres"):
            image_path = spatial / f"tissue_{resolution}_image.png"
            if not image_path.is_file():
                continue
            key = f"tissue_{resolution}_scalef"
            if key not in scalefactors:
                raise SencaInputError(f"{scalefactor_path}: field {key!r} is missing; it is needed for {image_path.name}")
            attach_image(adata, read_image(image_path), float(scalefactors[key]), library_id, resolution, source=image_path)
            logger.info("%s: using the %s image", path, resolution)
            break
        else:
            logger.warning("%s: no tissue_hires_image.png or tissue_lowres_image.png; continuing without an image", spatial)
    logger.info("read %s: %d spots x %d genes", library_id, adata.n_obs, adata.n_vars)
    return adata
