"""Readers: legacy ST / HER2ST layout, 10x Visium folders and ``.h5ad`` files, to AnnData."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from senca.errors import SencaInputError
from senca.io.h5ad import read_h5ad, validate_adata, write_h5ad
from senca.io.image import attach_image, read_image
from senca.io.labels import read_labels
from senca.io.spatialdata import is_spatialdata, read_spatialdata, write_regions
from senca.io.sections import concat_sections, split_sections
from senca.io.st import her2st_samples, read_her2st, read_st
from senca.io.visium import matrix_source, read_10x_h5, read_10x_mtx, read_visium

FORMATS = ("her2st", "visium", "h5ad", "spatialdata")


def space_ranger_folder(path: str | Path) -> Path:
    """The folder holding a Space Ranger section's counts: ``path`` itself, its ``outs/`` (a run
    folder), or, for the ``.h5`` matrix file itself, the folder it is in."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5":
        return path.parent
    if path.is_dir() and matrix_source(path) is None and (path / "outs").is_dir():
        return path / "outs"
    return path


def detect_format(path: str | Path) -> str:
    """Name the input format of ``path``: ``"her2st"``, ``"visium"``, ``"h5ad"`` or ``"spatialdata"``."""
    path = Path(path)
    if path.is_file() and path.suffix == ".h5ad":
        return "h5ad"
    if is_spatialdata(path):
        return "spatialdata"
    path = space_ranger_folder(path)
    if path.is_dir() and (path / "ST-cnts").is_dir():
        return "her2st"
    if path.is_dir() and matrix_source(path) is not None:
        return "visium"
    if not path.exists():
        raise SencaInputError(f"{path}: input not found")
    raise SencaInputError(
        f"{path}: cannot tell the input format; expected an .h5ad file, a SpatialData .zarr store, a HER2ST-layout "
        "folder (with ST-cnts/) or a Space Ranger folder (with filtered_feature_bc_matrix.h5 or "
        "filtered_feature_bc_matrix/), its run folder (with outs/) or its .h5 file"
    )


def read(
    path: str | Path,
    format: str | None = None,
    sample: str | None = None,
    image: str | Path | None = None,
    image_scale: float | None = None,
    labels: str | Path | None = None,
) -> ad.AnnData:
    """Read any supported input; the format is detected unless given.

    Parameters
    ----------
    path
        ``.h5ad`` file, HER2ST-layout folder or Space Ranger folder.
    format
        One of :data:`FORMATS`, or ``None`` to detect.
    sample
        Section of a HER2ST-layout folder (required there).
    image, image_scale
        H&E image and its scale (image pixels per coordinate pixel), for legacy ST input.
    labels
        Table of spot id and label to join into ``obs["label"]``; a HER2ST folder's own label
        file is used without it.

    Returns
    -------
    The section as AnnData.
    """
    format = format or detect_format(path)
    if format not in FORMATS:
        raise SencaInputError(f"unknown input format {format!r}; expected one of {', '.join(FORMATS)}")
    if format != "her2st" and (image is not None or image_scale is not None):
        raise SencaInputError(f"{path}: image and image_scale apply to HER2ST-layout input only; {format} input carries its own image")
    if format == "her2st":
        if not sample:
            raise SencaInputError(f"{path}: a HER2ST-layout folder holds several sections; name one (samples: {', '.join(her2st_samples(path))})")
        adata = read_her2st(path, sample, image=image, image_scale=image_scale, labels=labels if labels else True)
        return adata
    if format == "visium":
        adata = read_visium(space_ranger_folder(path))
    else:
        adata = read_h5ad(path) if format == "h5ad" else read_spatialdata(path)
    if labels is not None:
        read_labels(adata, labels)
    return adata


__all__ = [
    "FORMATS", "attach_image", "concat_sections", "detect_format", "her2st_samples", "matrix_source", "read",
    "read_10x_h5", "read_h5ad", "read_10x_mtx", "read_her2st", "read_image", "read_labels", "read_spatialdata", "read_st",
    "read_visium", "space_ranger_folder", "split_sections", "validate_adata", "write_h5ad", "write_regions",
]
