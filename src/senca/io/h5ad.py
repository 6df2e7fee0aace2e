"""Reading and validating ``.h5ad`` files that follow the scanpy/squidpy spatial keys."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
from anndata.io import write_elem

from senca.errors import SencaInputError
from senca.io._tables import checked_coordinates, require_file, require_unique, validate_counts
from senca.io.image import check_image_extent, checked_scalefactors, to_uint8_rgb

logger = logging.getLogger(__name__)


def validate_adata(adata: ad.AnnData, source: str | Path = "AnnData") -> ad.AnnData:
    """Check that ``adata`` follows senca's conventions; raise :class:`SencaInputError` if not.

    Checks: non-empty counts in ``X`` without NaN or negative values, unique spot ids,
    ``obsm["spatial"]`` of shape ``(n_spots, 2)`` with finite values, and, when
    ``uns["spatial"]`` exists, that its scale factors are positive numbers, that each
    library's images have a matching ``tissue_<res>_scalef`` and that the spots fall inside
    them. Images of any bit depth or float range become 8-bit RGB (scanpy keeps floats in 0..1).

    Returns
    -------
    ``adata`` (with ``X`` as CSR float32).
    """
    require_unique(adata.obs_names, source, "spot ids (obs_names)")
    adata.X = validate_counts(adata.X, source, "counts in X")
    if "spatial" not in adata.obsm:
        raise SencaInputError(f"{source}: obsm['spatial'] is missing; expected spot coordinates (n_spots x 2, full-resolution pixels)")
    try:
        spatial = np.asarray(adata.obsm["spatial"], dtype=float)
    except (TypeError, ValueError) as err:
        raise SencaInputError(f"{source}: obsm['spatial'] is not numeric ({err}); expected spot coordinates") from err
    if spatial.ndim != 2 or spatial.shape[1] < 2:
        raise SencaInputError(f"{source}: obsm['spatial'] has shape {spatial.shape}; expected (n_spots, 2)")
    adata.obsm["spatial"] = spatial = checked_coordinates(spatial[:, :2], source, "obsm['spatial']")
    libraries = adata.uns.get("spatial", {})
    if not isinstance(libraries, dict):
        raise SencaInputError(f"{source}: uns['spatial'] is a {type(libraries).__name__}; expected a dict of libraries")
    for library_id, library in libraries.items():
        _validate_library(library, spatial, f"{source}: uns['spatial'][{library_id!r}]")
    return adata


def _validate_library(library, spatial: np.ndarray, where: str) -> None:
    """Check one ``uns["spatial"]`` library in place: its scale factors, and its images as 8-bit RGB."""
    if not isinstance(library, dict):
        raise SencaInputError(f"{where} is a {type(library).__name__}; expected a dict with 'images' and 'scalefactors'")
    images = library.get("images", {})
    if not isinstance(images, dict):
        raise SencaInputError(f"{where}['images'] is a {type(images).__name__}; expected a dict of resolution to image")
    scalefactors = library.get("scalefactors")
    if images and not scalefactors:
        raise SencaInputError(f"{where}['scalefactors'] is missing; expected the scale factors of its images")
    if scalefactors is not None:
        library["scalefactors"] = scalefactors = checked_scalefactors(scalefactors, f"{where}['scalefactors']", spatial)
    for resolution, image in images.items():
        key = f"tissue_{resolution}_scalef"
        if key not in scalefactors:
            raise SencaInputError(f"{where}['scalefactors'][{key!r}] is missing; expected the scale of the {resolution!r} image")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise SencaInputError(f"{where}['images'][{resolution!r}] has shape {image.shape}; expected height x width x 3")
        images[resolution] = image = to_uint8_rgb(image, f"{where}['images'][{resolution!r}]")
        check_image_extent(image, spatial, scalefactors[key], f"{where}['images'][{resolution!r}]")


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an ``.h5ad`` file and validate it with :func:`validate_adata`.

    When ``layers["counts"]`` exists it is taken as the raw counts.
    """
    path = require_file(path, "h5ad file")
    try:
        adata = ad.read_h5ad(path)
    # Whatever h5py or anndata raise while reading comes from the file's content.
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as err:
        raise SencaInputError(f"{path}: cannot read as .h5ad ({type(err).__name__}: {err})") from err
    if "counts" in adata.layers:
        adata.X = adata.layers["counts"]
    return validate_adata(adata, path)


def write_h5ad(adata: ad.AnnData, path: str | Path) -> None:
    """Write ``adata`` (gzip) after dropping what h5ad cannot store from ``uns`` (``None``
    values; tuples become lists), so that senca's results always save. Only ``uns`` is swapped
    for the write and put back: a copy of the whole AnnData would double the memory of a large
    section at its last step.

    A layer that is ``X`` itself (senca's ``layers["lognorm"]``) is stored once: the file's
    layer is an HDF5 hard link to ``X``, which every reader sees as a layer of its own. Written
    twice, the matrix took a quarter of the file and of the writing time. Dense floating-point
    ``obsm`` arrays (PCs, embeddings, UMAP) are stored uncompressed: their low bits are noise,
    so gzip saved little of them for much of the writing time (measurements:
    benchmarks/README.md, "Reading and writing (exact changes)").
    """
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, tuple):
            return list(value)
        return value
    original_uns, original_layers, original_obsm = adata.uns, dict(adata.layers), dict(adata.obsm)
    same_as_x = [name for name, layer in original_layers.items() if layer is adata.X]
    uncompressed = [key for key, value in original_obsm.items()
                    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)]
    adata.uns = clean(dict(original_uns))
    for name in same_as_x:
        del adata.layers[name]
    for key in uncompressed:
        del adata.obsm[key]
    try:
        adata.write_h5ad(path, compression="gzip")
    finally:
        adata.uns = original_uns
        # The same arrays, in their order (assigning one does not copy it).
        _restore(adata.layers, original_layers)
        _restore(adata.obsm, original_obsm)
    with h5py.File(path, "r+") as f:
        for name in same_as_x:
            f["layers"][name] = f["X"]
        for key in uncompressed:
            write_elem(f.require_group("obsm"), key, original_obsm[key])


def _restore(mapping, items: dict) -> None:
    for key in list(mapping):
        del mapping[key]
    for key, value in items.items():
        mapping[key] = value
