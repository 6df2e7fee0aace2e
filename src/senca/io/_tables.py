"""Reading tables and joining them on spot ids, with errors that name the file and field."""

from __future__ import annotations

import logging
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
    sep = "," if path.name.lower().removesuffix(".gz").endswith(".csv") else "\t"
    try:
        table = pd.read_csv(path, sep=sep, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        raise SencaInputError(f"{path}: cannot read the {what} as a {'CSV' if sep == ',' else 'TSV'} table ({err})") from err
    if table.shape[0] == 0:
        raise SencaInputError(f"{path}: the {what} has no rows (expected one row per spot)")
    return table


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
