"""Reading tables and joining them on spot ids, with errors that name the file and field."""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

_SHOW = 5  # how many offending ids an error message lists


def require_file(path: str | Path, what: str) -> Path:
    """Return ``path`` as a Path, or raise when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"{path}: {what} not found (expected an existing file)")
    return path


def read_table(path: str | Path, what: str, **kwargs) -> pd.DataFrame:
    """Read a TSV/CSV table (optionally gzipped); the separator follows the file name.

    Files named ``*.csv(.gz)`` are comma-separated, everything else tab-separated.
    """
    path = require_file(path, what)
    sep = "," if _is_csv(path) else "\t"
    try:
        if _holds_nul(path):  # pandas cuts fields at a NUL byte without a word
            raise SencaInputError(f"{path}: the {what} holds NUL bytes; expected a text table (damaged or binary file?)")
        table = pd.read_csv(path, sep=sep, **kwargs)
    except SencaInputError:
        raise
    # ValueError covers pandas' parser errors; zlib.error and EOFError a corrupt or cut .gz.
    except (ValueError, UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        raise SencaInputError(f"{path}: cannot read the {what} as a {'CSV' if sep == ',' else 'TSV'} table ({err})") from err
    if table.shape[0] == 0:
        raise SencaInputError(f"{path}: the {what} has no rows (expected one row per spot)")
    return table


# The bytes a plain decimal number is written with.
_NUMBER_BYTES = b"0123456789.-+eE"


def read_number_table(path: str | Path, what: str) -> pd.DataFrame | None:
    """A tab-separated table of decimal numbers with a header and row names, or ``None``.

    pandas parses a table of many columns slowly, every column a parser column of its own (a
    legacy ST section has 15,000 genes; measurements: benchmarks/README.md, "Reading and
    writing (exact changes)"). Here the values are parsed as one long column by the same
    parser, so the numbers are the ones :func:`read_table` gives (``index_col=0``). Only a
    table this cannot misread is taken: for anything else (quotes, missing values, duplicate or
    empty names, ragged rows, Windows line ends) it returns ``None``, and :func:`read_table`,
    whose errors name the problem, is the reader.
    """
    path = require_file(path, what)
    if _is_csv(path):
        return None
    try:
        with _open_bytes(path) as f:
            raw = f.read()
        if any(b in raw for b in (b"\x00", b"\r", b'"', b"\xef\xbb\xbf")):
            return None
        lines = raw.split(b"\n")
        del raw  # the text is held once more at most from here on
        if lines and lines[-1] == b"":
            lines.pop()
        if len(lines) < 2:
            return None
        header = lines[0].decode().split("\t")
        rows = [line.split(b"\t", 1) for line in lines[1:]]
        del lines
        if any(len(row) != 2 or row[1].count(b"\t") != len(header) - 2 for row in rows):
            return None
        # pandas would read row names that all look like numbers as numbers ("01" as 1).
        if all(not row[0].translate(None, _NUMBER_BYTES) for row in rows):
            return None
        names = [row[0].decode() for row in rows]
        genes = header[1:]
        if not all(genes) or len(set(genes)) != len(genes):
            return None
        body = b"\n".join(row[1] for row in rows)
        del rows
        if body.translate(None, _NUMBER_BYTES + b"\t\n") or b"\t\t" in body:
            return None
        body = body.replace(b"\t", b"\n")
        values = pd.read_csv(io.BytesIO(body), header=None, skip_blank_lines=False, dtype=np.float64,
                             engine="c").to_numpy()
    except (ValueError, UnicodeDecodeError, OSError, EOFError, zlib.error):
        return None
    if np.isnan(values).any():
        return None
    return pd.DataFrame(values.reshape(len(names), len(genes)), index=pd.Index(names, name=header[0] or None),
                        columns=pd.Index(genes))


def _is_csv(path: Path) -> bool:
    """Whether a table is comma-separated: named ``*.csv`` or ``*.csv.gz``."""
    return path.name.lower().removesuffix(".gz").endswith(".csv")


def _open_bytes(path: Path):
    """``path`` opened for reading bytes, decompressed when it is named ``*.gz``."""
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def open_text(path: Path):
    """``path`` opened for reading UTF-8 text, decompressed when it is named ``*.gz``."""
    return io.TextIOWrapper(_open_bytes(path), encoding="utf-8")


def _holds_nul(path: Path) -> bool:
    with _open_bytes(path) as f:
        while chunk := f.read(1 << 22):
            if b"\x00" in chunk:
                return True
    return False


def require_columns(table: pd.DataFrame, columns: Iterable[str], path: str | Path, what: str) -> None:
    """Raise when any of ``columns`` is missing from ``table``."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise SencaInputError(
            f"{path}: the {what} lacks column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, map(str, table.columns[:12])))})"
        )


def numeric_column(table: pd.DataFrame, column: str, path: str | Path, what: str) -> np.ndarray:
    """Return ``table[column]`` as float, raising when a value is not a finite number."""
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad)[:_SHOW] + 1
        raise SencaInputError(
            f"{path}: column {column!r} of the {what} must hold finite numbers; "
            f"{bad.sum()} row(s) do not (data rows {', '.join(map(str, rows))})"
        )
    return values


def require_unique(ids: Sequence[str], path: str | Path, field: str) -> None:
    """Raise when spot ids repeat."""
    ids = pd.Index(ids)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise SencaInputError(
            f"{path}: {field} must be unique; {len(dup)} id(s) repeat, e.g. {', '.join(map(str, dup[:_SHOW]))}"
        )


def require_joined(ids: pd.Index, other: pd.Index, path: str | Path, what: str, other_what: str) -> None:
    """Raise when some of ``ids`` have no row in ``other``, saying how many and showing a few."""
    missing = ids[~ids.isin(other)]
    if len(missing):
        raise SencaInputError(
            f"{path}: {len(missing)} of {len(ids)} spot id(s) in the {what} have no row in the {other_what} "
            f"(e.g. {', '.join(map(str, missing[:_SHOW]))}); "
            f"ids there look like {', '.join(map(str, other[:3]))}"
        )


def validate_counts(matrix: sp.spmatrix | np.ndarray, source: str | Path, field: str = "counts") -> sp.csr_matrix:
    """Check a spots x genes count matrix and return it as CSR float32.

    Rejects empty matrices, NaN/inf and negative values.
    """
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise SencaInputError(f"{source}: {field} matrix is empty ({matrix.shape[0]} spots x {matrix.shape[1]} genes)")
    data = matrix.data
    if not np.isfinite(data).all():
        raise SencaInputError(f"{source}: {field} contain {int((~np.isfinite(data)).sum())} NaN/infinite value(s); expected finite counts")
    if (data < 0).any():
        raise SencaInputError(f"{source}: {field} contain {int((data < 0).sum())} negative value(s); expected counts >= 0")
    if matrix.nnz == 0:
        raise SencaInputError(f"{source}: {field} matrix has no non-zero value; expected counts")
    matrix.eliminate_zeros()
    return matrix


def checked_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int],
                source: str | Path, field: str = "matrix") -> sp.csr_matrix:
    """Build a spots x genes CSR matrix from its three arrays after checking them against ``shape``.

    scipy trusts these arrays: an index past the last gene reads or writes outside the array
    (a segmentation fault), so lengths, ranges and the order of ``indptr`` are checked first.
    """
    n_spots, n_genes = shape
    data, indices, indptr = (np.asarray(a) for a in (data, indices, indptr))
    for name, array in (("indices", indices), ("indptr", indptr)):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise SencaInputError(f"{source}: '{field}/{name}' has dtype {array.dtype}, shape {array.shape}; expected a 1-d integer array")
    if data.ndim != 1 or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise SencaInputError(f"{source}: '{field}/data' has dtype {data.dtype}, shape {data.shape}; expected a 1-d numeric array")
    if len(indptr) != n_spots + 1:
        raise SencaInputError(f"{source}: '{field}/indptr' has {len(indptr)} entries; expected {n_spots + 1} (spots + 1)")
    if len(indices) != len(data):
        raise SencaInputError(f"{source}: '{field}/indices' has {len(indices)} entries but '{field}/data' {len(data)}; expected the same length")
    if indptr[0] != 0 or indptr[-1] != len(data) or (np.diff(indptr) < 0).any():
        raise SencaInputError(f"{source}: '{field}/indptr' must rise from 0 to {len(data)} (the number of stored values) without decreasing")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_genes):
        raise SencaInputError(
            f"{source}: '{field}/indices' range over {indices.min()}..{indices.max()}; expected gene indices 0..{n_genes - 1}"
        )
    index_dtype = np.int64 if max(n_spots, n_genes, len(data)) >= 2**31 else np.int32
    return sp.csr_matrix((data, indices.astype(index_dtype), indptr.astype(index_dtype)), shape=(n_spots, n_genes))


# Pixel coordinates beyond this are no image's (whole slides are about 1e5 px): a unit or parse error.
MAX_COORDINATE = 1e8


def checked_coordinates(values: np.ndarray, source: str | Path, field: str) -> np.ndarray:
    """Return spot coordinates (n x 2) as float, raising on NaN/inf, absurd magnitudes or a single point."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != 2:
        raise SencaInputError(f"{source}: {field} has shape {values.shape}; expected (n_spots, 2)")
    bad = ~np.isfinite(values)
    if bad.any():
        raise SencaInputError(f"{source}: {field} holds {int(bad.sum())} NaN/infinite value(s); expected finite coordinates")
    if np.abs(values).max(initial=0) > MAX_COORDINATE:
        raise SencaInputError(f"{source}: {field} reach {np.abs(values).max():.3g}; expected pixel coordinates within +-{MAX_COORDINATE:.0e}")
    if len(values) > 1 and (values == values[0]).all():
        raise SencaInputError(f"{source}: all {len(values)} spots of {field} sit at the same point {values[0].tolist()}; expected distinct spot positions")
    return values


def checked_integers(values: pd.Series | np.ndarray, source: str | Path, field: str, limit: int = 10**6) -> np.ndarray:
    """Return array coordinates as int64, raising unless they are whole numbers within +-``limit``."""
    values = pd.to_numeric(pd.Series(np.asarray(values)), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values != np.rint(values)) | (np.abs(values) > limit)
    if bad.any():
        rows = np.flatnonzero(bad)[:_SHOW] + 1
        raise SencaInputError(
            f"{source}: {field} must hold whole numbers within +-{limit}; {int(bad.sum())} row(s) do not "
            f"(data rows {', '.join(map(str, rows))})"
        )
    return values.astype(np.int64)
