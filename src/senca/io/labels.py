"""Joining per-spot labels (pathologist regions, cortical layers) to AnnData."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import pandas as pd

from senca.errors import SencaInputError
from senca.io._tables import read_table, require_unique

logger = logging.getLogger(__name__)


def attach_labels(adata: ad.AnnData, labels: pd.Series, source: str | Path, key: str = "label") -> None:
    """Join ``labels`` (indexed by spot id) into ``adata.obs[key]`` as a categorical.

    Spots without a label get NaN (logged); no overlap at all is an error.
    """
    labels = labels.astype("string").str.strip()
    joined = labels.reindex(adata.obs_names)
    n_joined = int(joined.notna().sum())
    if n_joined == 0:
        raise SencaInputError(
            f"{source}: none of the {len(labels)} labelled spot id(s) match the {adata.n_obs} spots "
            f"(label ids look like {', '.join(map(str, labels.index[:3]))}; spot ids look like "
            f"{', '.join(map(str, adata.obs_names[:3]))})"
        )
    if n_joined < adata.n_obs:
        logger.warning("%s: %d of %d spots have no label", source, adata.n_obs - n_joined, adata.n_obs)
    adata.obs[key] = pd.Categorical(joined.astype(object).where(joined.notna(), None))
    logger.info("%s: %d spots labelled, %d classes", source, n_joined, adata.obs[key].cat.categories.size)


def read_labels(
    adata: ad.AnnData,
    path: str | Path,
    spot_column: str | None = None,
    label_column: str | None = None,
    key: str = "label",
) -> ad.AnnData:
    """Join a table of spot id and label (TSV or CSV with a header) into ``adata.obs[key]``.

    Parameters
    ----------
    adata
        The section.
    path
        Table with a header; ``.csv`` is comma-separated, otherwise tab-separated.
    spot_column
        Column of spot ids; default: the first column.
    label_column
        Column of labels; default: ``"label"``, ``"layer"`` or the second column.
    key
        ``obs`` column to write.

    Returns
    -------
    ``adata``, with ``obs[key]`` set.
    """
    table = read_table(path, "label table", dtype=str)
    columns = list(table.columns)
    if len(columns) < 2:
        raise SencaInputError(f"{path}: label table has {len(columns)} column(s); expected a spot id column and a label column")
    spot_column = spot_column or columns[0]
    if label_column is None:
        label_column = next((c for c in ("label", "layer", "region") if c in columns and c != spot_column), columns[1])
    for column in (spot_column, label_column):
        if column not in columns:
            raise SencaInputError(f"{path}: label table lacks column {column!r} (found: {', '.join(map(repr, columns))})")
    require_unique(table[spot_column], path, f"spot ids in column {spot_column!r} of the label table")
    attach_labels(adata, table.set_index(spot_column)[label_column], path, key)
    return adata
