"""A simulated tissue section (counts + H&E-like image) with known regions.

The section is built so that neither modality alone can recover every region:

* ``tumour_clone_A`` and ``tumour_clone_B`` share one morphology (image-confounded) but carry
  different clone programmes (marker genes plus a copy-number-like block of genes);
* ``stroma_dense`` and ``stroma_loose`` share one expression programme (expression-confounded)
  but look different (dense wavy collagen vs pale oedematous stroma with clefts);
* ``immune_infiltrate`` and ``adipose`` differ from everything in both modalities.

Geometry is worked out in *spacing units* (1 unit = centre-to-centre spot distance) on a coarse
raster of smooth random fields, then sampled at spot centres and at image pixels, so the spot
labels, the per-spot cell composition and the image all follow one region map.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
from scipy import ndimage, sparse

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

LIBRARY_ID = "simulated"

REGIONS: tuple[str, ...] = (
    "tumour_clone_A",
    "tumour_clone_B",
    "stroma_dense",
    "stroma_loose",
    "immune_infiltrate",
    "adipose",
)
_A, _B, _DENSE, _LOOSE, _IMMUNE, _ADIPOSE = range(len(REGIONS))
_BACKGROUND = 255

IMAGE_CONFOUNDED: tuple[tuple[str, str], ...] = (("tumour_clone_A", "tumour_clone_B"),)
EXPRESSION_CONFOUNDED: tuple[tuple[str, str], ...] = (("stroma_dense", "stroma_loose"),)

# Target fraction of spots per region (same order as REGIONS).
_TARGET_FRACTIONS = np.array([0.16, 0.16, 0.20, 0.18, 0.12, 0.18])

# Expression programmes active in each region; the two stroma regions share one programme.
_REGION_PROGRAMMES: dict[str, tuple[str, ...]] = {
    "tumour_clone_A": ("TUMOUR", "CLONE_A", "CNV_GAIN"),
    "tumour_clone_B": ("TUMOUR", "CLONE_B"),
    "stroma_dense": ("STROMA",),
    "stroma_loose": ("STROMA",),
    "immune_infiltrate": ("IMMUNE",),
    "adipose": ("ADIPOSE",),
}
# (number of genes, median fold change) per programme; CNV_GAIN acts on unnamed background genes.
_PROGRAMMES: dict[str, tuple[int, float]] = {
    "TUMOUR": (30, 3.0),
    "CLONE_A": (30, 3.5),
    "CLONE_B": (30, 3.5),
    "CNV_GAIN": (120, 1.6),
    "STROMA": (30, 3.0),
    "IMMUNE": (30, 3.5),
    "ADIPOSE": (25, 3.0),
}
# Cell density differs between tissues, and so does the number of captured molecules.
_LIBRARY_MULTIPLIER = np.array([1.3, 1.3, 1.0, 1.0, 1.2, 0.5])
_LIBRARY_MEDIAN = 1500.0  # molecules per spot over the simulated genes, before dropout

_SPOT_TO_SPACING = {"hex": 55.0 / 100.0, "square": 100.0 / 200.0}  # Visium, legacy ST
_RASTER_PER_UNIT = 4  # coarse raster cells per spacing unit, lowered above _MAX_RASTER_SIDE
_MAX_RASTER_SIDE = 2400  # cells: sections up to about 100k spots keep 4 cells per spacing unit
_MIN_GENES = 400
_MIN_SPOTS = 200
_MAX_SPOTS = 2_000_000
_DIRECT_FILTER_MAX_SIGMA = 48.0  # raster cells; longer correlation lengths are filtered by FFT
_COUNT_CHUNK = 10_000  # spots whose counts are drawn at once (dense chunk x genes, then sparse)
_MIN_SPACING_HIRES = 8.0
_MAX_IMAGE_SIDE = 12_000

# Beer-Lambert optical-density vectors (R, G, B) of the two stains.
_OD_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_OD_EOSIN = np.array([0.10, 0.75, 0.35], dtype=np.float32)


@dataclass(frozen=True)
class _Morphology:
    """How one tissue type looks; lengths are in spacing units so textures scale with the image."""

    eosin: float  # stroma/cytoplasm eosin concentration
    haem_bg: float  # diffuse haematoxylin (cytoplasm basophilia)
    nuclei_coverage: float  # fraction of (cellular) area covered by nuclei
    nucleus_radius: float
    radius_cv: float  # pleomorphism
    aspect: float  # major/minor axis ratio
    nucleus_haem: float
    vesicular: bool = False  # open chromatin with a dark rim (tumour) vs solid (lymphocytes)
    fibre_strength: float = 0.0  # collagen fibres; nuclei then lie along them
    fibre_wavelength: float = 1.0
    clefts: float = 0.0  # area fraction of white oedema clefts
    septa: float = 0.0  # area fraction of thin stromal septa between cell nests
    adipocytes: bool = False


# Both tumour clones share one morphology: this is the image confound.
_TUMOUR_LOOK = _Morphology(
    eosin=0.30, haem_bg=0.14, nuclei_coverage=0.42, nucleus_radius=0.085, radius_cv=0.25,
    aspect=1.35, nucleus_haem=1.25, vesicular=True, septa=0.16,
)
_MORPHOLOGY: dict[int, _Morphology] = {
    _A: _TUMOUR_LOOK,
    _B: _TUMOUR_LOOK,
    _DENSE: _Morphology(
        eosin=0.60, haem_bg=0.02, nuclei_coverage=0.05, nucleus_radius=0.075, radius_cv=0.20,
        aspect=3.5, nucleus_haem=1.30, fibre_strength=0.45, fibre_wavelength=0.22,
    ),
    _LOOSE: _Morphology(
        eosin=0.26, haem_bg=0.02, nuclei_coverage=0.04, nucleus_radius=0.070, radius_cv=0.20,
        aspect=2.5, nucleus_haem=1.10, fibre_strength=0.15, fibre_wavelength=0.32, clefts=0.12,
    ),
    _IMMUNE: _Morphology(
        eosin=0.22, haem_bg=0.06, nuclei_coverage=0.42, nucleus_radius=0.050, radius_cv=0.12,
        aspect=1.08, nucleus_haem=1.70,
    ),
    _ADIPOSE: _Morphology(
        eosin=0.0, haem_bg=0.0, nuclei_coverage=0.0, nucleus_radius=0.060, radius_cv=0.15,
        aspect=2.5, nucleus_haem=1.30, adipocytes=True,
    ),
}


def simulate_tissue(
    n_spots: int = 3000,
    grid: str = "hex",
    n_genes: int = 1000,
    seed: int = 0,
    spot_diameter_px: float = 100.0,
    image_scale: float = 0.17,
    image: bool = True,
) -> ad.AnnData:
    """Simulate a tumour section: spot counts, coordinates and an H&E-like image with truth.

    The section holds six regions with smooth blob/band shapes (two tumour sub-clones, dense and
    loose stroma, an immune infiltrate rimming the tumour, adipose tissue at the periphery).
    ``tumour_clone_A``/``tumour_clone_B`` look identical in the image but differ in expression;
    ``stroma_dense``/``stroma_loose`` share expression but differ in the image.

    Counts are negative binomial (gamma-Poisson, gene-wise dispersion) around a per-spot mixture
    of region programmes (spots on a boundary capture cells of both sides), with log-normal
    library sizes and expression-dependent dropout. The image is rendered in optical density
    from haematoxylin and eosin concentration maps (nuclei, collagen fibres, adipocytes, clefts).

    Parameters
    ----------
    n_spots
        Number of spots, all in tissue.
    grid
        ``"hex"`` (Visium-like: 55 µm spots 100 µm apart, odd rows offset) or ``"square"``
        (legacy ST-like: 100 µm spots 200 µm apart).
    n_genes
        Number of genes (at least 400); 175 of them are named region markers.
    seed
        Seed of the :class:`numpy.random.Generator`; the same seed gives identical output.
    spot_diameter_px
        Spot diameter in full-resolution image pixels.
    image_scale
        Scale factor from full-resolution pixels to the stored ``hires`` image
        (``tissue_hires_scalef``).
    image
        Render the H&E-like image. ``False``: expression and coordinates only, with regions
        and compositions read off the region fields at the spots; memory then grows with the
        spots (counts are drawn a chunk of spots at a time, straight into a sparse matrix), so
        sections of a million spots fit in a few GB.

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, float32), truth in ``obs["label"]`` (categorical),
    ``obs["array_row"]``/``obs["array_col"]``, full-resolution ``obsm["spatial"]`` ([x, y]),
    per-spot region fractions in ``obsm["simulation_composition"]`` (columns as
    ``uns["simulation"]["regions"]``), the image and scale factors in
    ``uns["spatial"]["simulated"]`` and the confounded pairs, markers and parameters in
    ``uns["simulation"]``.
    """
    _validate(n_spots, grid, n_genes, seed, spot_diameter_px, image_scale, image)
    rng = np.random.default_rng(seed)
    spacing_full = spot_diameter_px / _SPOT_TO_SPACING[grid]
    px_per_unit = spacing_full * image_scale  # hires pixels per spacing unit

    layout = _layout(n_spots, grid, rng)
    height = int(math.ceil((layout.extent[3] - layout.extent[2]) * px_per_unit))
    width = int(math.ceil((layout.extent[1] - layout.extent[0]) * px_per_unit))

    # Spot centres in hires pixels (x, y).
    spot_px = np.column_stack(
        [(layout.spots[:, 0] - layout.extent[0]) * px_per_unit,
         (layout.spots[:, 1] - layout.extent[2]) * px_per_unit]
    )
    if image:
        # Labels and composition read off the pixel map that the image is rendered from.
        label_map, coords = _label_map(layout, height, width, px_per_unit)
        composition = _composition(label_map, spot_px, 0.5 * spot_diameter_px * image_scale)
        labels = _spot_labels(label_map, spot_px, composition)
    else:
        composition, labels = _composition_at_spots(layout, 0.5 * _SPOT_TO_SPACING[grid])

    counts, gene_names, markers = _counts(composition, layout, n_genes, rng)
    picture = _render(label_map, coords, px_per_unit, rng) if image else None

    obs = pd.DataFrame(
        {
            "label": pd.Categorical.from_codes(labels, categories=list(REGIONS)),
            "in_tissue": np.ones(n_spots, dtype=np.int64),
            "array_row": layout.array_rc[:, 0],
            "array_col": layout.array_rc[:, 1],
        },
        index=pd.Index([f"spot_{i:05d}" for i in range(n_spots)], name=None),
    )
    adata = ad.AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(gene_names)),
    )
    adata.obsm["spatial"] = (spot_px / image_scale).astype(np.float64)
    adata.obsm["simulation_composition"] = composition.astype(np.float32)
    adata.uns["spatial"] = {
        LIBRARY_ID: {
            "images": {"hires": picture} if image else {},
            "scalefactors": {
                "tissue_hires_scalef": float(image_scale),
                "spot_diameter_fullres": float(spot_diameter_px),
            },
            "metadata": {
                "chemistry_description": f"senca simulation ({grid} grid)",
                "software_version": "senca.simulation",
            },
        }
    }
    adata.uns["simulation"] = {
        "regions": np.array(REGIONS),
        "image_confounded": np.array(IMAGE_CONFOUNDED),
        "expression_confounded": np.array(EXPRESSION_CONFOUNDED),
        "markers": {k: np.array(v) for k, v in markers.items()},
        "region_programmes": {r: np.array(p) for r, p in _REGION_PROGRAMMES.items()},
        "params": {
            "n_spots": int(n_spots),
            "grid": grid,
            "n_genes": int(n_genes),
            "seed": int(seed),
            "spot_diameter_px": float(spot_diameter_px),
            "image_scale": float(image_scale),
            "image": bool(image),
            "spot_spacing_px": float(spacing_full),
        },
    }
    logger.info(
        "Simulated %d spots x %d genes (%s grid), image %dx%d px",
        n_spots, n_genes, grid, width, height,
    )
    return adata


def _validate(n_spots, grid, n_genes, seed, spot_diameter_px, image_scale, image) -> None:
    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_real(v) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    if not is_int(n_spots) or not _MIN_SPOTS <= n_spots <= _MAX_SPOTS:
        raise SencaInputError(
            f"simulate_tissue: n_spots={n_spots!r}; expected an integer in "
            f"[{_MIN_SPOTS}, {_MAX_SPOTS}]."
        )
    if grid not in _SPOT_TO_SPACING:
        raise SencaInputError(f"simulate_tissue: grid={grid!r}; expected 'hex' or 'square'.")
    if not is_int(n_genes) or n_genes < _MIN_GENES:
        raise SencaInputError(
            f"simulate_tissue: n_genes={n_genes!r}; expected an integer >= {_MIN_GENES}."
        )
    if not is_int(seed) or seed < 0:
        raise SencaInputError(f"simulate_tissue: seed={seed!r}; expected a non-negative integer.")
    if not is_real(spot_diameter_px) or not 0 < spot_diameter_px < math.inf:
        raise SencaInputError(
            f"simulate_tissue: spot_diameter_px={spot_diameter_px!r}; expected a positive number."
        )
    if not is_real(image_scale) or not 0 < image_scale <= 1:
        raise SencaInputError(
            f"simulate_tissue: image_scale={image_scale!r}; expected a number in (0, 1]."
        )
    spacing_hires = spot_diameter_px / _SPOT_TO_SPACING[grid] * image_scale
    if spacing_hires < _MIN_SPACING_HIRES:
        raise SencaInputError(
            f"simulate_tissue: spot_diameter_px * image_scale = {spot_diameter_px * image_scale:g} "
            f"gives spots {spacing_hires:.1f} px apart in the hires image; expected at least "
            f"{_MIN_SPACING_HIRES:g} px so tissue texture is resolved."
        )
    if not image:
        return
    # Longest image side: tissue diameter (elongated by up to ~1.5x) plus margins.
    cell_area = math.sqrt(3) / 2 if grid == "hex" else 1.0
    side = (3.0 * math.sqrt(n_spots * cell_area / math.pi) + 4) * spacing_hires
    if side > _MAX_IMAGE_SIDE:
        raise SencaInputError(
            f"simulate_tissue: n_spots={n_spots} with spot_diameter_px={spot_diameter_px:g} and "
            f"image_scale={image_scale:g} gives an image of up to {side:.0f} px per side; "
            f"expected at most {_MAX_IMAGE_SIDE} px per side (lower image_scale)."
        )


@dataclass
class _Layout:
    spots: np.ndarray  # (n, 2) spot centres in spacing units, (x, y)
    array_rc: np.ndarray  # (n, 2) integer array row, column
    extent: tuple[float, float, float, float]  # image x0, x1, y0, y1 in spacing units
    origin: np.ndarray  # raster origin (x, y) in spacing units
    raster: dict[str, np.ndarray]  # smooth fields on the coarse raster, indexed [row=y, col=x]
    thresholds: dict[str, float]
    tissue_cut: float
    per_unit: float  # raster cells per spacing unit


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Standardised Gaussian random field with correlation length ``sigma`` raster cells.

    Long correlation lengths (large sections) are filtered in Fourier space, whose cost does
    not grow with ``sigma`` as a direct filter's does; that field is periodic, and the raster's
    margin around the tissue keeps the wrap-around off the spots. Short ones keep the direct
    filter, so small sections are the same as before the Fourier path existed.
    """
    noise = rng.standard_normal(shape)
    if sigma <= _DIRECT_FILTER_MAX_SIGMA:
        field = ndimage.gaussian_filter(noise, sigma, mode="reflect")
    else:
        field = np.fft.irfft2(ndimage.fourier_gaussian(np.fft.rfft2(noise), sigma, n=shape[1]), s=shape)
    return (field - field.mean()) / field.std()


def _sample(field: np.ndarray, origin: np.ndarray, ux: np.ndarray, uy: np.ndarray, per_unit: float) -> np.ndarray:
    """Bilinear sample of a raster field (``per_unit`` cells per spacing unit) at points given in spacing units."""
    rows = (uy - origin[1]) * per_unit
    cols = (ux - origin[0]) * per_unit
    return ndimage.map_coordinates(field, [rows, cols], order=1, mode="nearest").astype(np.float32)


def _upper_quantile(values: np.ndarray, fraction: float) -> float:
    """Threshold that the top ``fraction`` of ``values`` reach."""
    return float(np.quantile(values, 1.0 - fraction))


def _layout(n_spots: int, grid: str, rng: np.random.Generator) -> _Layout:
    """Place the spots inside an irregular tissue outline and build the region fields."""
    cell_area = math.sqrt(3) / 2 if grid == "hex" else 1.0
    radius = math.sqrt(n_spots * cell_area / math.pi)  # tissue radius in spacing units
    half = 1.7 * radius + 4
    # Large sections get a coarser raster, so its cost stays bounded; the fields are smooth on
    # the tissue's scale, the spots sample them bilinearly.
    per_unit = min(float(_RASTER_PER_UNIT), (_MAX_RASTER_SIDE - 1) / (2 * half))
    n_ras = int(2 * half * per_unit) + 1
    origin = np.array([-half, -half])
    shape = (n_ras, n_ras)
    cells_per_radius = radius * per_unit

    # Candidate grid covering the raster.
    if grid == "hex":
        dy = math.sqrt(3) / 2
        n_rows = int(2 * half / dy)
        n_cols = int(2 * half)
        r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        cx = -half + 1 + c + 0.5 * (r % 2)
        cy = -half + 1 + r * dy
        array_col = 2 * c + (r % 2)  # Visium convention: odd rows on odd columns
    else:
        n_rows = n_cols = int(2 * half)
        r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        cx = -half + 1 + c.astype(float)
        cy = -half + 1 + r.astype(float)
        array_col = c
    cand = np.column_stack([cx.ravel(), cy.ravel()])
    cand_rc = np.column_stack([r.ravel(), array_col.ravel()])

    # Tissue outline: a rotated ellipse with a smooth, wavy edge.
    ys, xs = np.meshgrid(
        origin[1] + np.arange(n_ras) / per_unit,
        origin[0] + np.arange(n_ras) / per_unit,
        indexing="ij",
    )
    aspect = rng.uniform(1.0, 1.35)
    theta = rng.uniform(0, math.pi)
    xr = xs * math.cos(theta) + ys * math.sin(theta)
    yr = -xs * math.sin(theta) + ys * math.cos(theta)
    rnorm = np.sqrt((xr / aspect) ** 2 + (yr * aspect) ** 2) / radius
    tissue = rnorm + 0.10 * _smooth_noise(rng, shape, 0.25 * cells_per_radius)

    cand_f = _sample(tissue, origin, cand[:, 0], cand[:, 1], per_unit)
    order = np.argsort(cand_f, kind="stable")[:n_spots]
    order = order[np.lexsort((cand_rc[order, 1], cand_rc[order, 0]))]  # row-major spot order
    spots = cand[order]
    tissue_cut = float(cand_f[order].max())

    # Region score fields (higher score = more of that region).
    gx, gy = rng.standard_normal(2)
    tumour = _smooth_noise(rng, shape, 0.22 * cells_per_radius) - 1.2 * rnorm
    clone = _smooth_noise(rng, shape, 0.35 * cells_per_radius) + 0.8 * (gx * xs + gy * ys) / (
        radius * math.hypot(gx, gy)
    )
    patchy = _smooth_noise(rng, shape, 1.2 * per_unit)
    adipose = rnorm + 0.35 * _smooth_noise(rng, shape, 0.2 * cells_per_radius)
    stroma = _smooth_noise(rng, shape, 0.15 * cells_per_radius)
    fields = {"tumour": tumour, "clone": clone, "adipose": adipose}

    # Thresholds picked on the spots, in order of precedence, so every region gets its share.
    f = _TARGET_FRACTIONS
    s_tum = _sample(tumour, origin, spots[:, 0], spots[:, 1], per_unit)
    t_tum = _upper_quantile(s_tum, f[_A] + f[_B])
    is_tum = s_tum >= t_tum
    s_clone = _sample(clone, origin, spots[:, 0], spots[:, 1], per_unit)
    t_clone = _upper_quantile(s_clone[is_tum], f[_A] / (f[_A] + f[_B]))

    # Immune cells rim the tumour: score falls with distance to it, broken up into patches.
    dist = ndimage.distance_transform_edt(tumour < t_tum) / per_unit
    immune = -dist / 1.5 + 0.5 * patchy
    # Desmoplastic (dense) stroma tends to lie nearer the tumour than loose stroma.
    stroma = stroma - dist / (0.6 * radius)
    fields.update(immune=immune.astype(np.float32), stroma=stroma.astype(np.float32))

    rest = ~is_tum
    s_imm = _sample(immune, origin, spots[:, 0], spots[:, 1], per_unit)
    t_imm = _upper_quantile(s_imm[rest], f[_IMMUNE] / f[[_DENSE, _LOOSE, _IMMUNE, _ADIPOSE]].sum())
    rest &= s_imm < t_imm
    s_adi = _sample(adipose, origin, spots[:, 0], spots[:, 1], per_unit)
    t_adi = _upper_quantile(s_adi[rest], f[_ADIPOSE] / f[[_DENSE, _LOOSE, _ADIPOSE]].sum())
    rest &= s_adi < t_adi
    s_str = _sample(stroma, origin, spots[:, 0], spots[:, 1], per_unit)
    t_str = _upper_quantile(s_str[rest], f[_DENSE] / f[[_DENSE, _LOOSE]].sum())
    thresholds = {
        "tumour": t_tum, "clone": t_clone, "immune": t_imm, "adipose": t_adi, "stroma": t_str
    }

    # Tissue ends a little beyond the outermost spots and never beyond the image.
    margin = 0.8
    on_spot = np.zeros(shape, dtype=bool)
    rc = np.rint((spots[:, ::-1] - origin[::-1]) * per_unit).astype(int)
    on_spot[rc[:, 0], rc[:, 1]] = True
    spot_dist = ndimage.distance_transform_edt(~on_spot) / per_unit
    spot_dist = ndimage.gaussian_filter(spot_dist, 0.7 * per_unit)  # no scalloped edge
    tissue = np.where(spot_dist <= margin + 0.3, tissue, tissue + 10.0)

    xmin, ymin = spots.min(axis=0) - margin - 1.0
    xmax, ymax = spots.max(axis=0) + margin + 1.0
    return _Layout(
        spots=spots,
        array_rc=cand_rc[order].astype(np.int64),
        extent=(float(xmin), float(xmax), float(ymin), float(ymax)),
        origin=origin,
        raster={"tissue": tissue, **{k: v.astype(np.float32) for k, v in fields.items()}},
        thresholds=thresholds,
        tissue_cut=tissue_cut + margin / radius,
        per_unit=per_unit,
    )


def _label_map(layout: _Layout, height: int, width: int, px_per_unit: float):
    """Region index per hires pixel (``_BACKGROUND`` outside tissue) and pixel coordinates."""
    ys, xs = np.meshgrid(
        layout.extent[2] + (np.arange(height, dtype=np.float32) + 0.5) / px_per_unit,
        layout.extent[0] + (np.arange(width, dtype=np.float32) + 0.5) / px_per_unit,
        indexing="ij",
    )
    return _labels_at(layout, xs.ravel(), ys.ravel()).reshape(height, width), {"ux": xs, "uy": ys}


def _labels_at(layout: _Layout, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    """Region index (``_BACKGROUND`` outside tissue) at points given in spacing units."""
    t = layout.thresholds

    def sample(name: str) -> np.ndarray:
        return _sample(layout.raster[name], layout.origin, ux, uy, layout.per_unit)

    lab = np.where(sample("stroma") >= t["stroma"], _DENSE, _LOOSE).astype(np.uint8)
    lab[sample("adipose") >= t["adipose"]] = _ADIPOSE
    lab[sample("immune") >= t["immune"]] = _IMMUNE
    tumour = sample("tumour") >= t["tumour"]
    clone_a = sample("clone") >= t["clone"]
    lab[tumour & clone_a] = _A
    lab[tumour & ~clone_a] = _B
    lab[sample("tissue") > layout.tissue_cut] = _BACKGROUND
    return lab


def _disc() -> np.ndarray:
    """Offsets (x, y) of the points that sample a spot's capture area, in spot radii."""
    ring = [(0.0, 0.0)]
    for rr, n in ((0.45, 6), (0.9, 12)):
        angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
        ring += [(rr * math.cos(a), rr * math.sin(a)) for a in angles]
    return np.asarray(ring)


def _fractions(lab: np.ndarray) -> np.ndarray:
    """Per row of disc labels, the fraction of each region among its tissue points."""
    comp = np.stack([(lab == k).sum(axis=1) for k in range(len(REGIONS))], axis=1).astype(float)
    # Every spot is in tissue; a spot grazing the edge keeps only its tissue part.
    return comp / np.maximum(comp.sum(axis=1, keepdims=True), 1)


def _composition(label_map: np.ndarray, spot_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Fraction of each region inside each spot's capture area (sampled on a disc of points)."""
    off = _disc() * radius_px
    height, width = label_map.shape
    px = np.clip(np.rint(spot_px[:, None, 0] + off[None, :, 0]), 0, width - 1).astype(int)
    py = np.clip(np.rint(spot_px[:, None, 1] + off[None, :, 1]), 0, height - 1).astype(int)
    return _fractions(label_map[py, px])


def _composition_at_spots(layout: _Layout, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Composition and label of every spot read off the region fields (no pixel map).

    ``radius`` is the spot radius in spacing units. The label is the region under the
    centre, or the majority of the capture area where the centre is off tissue.
    """
    off = _disc() * radius
    composition = np.empty((len(layout.spots), len(REGIONS)))
    labels = np.empty(len(layout.spots), dtype=np.int64)
    for start in range(0, len(layout.spots), _COUNT_CHUNK):
        spots = layout.spots[start:start + _COUNT_CHUNK]
        lab = _labels_at(layout, (spots[:, None, 0] + off[None, :, 0]).ravel(),
                         (spots[:, None, 1] + off[None, :, 1]).ravel()).reshape(len(spots), len(off))
        comp = _fractions(lab)
        composition[start:start + len(spots)] = comp
        labels[start:start + len(spots)] = np.where(lab[:, 0] == _BACKGROUND, comp.argmax(axis=1), lab[:, 0])
    return composition, labels


def _spot_labels(label_map: np.ndarray, spot_px: np.ndarray, composition: np.ndarray) -> np.ndarray:
    """Region under each spot centre (majority of the capture area if the centre is off-tissue)."""
    px = np.clip(np.rint(spot_px[:, 0]).astype(int), 0, label_map.shape[1] - 1)
    py = np.clip(np.rint(spot_px[:, 1]).astype(int), 0, label_map.shape[0] - 1)
    centre = label_map[py, px]
    return np.where(centre == _BACKGROUND, composition.argmax(axis=1), centre).astype(np.int64)


def _counts(composition: np.ndarray, layout: _Layout, n_genes: int, rng: np.random.Generator):
    """Negative-binomial counts with dropout around a per-spot mixture of region profiles."""
    n_spots, n_regions = composition.shape

    # Gene names: named markers first in programme blocks, then unnamed background genes.
    names: list[str] = []
    markers: dict[str, list[str]] = {}
    blocks: dict[str, np.ndarray] = {}
    for prog, (size, _) in _PROGRAMMES.items():
        if prog == "CNV_GAIN":
            continue
        idx = np.arange(len(names), len(names) + size)
        names += [f"{prog}_{i + 1:02d}" for i in range(size)]
        markers[prog] = names[idx[0]: idx[-1] + 1]
        blocks[prog] = idx
    n_named = len(names)
    names += [f"Gene{i + 1:04d}" for i in range(n_genes - n_named)]
    # A copy-number gain in clone A raises a contiguous block of background genes.
    cnv_size = _PROGRAMMES["CNV_GAIN"][0]
    cnv_start = n_named + (n_genes - n_named - cnv_size) // 3
    blocks["CNV_GAIN"] = np.arange(cnv_start, cnv_start + cnv_size)
    markers["CNV_GAIN"] = [names[i] for i in blocks["CNV_GAIN"]]

    # Baseline relative abundance shared by all regions (heavy-tailed, like real transcriptomes).
    base = np.exp(rng.normal(0.0, 1.5, n_genes))
    log_profiles = np.tile(np.log(base), (n_regions, 1))
    for prog, (size, fold) in _PROGRAMMES.items():
        # Markers are lowly to moderately expressed elsewhere and switched on in their region.
        fc = np.exp(rng.normal(math.log(fold), 0.35, size))
        for k, region in enumerate(REGIONS):
            if prog in _REGION_PROGRAMMES[region]:
                log_profiles[k, blocks[prog]] += np.log(fc)
    profiles = np.exp(log_profiles)
    profiles /= profiles.sum(axis=1, keepdims=True)

    # Besides its own area, every spot captures some cells of random other types.
    admix = rng.beta(1.0, 12.0, n_spots)[:, None] * rng.dirichlet(np.full(n_regions, 0.5), n_spots)
    weights = composition * (1.0 - admix.sum(axis=1, keepdims=True)) + admix

    # Library size: log-normal, denser tissue captures more, mild smooth (thickness) trend.
    spots = layout.spots
    thickness = _sample(layout.raster["tissue"], layout.origin, spots[:, 0], spots[:, 1], layout.per_unit)
    lib = _LIBRARY_MEDIAN * (composition @ _LIBRARY_MULTIPLIER) * np.exp(
        rng.normal(0.0, 0.35, n_spots) - 0.15 * (thickness - thickness.mean())
    )
    # Gamma-Poisson (negative binomial) with gene-wise inverse dispersion around 3.
    r = np.exp(rng.normal(math.log(3.0), 0.5, n_genes))
    # A chunk of spots at a time, kept sparse: never a dense spots x genes array.
    chunks = []
    for start in range(0, n_spots, _COUNT_CHUNK):
        rows = slice(start, start + _COUNT_CHUNK)
        mu = lib[rows, None] * (weights[rows] @ profiles)
        lam = mu * rng.gamma(r[None, :], 1.0 / r[None, :], size=mu.shape)
        counts = rng.poisson(lam).astype(np.float32)
        # Dropout: lowly expressed entries are lost more often (logistic in log mean). A mean of
        # 0 (an empty spot of a large grid) gives log 0 = -inf and drops nothing that exists.
        with np.errstate(divide="ignore"):
            p_drop = 0.5 / (1.0 + np.exp(1.2 * (np.log(mu) - math.log(0.5))))
        counts[rng.random(mu.shape) < p_drop] = 0
        chunks.append(sparse.csr_matrix(counts))
    counts = sparse.vstack(chunks, format="csr") if len(chunks) > 1 else chunks[0]
    return counts, names, markers


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Standardised smooth noise at pixel resolution, drawn coarse and upsampled for speed."""
    step = max(1, int(sigma_px / 3))
    small = (shape[0] // step + 2, shape[1] // step + 2)
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_px / step)
    field = ndimage.zoom(field, step, order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / field.std()


def _render(
    label_map: np.ndarray, coords: dict, px_per_unit: float, rng: np.random.Generator
) -> np.ndarray:
    """Render an H&E-like RGB image from the region map (Beer-Lambert stain mixing)."""
    shape = label_map.shape
    tissue = label_map != _BACKGROUND
    eosin = np.zeros(shape, dtype=np.float32)
    haem = np.zeros(shape, dtype=np.float32)
    for k, look in _MORPHOLOGY.items():
        m = label_map == k
        eosin[m] = look.eosin
        haem[m] = look.haem_bg

    # Cytoplasm granularity shared by all tissue.
    grain = rng.standard_normal(shape).astype(np.float32)
    grain = ndimage.gaussian_filter(grain, 0.04 * px_per_unit)
    eosin *= 1.0 + 0.12 * grain / grain.std()

    # Wavy collagen: a sinusoid (stripes) whose phase is strongly warped, broken into bundles.
    angle = rng.uniform(0, math.pi)
    along = (coords["ux"] * math.cos(angle) + coords["uy"] * math.sin(angle)) * px_per_unit
    warp = 25.0 * _pixel_noise(rng, shape, 2.0 * px_per_unit)  # radians
    breaks = np.clip(0.5 + _pixel_noise(rng, shape, 0.12 * px_per_unit), 0.0, 1.0)
    for k, look in _MORPHOLOGY.items():
        if look.fibre_strength > 0:
            m = label_map == k
            phase = 2 * math.pi * along[m] / (look.fibre_wavelength * px_per_unit) + warp[m]
            fib = (0.5 + 0.5 * np.sin(phase)) ** 3 * breaks[m]
            eosin[m] += look.fibre_strength * (fib - 0.15)

    # Thin stromal septa between nests: the zero contour of a smooth field is a connected web.
    nest = _pixel_noise(rng, shape, 0.35 * px_per_unit)
    septa = np.zeros(shape, dtype=bool)
    for k, look in _MORPHOLOGY.items():
        if look.septa > 0:
            m = label_map == k
            s = m & (np.abs(nest) < np.quantile(np.abs(nest[m]), look.septa))
            eosin[s] = 0.55
            haem[s] = 0.0
            septa |= s

    # Oedema clefts in loose stroma: white where an elongated noise field peaks.
    for k, look in _MORPHOLOGY.items():
        if look.clefts > 0:
            m = label_map == k
            cleft_noise = ndimage.gaussian_filter(
                rng.standard_normal(shape).astype(np.float32),
                (0.06 * px_per_unit, 0.18 * px_per_unit),
            )
            cleft = m & (cleft_noise > np.quantile(cleft_noise[m], 1 - look.clefts))
            eosin[cleft] = 0.01
            haem[cleft] = 0.0

    membrane = _adipocytes(label_map, px_per_unit, eosin, haem, rng)
    grad_y, grad_x = np.gradient(warp)

    def fibre_direction(look: _Morphology, cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
        # Stripes run perpendicular to the phase gradient.
        iy, ix = cy.astype(np.int64), cx.astype(np.int64)
        k = 2 * math.pi / (look.fibre_wavelength * px_per_unit)
        gx = k * math.cos(angle) + grad_x[iy, ix]
        gy = k * math.sin(angle) + grad_y[iy, ix]
        return np.arctan2(gy, gx) + math.pi / 2

    _nuclei(label_map, membrane, septa, px_per_unit, haem, fibre_direction, rng)

    # No slide-wide stain drift: it would differ between the clones' locations and leak the
    # clone identity into the image, breaking the image confound.
    soft = ndimage.gaussian_filter(tissue.astype(np.float32), 0.08 * px_per_unit)
    od_h = haem * soft
    od_e = np.clip(eosin, 0.0, None) * soft
    od = od_h[..., None] * _OD_HAEMATOXYLIN + od_e[..., None] * _OD_EOSIN + 0.02
    od = ndimage.gaussian_filter(od, (0.6, 0.6, 0))
    od += rng.normal(0.0, 0.015, od.shape).astype(np.float32)
    return np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)


def _adipocytes(label_map, px_per_unit, eosin, haem, rng) -> np.ndarray:
    """Voronoi adipocytes: white cells with thin eosinophilic membranes; returns membrane mask."""
    membrane = np.zeros(label_map.shape, dtype=bool)
    for k, look in _MORPHOLOGY.items():
        m = label_map == k
        if not look.adipocytes or not m.any():
            continue
        rows, cols = np.nonzero(m)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        sub = m[r0:r1, c0:c1]
        cell_px = 0.75 * px_per_unit  # adipocyte diameter
        n_seeds = max(1, int(sub.size / (0.8 * cell_px**2)))
        seeds = np.zeros(sub.shape, dtype=bool)
        seeds[rng.integers(0, sub.shape[0], n_seeds), rng.integers(0, sub.shape[1], n_seeds)] = True
        seed_id = np.cumsum(seeds.ravel()).reshape(sub.shape) * seeds
        idx = ndimage.distance_transform_edt(~seeds, return_distances=False, return_indices=True)
        cell = seed_id[idx[0], idx[1]]
        edge = np.zeros(sub.shape, dtype=bool)
        edge[:-1, :] |= cell[:-1, :] != cell[1:, :]
        edge[:, :-1] |= cell[:, :-1] != cell[:, 1:]
        edge = ndimage.binary_dilation(edge, iterations=max(1, int(round(0.03 * px_per_unit))))
        es, hs = eosin[r0:r1, c0:c1], haem[r0:r1, c0:c1]
        es[sub & edge] = 0.55
        hs[sub & edge] = 0.03
        es[sub & ~edge] = 0.015
        membrane[r0:r1, c0:c1] |= sub & edge
    return membrane


def _nuclei(label_map, membrane, septa, px_per_unit, haem, fibre_direction, rng) -> None:
    """Stamp elliptical nuclei into the haematoxylin map, region by region."""
    flat_haem = haem.ravel()
    height, width = label_map.shape
    for k, look in _MORPHOLOGY.items():
        # Nuclei sit in the cellular part: adipocyte nuclei on membranes, none in septa.
        where = membrane & (label_map == k) if look.adipocytes else (label_map == k) & ~septa
        pixels = np.flatnonzero(where)
        if pixels.size == 0:
            continue
        r_px = look.nucleus_radius * px_per_unit
        if look.adipocytes:
            n = int(4 * pixels.size / (1.2 * px_per_unit) ** 2)
        else:
            n = int(look.nuclei_coverage * pixels.size / (math.pi * r_px**2))
        if n == 0:
            continue
        pick = pixels[rng.integers(0, pixels.size, n)]
        cy = pick // width + rng.random(n)
        cx = pick % width + rng.random(n)
        radius = r_px * np.exp(rng.normal(0.0, look.radius_cv, n))
        aspect = look.aspect * np.exp(rng.normal(0.0, 0.1, n))
        a = radius * np.sqrt(aspect)  # semi-major
        b = radius / np.sqrt(aspect)  # semi-minor
        if look.fibre_strength > 0:
            theta = fibre_direction(look, cy, cx) + rng.normal(0.0, 0.2, n)
        else:
            theta = rng.uniform(0, math.pi, n)
        intensity = look.nucleus_haem * np.exp(rng.normal(0.0, 0.15, n))

        half = int(math.ceil(np.quantile(a, 0.99))) + 1
        off = np.arange(-half, half + 1)
        oy, ox = np.meshgrid(off, off, indexing="ij")
        oy, ox = oy.ravel(), ox.ravel()
        px = np.floor(cx).astype(np.int64)[:, None] + ox[None, :]
        py = np.floor(cy).astype(np.int64)[:, None] + oy[None, :]
        dx = px + 0.5 - cx[:, None]
        dy = py + 0.5 - cy[:, None]
        cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
        u = (dx * cos + dy * sin) / a[:, None]
        v = (-dx * sin + dy * cos) / b[:, None]
        rho = np.sqrt(u * u + v * v)
        alpha = np.clip((1.0 - rho) * b[:, None] + 0.5, 0.0, 1.0)
        if look.vesicular:
            alpha *= 0.55 + 0.6 * np.clip(rho, 0.0, 1.0) ** 2  # dark rim, pale chromatin
        val = alpha * intensity[:, None] * (0.85 + 0.3 * rng.random(alpha.shape))
        ok = (alpha > 0) & (px >= 0) & (px < width) & (py >= 0) & (py < height)
        flat = (py * width + px)[ok]
        flat_haem += np.bincount(flat, weights=val[ok], minlength=flat_haem.size).astype(np.float32)
    np.minimum(haem, 2.2, out=haem)
