"""Reading H&E images and attaching them to AnnData with their scale factors."""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image, UnidentifiedImageError

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

# Whole-slide H&E images are legitimately larger than PIL's decompression-bomb limit (~89 Mpx),
# so the limit is on memory instead: the decoded image plus its 8-bit RGB copy, in bytes.
MAX_IMAGE_BYTES_ENV = "SENCA_MAX_IMAGE_GB"
_DEFAULT_MAX_IMAGE_GB = 4.0
# Spots may sit a little beyond the image edge; anything past this factor is a scale error.
_EXTENT_SLACK = 1.10
# The spots' footprint against the image: below the first fraction of its width and height the
# scale is wrong (error), below the second it is suspicious (warning).
_MIN_FOOTPRINT, _WARN_FOOTPRINT = 0.05, 0.2
# Bytes per pixel of the PIL modes, as decoded.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
               "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4, "I;16": 2, "I;16L": 2, "I;16B": 2,
               "I;16N": 2}
_SCALEFACTOR_KEYS = ("tissue_hires_scalef", "tissue_lowres_scalef", "regist_target_img_scalef")
_LENGTH_KEYS = ("spot_diameter_fullres", "fiducial_diameter_fullres")


def max_image_bytes() -> int:
    """Memory allowed for decoding one image: ``$SENCA_MAX_IMAGE_GB`` GiB (default 4)."""
    text = os.environ.get(MAX_IMAGE_BYTES_ENV, "")
    try:
        gb = float(text) if text else _DEFAULT_MAX_IMAGE_GB
    except ValueError:
        raise SencaInputError(f"${MAX_IMAGE_BYTES_ENV}={text!r}: expected a number of GiB") from None
    if not np.isfinite(gb) or gb <= 0:
        raise SencaInputError(f"${MAX_IMAGE_BYTES_ENV}={text!r}: expected a positive number of GiB")
    return int(gb * 2**30)


def to_uint8_rgb(array: np.ndarray, source: str | Path, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Convert an image of any bit depth or float range to ``H x W x 3`` uint8 RGB.

    Integers deeper than 8 bit are scaled by their type's range (16-bit PNGs: ``/ 257``), floats
    in ``[0, 1]`` by 255 (scanpy's convention for ``uns["spatial"]`` images), floats in
    ``[0, 255]`` are rounded; greyscale is repeated and alpha dropped. Anything else is refused,
    as clipping it would turn the image all white or all black without a word. ``value_range``:
    the whole image's minimum and maximum when ``array`` is one strip of it.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or array.shape[0] < 2 or array.shape[1] < 2:
        raise SencaInputError(f"{source}: image has shape {array.shape}; expected height x width (x 1, 3 or 4 channels)")
    colour = array[:, :, :3] if array.shape[2] >= 3 else np.repeat(array[:, :, :1], 3, axis=2)
    kind = colour.dtype.kind
    if colour.dtype == np.uint8:
        return np.ascontiguousarray(colour)
    if kind == "b":
        return colour.astype(np.uint8) * 255
    if kind in "iuf" and value_range is None:
        if kind == "f" and not np.isfinite(colour).all():
            raise SencaInputError(f"{source}: image holds {int((~np.isfinite(colour)).sum())} NaN/infinite value(s); expected finite intensities")
        value_range = (colour.min(), colour.max())
    if kind in "iu":
        low, high = int(value_range[0]), int(value_range[1])
        if low < 0:
            raise SencaInputError(f"{source}: image holds negative values ({low}); expected intensities >= 0")
        # 8-bit data in a wider type (PIL's 32-bit "I" mode for 8-bit greyscale) stays as it is.
        depth = 8 if high <= 255 else (16 if high <= 65535 else None)
        if depth is None:
            raise SencaInputError(f"{source}: image values reach {high}; expected 8- or 16-bit intensities")
        if depth == 8:
            return colour.astype(np.uint8)
        return ((colour.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind == "f":
        low, high = float(value_range[0]), float(value_range[1])
        if not (np.isfinite(low) and np.isfinite(high)):
            raise SencaInputError(f"{source}: image holds NaN/infinite values; expected finite intensities")
        if low < 0 or high > 255:
            raise SencaInputError(f"{source}: float image ranges over {low:g}..{high:g}; expected 0..1 (or 0..255)")
        factor = 255.0 if high <= 1.0 else 1.0
        return np.rint(colour.astype(np.float32) * factor).astype(np.uint8)
    raise SencaInputError(f"{source}: image has dtype {colour.dtype}; expected integer or float intensities")


def _decode(img: Image.Image, path: Path, rows_per_chunk: int = 512) -> np.ndarray:
    # Converting in row strips keeps peak memory near one decoded image plus the array,
    # instead of several full-size copies (PIL -> RGB copy -> bytes -> array).
    width, height = img.size
    bands = _MODE_BYTES.get(img.mode)
    if bands is None:
        raise SencaInputError(f"{path}: image mode {img.mode!r} is not supported; expected an RGB, RGBA, greyscale or 16-bit image")
    needed = width * height * (bands + 3)
    budget = max_image_bytes()
    if needed > budget:
        raise SencaInputError(
            f"{path}: image declares {width} x {height} px ({img.mode}), which needs {needed / 2**30:.1f} GiB to decode; "
            f"the limit is {budget / 2**30:.1f} GiB (raise ${MAX_IMAGE_BYTES_ENV}, or pass a smaller image with its scale factor)"
        )
    img.load()
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    # PIL's own conversion clips 16-bit and float values at 255; those go through to_uint8_rgb,
    # scaled by the range of the whole image, not of each strip.
    deep = img.mode in ("I", "F") or img.mode.startswith("I;16")
    value_range = img.getextrema() if deep else None
    if deep and img.mode.startswith("I;16"):
        value_range = (0, max(value_range[1], 256))  # 16-bit storage: always scaled as 16 bit
    for top in range(0, height, rows_per_chunk):
        strip = img.crop((0, top, width, min(top + rows_per_chunk, height)))
        rgb[top:top + strip.height] = (to_uint8_rgb(np.asarray(strip), path, value_range) if deep
                                       else np.asarray(strip.convert("RGB")))
    return rgb


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``H x W x 3`` uint8 RGB array.

    Parameters
    ----------
    path
        PNG, JPEG or TIFF file, 8 or 16 bit.

    Returns
    -------
    The image; greyscale and RGBA images are converted to RGB, 16-bit and float images
    scaled to 8 bit (:func:`to_uint8_rgb`). The size the header declares is checked against
    :func:`max_image_bytes` before the pixels are decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise SencaInputError(f"{path}: H&E image not found (expected an existing PNG/JPEG/TIFF file)")
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the byte budget of _decode replaces PIL's pixel limit
    try:
        with Image.open(path) as img:
            rgb = _decode(img, path)
    # A damaged file makes PIL's decoders raise any of these (a flipped TIFF tag: TypeError).
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError, EOFError,
            TypeError, IndexError, KeyError, ZeroDivisionError, struct.error) as err:
        if isinstance(err, SencaInputError):
            raise
        raise SencaInputError(f"{path}: cannot read the H&E image ({err}); expected a PNG/JPEG/TIFF RGB image") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise SencaInputError(f"{path}: H&E image has shape {rgb.shape}; expected at least 2 x 2 px")
    return rgb


def _positive_number(value, source: str | Path, key: str, upper: float) -> float:
    if isinstance(value, np.ndarray) and value.ndim == 0:  # h5py may hand back 0-d arrays
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SencaInputError(f"{source}: scale factor {key!r} is {value!r} ({type(value).__name__}); expected a positive number")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not np.isfinite(number) or number <= 0 or number > upper:
        raise SencaInputError(f"{source}: scale factor {key!r} is {value!r}; expected a positive number up to {upper:g}")
    return number


def checked_scalefactors(values: dict, source: str | Path, spatial: np.ndarray | None = None) -> dict[str, float]:
    """Check Space Ranger / squidpy scale factors; return the numeric ones as floats.

    Image scale factors (image pixels per full-resolution pixel) must be positive and at most
    100, lengths positive; with the spot coordinates, ``spot_diameter_fullres`` must be a
    plausible fraction of the spot spacing (a wrong value makes patches of one pixel or of the
    whole slide).
    """
    if not isinstance(values, dict):
        raise SencaInputError(f"{source}: scale factors are a {type(values).__name__}; expected a mapping of names to numbers")
    out: dict[str, float] = {}
    for key, value in values.items():
        if key in _SCALEFACTOR_KEYS or str(key).endswith("_scalef"):
            out[key] = _positive_number(value, source, key, 100.0)
        elif key in _LENGTH_KEYS:
            out[key] = _positive_number(value, source, key, 1e8)
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            try:
                out[str(key)] = float(value)
            except OverflowError:
                continue
    diameter = out.get("spot_diameter_fullres")
    if diameter is not None and spatial is not None and len(spatial) > 1:
        from senca.graph.spacing import spot_spacing

        spacing = spot_spacing(spatial)
        if not 0.02 <= diameter / spacing <= 20:
            raise SencaInputError(
                f"{source}: scale factor 'spot_diameter_fullres' is {diameter:g} but the spots lie {spacing:g} px apart; "
                "expected a diameter of about half the spot spacing (same units as the spot coordinates)"
            )
    return out


def check_image_extent(image: np.ndarray, spatial: np.ndarray, scale: float, source: str | Path) -> None:
    """Raise when spot coordinates mapped by ``scale`` reach far beyond the image or cover a speck of it.

    Both are the signature of a wrong scale factor or the wrong image; a footprint below a
    fifth of the image in both directions is logged as a warning.
    """
    height, width = image.shape[:2]
    low_x, low_y = (spatial.min(axis=0) * scale).tolist()
    reach_x, reach_y = (spatial.max(axis=0) * scale).tolist()
    if reach_x > width * _EXTENT_SLACK or reach_y > height * _EXTENT_SLACK:
        raise SencaInputError(
            f"{source}: image is {width} x {height} px but the spot coordinates times the scale factor "
            f"{scale:g} reach x={reach_x:.0f}, y={reach_y:.0f}; expected the spots to lie inside the image "
            "(wrong image, or wrong scale factor: image pixels per spot-coordinate pixel)"
        )
    span = max((reach_x - low_x) / width, (reach_y - low_y) / height)
    if len(spatial) > 1 and span < _WARN_FOOTPRINT:
        message = (f"{source}: with the scale factor {scale:g} the spots cover only {100 * span:.1f}% of the "
                   f"{width} x {height} px image; expected them to span the tissue "
                   "(wrong scale factor: image pixels per spot-coordinate pixel, or the wrong image)")
        if span < _MIN_FOOTPRINT:
            raise SencaInputError(message)
        logger.warning("%s", message)


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
    scale = _positive_number(scale, source, f"tissue_{resolution}_scalef", 100.0)
    image = to_uint8_rgb(image, source)
    check_image_extent(image, adata.obsm["spatial"], scale, source)
    library = adata.uns.setdefault("spatial", {}).setdefault(library_id, {})
    library.setdefault("images", {})[resolution] = image
    scalefactors = library.setdefault("scalefactors", {})
    scalefactors[f"tissue_{resolution}_scalef"] = float(scale)
    if spot_diameter_fullres is not None:
        scalefactors["spot_diameter_fullres"] = float(spot_diameter_fullres)
    library.setdefault("metadata", {})["image_path"] = str(source)
