"""Reading and validating ``.h5ad`` files that follow the scanpy/squidpy spatial keys."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np

from senca.errors import SencaInputError
from senca.io._tables import require_file, require_unique, validate_counts
from senca.io.image import check_image_extent

logger = logging.getLogger(__name__)


def validate_adata(adata: ad.AnnData, source: str | Path = "AnnData") -> ad.AnnData:
    """Check that ``adata`` follows senca's conventions; raise :class:`SencaInputError` if not.

    Checks: non-empty counts in ``X`` without NaN or negative values, unique spot ids,
    ``obsm["spatial"]`` of shape ``(n_spots, 2)`` with finite values, and, when
    ``uns["spatial"]`` exists, that each library's images have a matching
    ``tissue_<res>_scalef`` and that the spots fall inside them.

    Returns
    -------
    ``adata`` (with ``X`` as CSR float32).
    """
    require_unique(adata.obs_names, source, "spot ids (obs_names)")
    adata.X = validate_counts(adata.X, source, "counts in X")
    if "spatial" not in adata.obsm:
        raise SencaInputError(f"{source}: obsm['spatial'] is missing; expected spot coordinates (n_spots x 2, full-resolution pixels)")
    spatial = np.asarray(adata.obsm["spatial"], dtype=float)
    if spatial.ndim != 2 or spatial.shape[1] < 2:
        raise SencaInputError(f"{source}: obsm['spatial'] has shape {spatial.shape}; expected (n_spots, 2)")
    spatial = spatial[:, :2]
    if not np.isfinite(spatial).all():
        raise SencaInputError(f"{source}: obsm['spatial'] holds {int((~np.isfinite(spatial)).sum())} NaN/infinite value(s)")
    adata.obsm["spatial"] = spatial
    for library_id, library in adata.uns.get("spatial", {}).items():
        if not isinstance(library, dict):
            raise SencaInputError(f"{source}: uns['spatial'][{library_id!r}] must be a dict with 'images' and 'scalefactors'")
        images = library.get("images", {})
        scalefactors = library.get("scalefactors")
        if images and not scalefactors:
            raise SencaInputError(f"{source}: uns['spatial'][{library_id!r}]['scalefactors'] is missing; expected the scale factors of its images")
        for resolution, image in images.items():
            key = f"tissue_{resolution}_scalef"
            if key not in scalefactors:
                raise SencaInputError(f"{source}: uns['spatial'][{library_id!r}]['scalefactors'][{key!r}] is missing; expected the scale of the {resolution!r} image")
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise SencaInputError(f"{source}: uns['spatial'][{library_id!r}]['images'][{resolution!r}] has shape {image.shape}; expected height x width x 3")
            check_image_extent(image, spatial, float(scalefactors[key]), f"{source} uns['spatial'][{library_id!r}]['images'][{resolution!r}]")
    return adata


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an ``.h5ad`` file and validate it with :func:`validate_adata`.

    When ``layers["counts"]`` exists it is taken as the raw counts.
    """
    path = require_file(path, "h5ad file")
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError) as err:
        raise SencaInputError(f"{path}: cannot read as .h5ad ({err})") from err
    if "counts" in adata.layers:
        adata.X = adata.layers["counts"]
    return validate_adata(adata, path)


def write_h5ad(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``adata`` (gzip) after dropping what h5ad cannot store from ``uns`` (``None``
    values; tuples become lists), so that senca's results always save. Only ``uns`` is swapped
    for the write and put back: a copy of the whole AnnData would double the memory of a large
    section at its last step."""
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, tuple):
            return list(value)
        return value
    original = adata.uns
    adata.uns = clean(dict(original))
    try:
        adata.write_h5ad(path, compression="gzip")
    finally:
        adata.uns = original
