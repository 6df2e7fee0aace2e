"""Reading H&E images and attaching them to AnnData with their scale factors."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image, UnidentifiedImageError

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

# Whole-slide H&E images are legitimately larger than PIL's decompression-bomb limit (~89 Mpx).
_MAX_PIXELS = 40_000 * 40_000
# Spots may sit a little beyond the image edge; anything past this factor is a scale error.
_EXTENT_SLACK = 1.10


def _to_rgb_array(img: Image.Image, rows_per_chunk: int = 512) -> np.ndarray:
    # Converting in row strips keeps peak memory near one decoded image plus the array,
    # instead of several full-size copies (PIL -> RGB copy -> bytes -> array).
    img.load()
    width, height = img.size
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, rows_per_chunk):
        strip = img.crop((0, top, width, min(top + rows_per_chunk, height)))
        rgb[top:top + strip.height] = np.asarray(strip.convert("RGB"))
    return rgb


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``H x W x 3`` uint8 RGB array.

    Parameters
    ----------
    path
        PNG, JPEG or TIFF file.

    Returns
    -------
    The image; greyscale and RGBA images are converted to RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"{path}: H&E image not found (expected an existing PNG/JPEG/TIFF file)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = _MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                rgb = _to_rgb_array(img)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as err:
        raise SencaInputError(f"{path}: cannot read the H&E image ({err}); expected a PNG/JPEG/TIFF RGB image") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if rgb.ndim != 3 or rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise SencaInputError(f"{path}: H&E image has shape {rgb.shape}; expected height x width x 3")
    return rgb


def check_image_extent(image: np.ndarray, spatial: np.ndarray, scale: float, source: str | Path) -> None:
    """Raise when spot coordinates mapped by ``scale`` reach far beyond the image.

    That is the signature of a wrong scale factor or the wrong image.
    """
    height, width = image.shape[:2]
    reach_x, reach_y = (spatial.max(axis=0) * scale).tolist()
    if reach_x > width * _EXTENT_SLACK or reach_y > height * _EXTENT_SLACK:
        raise SencaInputError(
            f"{source}: image is {width} x {height} px but the spot coordinates times the scale factor "
            f"{scale:g} reach x={reach_x:.0f}, y={reach_y:.0f}; expected the spots to lie inside the image "
            "(wrong image, or wrong scale factor: image pixels per spot-coordinate pixel)"
        )


def attach_image(
    adata: ad.AnnData,
    image: np.ndarray,
    scale: float,
    library_id: str,
    resolution: str = "hires",
    source: str | Path = "image",
    spot_diameter_fullres: float | None = None,
) -> None:
    """Store ``image`` in ``adata.uns["spatial"][library_id]`` with squidpy-style scale factors.

    Parameters
    ----------
    adata
        AnnData with ``obsm["spatial"]`` in full-resolution pixels.
    image
        ``H x W x 3`` uint8 image.
    scale
        Image pixels per full-resolution pixel.
    library_id
        Key under ``uns["spatial"]``.
    resolution
        ``"hires"`` or ``"lowres"``; the scale factor is stored as ``tissue_<resolution>_scalef``.
    source
        File name used in error messages.
    spot_diameter_fullres
        Spot diameter in full-resolution pixels, kept in the scale factors when given.
    """
    if not np.isfinite(scale) or scale <= 0:
        raise SencaInputError(f"{source}: image scale factor is {scale!r}; expected a positive number")
    check_image_extent(image, adata.obsm["spatial"], scale, source)
    library = adata.uns.setdefault("spatial", {}).setdefault(library_id, {})
    library.setdefault("images", {})[resolution] = image
    scalefactors = library.setdefault("scalefactors", {})
    scalefactors[f"tissue_{resolution}_scalef"] = float(scale)
    if spot_diameter_fullres is not None:
        scalefactors["spot_diameter_fullres"] = float(spot_diameter_fullres)
    library.setdefault("metadata", {})["image_path"] = str(source)
