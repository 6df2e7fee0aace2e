"""Legacy Spatial Transcriptomics (ST) layout, as used by the HER2ST data set.

Files of one section:

- counts ``<S>.tsv(.gz)``: spots x genes, row names ``"<x>x<y>"`` (array coordinates);
- spot selection ``<S>_selection.tsv``: integer array ``x``, ``y`` and ``pixel_x``, ``pixel_y``
  in pixels of the original full-resolution H&E image (optionally ``selected``);
- optional pathologist labels ``<S>_labeled_coordinates.tsv``: ``x``, ``y`` (rounded to build the
  same id) and ``label``; its own pixel columns are in another frame and ignored;
- optional H&E image with a scale factor: image pixels per ``pixel_x``/``pixel_y`` pixel.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from senca.errors import SencaInputError
from senca.graph.spacing import spot_spacing
from senca.io._tables import (
    checked_coordinates,
    checked_integers,
    numeric_column,
    read_number_table,
    read_table,
    require_columns,
    require_joined,
    require_unique,
    require_file,
    validate_counts,
)
from senca.io.image import attach_image, read_image
from senca.io.labels import attach_labels

logger = logging.getLogger(__name__)

# Legacy ST spots are 100 um across on a 200 um grid: the diameter is half the spacing.
_ST_DIAMETER_PER_SPACING = 0.5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _spot_ids(table: pd.DataFrame, path: Path, what: str, round_xy: bool) -> pd.Index:
    require_columns(table, ["x", "y"], path, what)
    x = numeric_column(table, "x", path, what)
    y = numeric_column(table, "y", path, what)
    if round_xy:
        x, y = np.rint(x), np.rint(y)
    x = checked_integers(x, path, f"column 'x' of the {what} (integer array coordinates)")
    y = checked_integers(y, path, f"column 'y' of the {what} (integer array coordinates)")
    return pd.Index([f"{a}x{b}" for a, b in zip(x.tolist(), y.tolist())])


def _read_counts(path: Path) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    table = read_number_table(path, "counts table")
    if table is None:
        table = read_table(path, "counts table", index_col=0)
    if table.shape[1] == 0:
        raise SencaInputError(f"{path}: counts table has no gene columns (expected spots x genes)")
    spots = pd.Index(table.index.astype(str))
    require_unique(spots, path, "spot ids (row names) of the counts table")
    genes = pd.Index(table.columns.astype(str))
    # pandas names an empty header field "Unnamed: i"; with a header one field short (R style) the
    # names would then slide onto the wrong columns.
    unnamed = [i for i, g in enumerate(genes) if re.fullmatch(r"Unnamed: \d+", g)]
    if unnamed:
        raise SencaInputError(
            f"{path}: the counts table's header has an empty gene name (column {unnamed[0] + 2}); "
            "expected one name per gene column after the spot-id column"
        )
    for column in [c for c, t in table.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]:
        # pandas leaves a column as text when one value is too large for 64 bits; parse it here.
        converted = pd.to_numeric(table[column], errors="coerce")
        bad = converted.isna() & table[column].notna()
        if bad.any():
            raise SencaInputError(
                f"{path}: counts table column {str(column)!r} holds {int(bad.sum())} value(s) that are not numbers "
                f"(e.g. {table[column][bad].iloc[0]!r} in row {spots[np.flatnonzero(bad.to_numpy())[0]]!r}); "
                "expected spots x genes counts with spot ids as row names"
            )
        table[column] = converted
    return validate_counts(table.to_numpy(dtype=np.float32), path), spots, genes


def read_st(
    counts: str | Path,
    spots: str | Path,
    labels: str | Path | None = None,
    image: str | Path | None = None,
    image_scale: float | None = None,
    library_id: str | None = None,
) -> ad.AnnData:
    """Read one legacy ST section into AnnData.

    Parameters
    ----------
    counts
        Spots x genes counts ``.tsv`` or ``.tsv.gz``, row names ``"<x>x<y>"``.
    spots
        Spot selection file with ``x``, ``y``, ``pixel_x``, ``pixel_y`` (and optionally ``selected``).
    labels
        Optional pathologist label file with ``x``, ``y`` and ``label``.
    image
        Optional H&E image of the section.
    image_scale
        Image pixels per ``pixel_x``/``pixel_y`` pixel; required with ``image``
        (the HER2ST 2000 px display images: 0.28761).
    library_id
        Key under ``uns["spatial"]``; defaults to the counts file name without suffixes.

    Returns
    -------
    AnnData with raw counts in ``X``, ``obsm["spatial"]`` in full-resolution pixels,
    ``obs["array_x"]``, ``obs["array_y"]``, ``obs["label"]`` when labels are given, and
    ``uns["spatial"][library_id]`` with the image and scale factors.
    """
    counts = require_file(counts, "counts table")
    spots = require_file(spots, "spot selection file")
    if image is not None and image_scale is None:
        raise SencaInputError(
            f"{image}: the image scale factor is missing; pass image_scale (image pixels per "
            "pixel_x/pixel_y pixel, e.g. 0.28761 for the HER2ST 2000 px display images)"
        )
    library_id = library_id or counts.name.split(".")[0]

    matrix, spot_ids, genes = _read_counts(counts)

    selection = read_table(spots, "spot selection file")
    require_columns(selection, ["x", "y", "pixel_x", "pixel_y"], spots, "spot selection file")
    selection.index = _spot_ids(selection, spots, "spot selection file", round_xy=False)
    require_unique(selection.index, spots, "spot ids built from 'x' and 'y' of the spot selection file")
    if "selected" in selection.columns:
        selection = selection[pd.to_numeric(selection["selected"], errors="coerce").fillna(0).to_numpy() != 0]
    require_joined(spot_ids, selection.index, counts, "counts table", f"spot selection file {spots.name} (selected spots)")
    extra = len(selection) - len(spot_ids)
    if extra:
        logger.info("%s: %d selected spot(s) have no counts and are left out", spots, extra)
    selection = selection.loc[spot_ids]
    pixels = checked_coordinates(np.column_stack([
        numeric_column(selection, "pixel_x", spots, "spot selection file"),
        numeric_column(selection, "pixel_y", spots, "spot selection file"),
    ]), spots, "columns 'pixel_x', 'pixel_y' of the spot selection file")

    adata = ad.AnnData(
        X=matrix,
        obs=pd.DataFrame(
            {"array_x": selection["x"].to_numpy(np.int64), "array_y": selection["y"].to_numpy(np.int64)},
            index=spot_ids,
        ),
        var=pd.DataFrame(index=genes),
    )
    if not adata.var_names.is_unique:
        logger.warning("%s: %d duplicated gene name(s) made unique", counts, int(adata.var_names.duplicated().sum()))
        adata.var_names_make_unique()
    adata.obsm["spatial"] = pixels
    spacing = spot_spacing(pixels)
    adata.uns["spatial"] = {
        library_id: {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": spacing * _ST_DIAMETER_PER_SPACING},
            "metadata": {"platform": "ST", "counts": str(counts), "spots": str(spots)},
        }
    }
    if labels is not None:
        label_table = read_table(labels, "label file")
        require_columns(label_table, ["x", "y", "label"], labels, "label file")
        label_table = label_table.dropna(subset=["x", "y"])
        label_table.index = _spot_ids(label_table, labels, "label file", round_xy=True)
        require_unique(label_table.index, labels, "spot ids built from rounded 'x' and 'y' of the label file")
        attach_labels(adata, label_table["label"], labels)
    if image is not None:
        attach_image(adata, read_image(image), image_scale, library_id, "hires", source=image)
    logger.info("read %s: %d spots x %d genes", library_id, adata.n_obs, adata.n_vars)
    return adata


def read_her2st(
    root: str | Path,
    sample: str,
    image: str | Path | None = None,
    image_scale: float | None = None,
    labels: str | Path | bool = True,
) -> ad.AnnData:
    """Read one section of a HER2ST-layout folder.

    Parameters
    ----------
    root
        Folder holding ``ST-cnts/``, ``ST-spotfiles/`` and optionally ``ST-pat/lbl/``.
    sample
        Section name, e.g. ``"A1"``.
    image
        Optional H&E image (the layout's image names vary, so it is given explicitly).
    image_scale
        Image pixels per ``pixel_x``/``pixel_y`` pixel; required with ``image``.
    labels
        ``True``: use ``ST-pat/lbl/<sample>_labeled_coordinates.tsv`` when it exists;
        ``False``: no labels; a path: that label file.

    Returns
    -------
    AnnData as :func:`read_st` returns it.
    """
    root = Path(root)
    if not (root / "ST-cnts").is_dir():
        raise SencaInputError(f"{root}: not a HER2ST-layout folder (expected a subfolder 'ST-cnts')")
    counts = next((root / "ST-cnts" / f"{sample}{ext}" for ext in (".tsv.gz", ".tsv")
                   if (root / "ST-cnts" / f"{sample}{ext}").is_file()), None)
    if counts is None:
        known = sorted(p.name.split(".")[0] for p in (root / "ST-cnts").glob("*.tsv*"))
        raise SencaInputError(
            f"{root / 'ST-cnts'}: no counts for sample {sample!r} (expected {sample}.tsv.gz); "
            f"samples found: {', '.join(known) or 'none'}"
        )
    label_file: Path | None
    if labels is True:
        label_file = root / "ST-pat" / "lbl" / f"{sample}_labeled_coordinates.tsv"
        label_file = label_file if label_file.is_file() else None
    else:
        label_file = Path(labels) if labels else None
    return read_st(
        counts,
        root / "ST-spotfiles" / f"{sample}_selection.tsv",
        labels=label_file,
        image=image,
        image_scale=image_scale,
        library_id=sample,
    )


def her2st_samples(root: str | Path) -> list[str]:
    """Sections of a HER2ST-layout folder that have counts, sorted."""
    return sorted(p.name.split(".")[0] for p in (Path(root) / "ST-cnts").glob("*.tsv*"))
