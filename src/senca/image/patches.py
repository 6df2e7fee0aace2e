"""H&E patches around every spot, cut from the section image without copying it per spot."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
from tqdm.auto import tqdm

from senca.errors import SencaInputError
from senca.graph.spatial import section_codes

logger = logging.getLogger(__name__)

# A pixel is background when it is nearly black (blacked-out display images) or nearly white
# and unsaturated (glass); a patch is "blank" when less than this fraction is tissue.
_MIN_TISSUE_FRACTION = 0.25
# Above this fraction of spots off the tissue the warning says the image probably does not fit.
_MAX_OFF_TISSUE = 0.2


def section_image(adata: ad.AnnData, library_id: str | None = None) -> tuple[np.ndarray, float, float]:
    """The highest-resolution image of a section, its scale factor and the spot diameter.

    Returns
    -------
    ``(image, scale, spot_diameter_fullres)`` where ``scale`` is image pixels per
    full-resolution pixel (the unit of ``obsm["spatial"]``).
    """
    libraries = adata.uns.get("spatial", {})
    if library_id is None:
        with_images = [k for k, v in libraries.items() if v.get("images")]
        if not with_images:
            raise SencaInputError("AnnData: uns['spatial'] holds no image; expected an H&E image to cut patches from")
        if len(with_images) > 1:
            raise SencaInputError(f"AnnData: uns['spatial'] holds several libraries with images ({', '.join(with_images)}); name one with library_id")
        library_id = with_images[0]
    if library_id not in libraries:
        raise SencaInputError(f"AnnData: uns['spatial'] has no library {library_id!r}")
    library = libraries[library_id]
    images, scalefactors = library.get("images", {}), library.get("scalefactors", {})
    resolution = next((r for r in ("hires", "lowres") if r in images), None)
    if resolution is None:
        raise SencaInputError(f"AnnData: uns['spatial'][{library_id!r}]['images'] holds neither 'hires' nor 'lowres'")
    for key in (f"tissue_{resolution}_scalef", "spot_diameter_fullres"):
        if key not in scalefactors:
            raise SencaInputError(f"AnnData: uns['spatial'][{library_id!r}]['scalefactors'][{key!r}] is missing")
    return np.asarray(images[resolution]), float(scalefactors[f"tissue_{resolution}_scalef"]), float(scalefactors["spot_diameter_fullres"])


# Pixels per channel (spots x side^2, and spots x patch_px^2) handled at once: small enough to
# stay in the CPU cache, large enough that NumPy, not Python, does the work.
_CHUNK_PIXELS = 1 << 18
# Pillow's fixed-point precision for 8-bit resampling (Resample.c: PRECISION_BITS).
_PRECISION_BITS = 22


def _resample_weights(in_size: int, out_size: int, filter_: str) -> np.ndarray:
    """Pillow's resampling coefficients from ``in_size`` to ``out_size`` pixels, as an
    ``out_size x in_size`` matrix of its fixed-point integers (``Resample.c``:
    ``precompute_coeffs`` and ``normalize_coeffs_8bpc``), so that patches equal
    ``Image.resize(..., BOX | BILINEAR)`` pixel for pixel."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = (0.5 if filter_ == "box" else 1.0) * filterscale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        centre = (out + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
        x = (np.arange(lo, hi) - centre + 0.5) / filterscale
        w = ((x > -0.5) & (x <= 0.5)).astype(float) if filter_ == "box" else np.clip(1.0 - np.abs(x), 0.0, None)
        if w.sum() != 0:
            w = w / w.sum()
        weights[out, lo:hi] = np.floor(0.5 + w * (1 << _PRECISION_BITS))
    return weights


def _round_fixed(values: np.ndarray) -> np.ndarray:
    """Pillow's rounding of a fixed-point sum to 8 bits (exact: the float64 sums are integers < 2^53)."""
    fixed = (values.astype(np.int64) + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS
    return np.minimum(fixed, 255, out=fixed).astype(np.uint8)  # the weights are >= 0: no value below 0


def _background_colour(image: np.ndarray) -> np.ndarray:
    # The median of the image's outer frame is the colour of the slide around the tissue.
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(frame, axis=0).astype(np.uint8)


def tissue_fraction(patches: np.ndarray) -> np.ndarray:
    """Fraction of pixels per patch (``n x 3 x P x P`` uint8) that are neither black nor white glass."""
    patches = patches.astype(np.int16)
    darkest = patches.max(axis=1) < 25
    glass = (patches.min(axis=1) > 215) & (patches.max(axis=1) - patches.min(axis=1) < 20)
    return 1.0 - (darkest | glass).mean(axis=(1, 2))


def extract_patches(
    adata: ad.AnnData,
    patch_spots: float = 2.0,
    patch_px: int = 64,
    library_id: str | None = None,
    show_progress: bool = True,
    library_key: str | None = None,
) -> np.ndarray:
    """Cut a square H&E patch around every spot and resize it to ``patch_px x patch_px``.

    Parameters
    ----------
    adata
        Spots with ``obsm["spatial"]`` and an image in ``uns["spatial"]``.
    patch_spots
        Side of the square in spot diameters (2.0: the spot and a ring of context around it).
    patch_px
        Output side in pixels.
    library_id
        Library under ``uns["spatial"]``; default: the only one with an image.
    show_progress
        Show a progress bar.
    library_key
        ``obs`` column naming each spot's section when ``adata`` holds several: each section's
        spots are cut from its own image, ``uns["spatial"][section]`` (squidpy's convention).

    Returns
    -------
    ``uint8`` array ``n_spots x 3 x patch_px x patch_px``. Parts of a square beyond the image
    are padded with the slide's background colour. ``obs["patch_tissue_fraction"]`` records
    the fraction of tissue pixels per patch; spots outside the image or on blank background are
    reported in a warning with their counts.
    """
    if patch_spots <= 0 or patch_px < 4:
        raise SencaInputError(f"patch_spots={patch_spots}, patch_px={patch_px}; expected patch_spots > 0 and patch_px >= 4")
    if library_key is not None and library_id is not None:
        raise SencaInputError("extract_patches: give library_id (one section) or library_key (several), not both")
    names, codes = section_codes(adata, library_key)
    patches = np.empty((adata.n_obs, 3, patch_px, patch_px), dtype=np.uint8)
    fraction = np.empty(adata.n_obs)
    bar = tqdm(total=adata.n_obs, desc="H&E patches", disable=not show_progress, leave=False)
    for code, name in enumerate(names):
        rows = np.flatnonzero(codes == code)
        image, scale, diameter = section_image(adata, name if library_key is not None else library_id)
        centres = np.asarray(adata.obsm["spatial"], dtype=float)[rows, :2] * scale
        patches[rows] = _cut(image, centres, max(patch_spots * diameter * scale / 2.0, 1.0), patch_px, bar)
        fraction[rows] = tissue_fraction(patches[rows])
        height, width = image.shape[:2]
        outside = (centres[:, 0] < 0) | (centres[:, 1] < 0) | (centres[:, 0] >= width) | (centres[:, 1] >= height)
        blank = (fraction[rows] < _MIN_TISSUE_FRACTION) & ~outside
        if outside.any() or blank.any():
            # Spots are placed on tissue: many on glass or black means the image does not fit them.
            suspicious = (outside | blank).mean() > _MAX_OFF_TISSUE
            logger.warning(
                "%s%d of %d spots lie outside the %d x %d image and %d fall on blank background "
                "(< %.0f%% tissue pixels); their patches carry little image information%s",
                f"section {name}: " if library_key is not None else "", int(outside.sum()), rows.size, width, height,
                int(blank.sum()), 100 * _MIN_TISSUE_FRACTION,
                "; so many suggest the image is not this section's or its scale factor is wrong" if suspicious else "",
            )
    bar.close()
    adata.obs["patch_tissue_fraction"] = fraction
    return patches


def _cut(image: np.ndarray, centres: np.ndarray, half: float, patch_px: int, bar) -> np.ndarray:
    """Patches of ``image`` around ``centres`` (image pixels), ``2 * half`` pixels across, a chunk at a time."""
    height, width = image.shape[:2]
    background = _background_colour(image)
    side = int(round(2 * half))
    corners = np.rint(centres - half).astype(np.int64)  # (x0, y0) of every square
    # Pillow's resampling of a side x side crop to patch_px x patch_px, as two matrices.
    filter_ = "bilinear" if side < patch_px else "box"
    weights = _resample_weights(side, patch_px, filter_)
    patches = np.empty((centres.shape[0], 3, patch_px, patch_px), dtype=np.uint8)
    chunk = max(1, _CHUNK_PIXELS // max(side, patch_px) ** 2)
    offsets = np.arange(side)
    for start in range(0, centres.shape[0], chunk):
        x0, y0 = corners[start:start + chunk, 0], corners[start:start + chunk, 1]
        cols, rows = x0[:, None] + offsets, y0[:, None] + offsets  # (spots, side)
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        crops = image[rows.clip(0, height - 1)[:, :, None], cols.clip(0, width - 1)[:, None, :], :3]
        crops[~inside] = background
        # (spots, 3, side rows, side cols): horizontal pass, then vertical, each rounded to 8 bits.
        crops = crops.transpose(0, 3, 1, 2).astype(np.float64)
        wide = _round_fixed(crops @ weights.T)
        patches[start:start + chunk] = _round_fixed(weights @ wide)
        bar.update(len(x0))
    return patches
