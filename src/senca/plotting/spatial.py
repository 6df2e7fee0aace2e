"""Region maps over the H&E image and embedding plots (``senca.pl``)."""

from __future__ import annotations

import logging

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # senca draws to files; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

_IGNORED_LABELS = ("undetermined",)
# Above this many spots, region maps are painted as one image instead of one marker per spot.
_RASTER_MIN_SPOTS = 100_000


# tab10 without its grey (kept for 'undetermined'), purple and pink last: spots in those hues
# vanish into haematoxylin and eosin when drawn over the H&E image.
_TAB10_ORDER = (0, 1, 2, 3, 9, 8, 5, 4, 6)


def region_palette(categories: list[str]) -> dict[str, str]:
    """Distinct, colour-blind-friendlier colours for up to 25 regions (grey for 'undetermined')."""
    tab10 = plt.get_cmap("tab10").colors
    base = [tab10[i] for i in _TAB10_ORDER] + list(plt.get_cmap("tab20b").colors)
    palette = {}
    colours = iter(base)
    for category in categories:
        palette[category] = "#9e9e9e" if str(category).lower() in _IGNORED_LABELS else matplotlib.colors.to_hex(next(colours))
    return palette


def _image_and_extent(adata: ad.AnnData, library_id: str | None = None):
    """The section image (of ``library_id``; default the first with one), the scale to it and the spot diameter in image pixels."""
    libraries = adata.uns.get("spatial", {})
    for library in ([libraries.get(library_id, {})] if library_id is not None else libraries.values()):
        images, scalefactors = library.get("images", {}), library.get("scalefactors", {})
        for resolution in ("hires", "lowres"):
            if resolution in images and f"tissue_{resolution}_scalef" in scalefactors:
                image = np.asarray(images[resolution])
                scale = float(scalefactors[f"tissue_{resolution}_scalef"])
                diameter = float(scalefactors.get("spot_diameter_fullres", 0.0)) * scale
                return image, scale, diameter
    return None, 1.0, 0.0


def _layout(adata: ad.AnnData, library_id: str | None = None):
    """Image, spot centres and diameter in image pixels, and the crop window around the spots."""
    image, scale, diameter = _image_and_extent(adata, library_id)
    xy = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2] * scale
    if diameter <= 0:
        # The spacing the spatial graph measured, else measured here (a kNN search over the spots).
        spacing = adata.uns.get("spatial_neighbors", {}).get("spacing")
        if spacing is None:
            from senca.graph import spot_spacing
            spacing = spot_spacing(xy)
        else:
            spacing *= scale
        diameter = 0.8 * spacing
    margin = 1.5 * diameter
    x0, y0 = xy.min(axis=0) - margin
    x1, y1 = xy.max(axis=0) + margin
    return image, xy, diameter, (x0, x1, y0, y1)


def _spot_size_points(ax, diameter_data: float) -> float:
    """Marker area (points^2) that draws a circle ``diameter_data`` data units across."""
    # The layout settles the axes' size; rendering it (the H&E image included) is not needed.
    ax.figure.draw_without_rendering()
    x0, x1 = ax.get_xlim()
    width_px = ax.get_window_extent().width
    points = diameter_data * width_px / abs(x1 - x0) * 72.0 / ax.figure.dpi
    return max(points, 1.0) ** 2


def _categories(values: pd.Series) -> list[str]:
    return [str(c) for c in (values.cat.categories if hasattr(values, "cat") else sorted(values.dropna().unique()))]


def _has_labels(adata: ad.AnnData, label_key: str | None) -> bool:
    return bool(label_key) and label_key in adata.obs and adata.obs[label_key].notna().any()


def region_styles(adata: ad.AnnData, key: str = "senca_region", label_key: str | None = "label"
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """Colour and name of every value of ``obs[key]``, the same in every figure, table and file.

    With reference labels in ``obs[label_key]`` a region is named after the label that holds a
    clear majority of it (:func:`senca.evaluation.name_regions`: ``"3: stroma"``; otherwise
    just ``"3"``), and a named region that is also the region overlapping its label most (one
    to one, :func:`senca.evaluation.match_regions`) takes that label's colour in
    :func:`label_palette`, so the two panels of :func:`regions` compare at a glance; every
    other region takes a colour no label uses. Without labels: :func:`region_palette` and the
    plain names.

    Returns
    -------
    ``(palette, names)``: ``{region: "#rrggbb"}`` and ``{region: name}``.
    """
    categories = _categories(adata.obs[key])
    if not _has_labels(adata, label_key):
        return region_palette(categories), {c: c for c in categories}
    from senca.evaluation import match_regions, name_regions

    labels, found = adata.obs[label_key], adata.obs[key]
    table = name_regions(labels, found).set_index("region")
    names = {c: table["name"].get(c, c) for c in categories}
    matched = match_regions(labels.astype(object), found.astype(object))
    label_colours = label_palette(adata, label_key)
    spare = iter(c for c in region_palette([str(i) for i in range(len(label_colours) + len(categories))]).values()
                 if c not in label_colours.values())
    palette = {}
    for region in categories:
        label = table["label"].get(region)
        same = names[region] != region and matched.get(region) == label
        palette[region] = label_colours[label] if same else next(spare)
    return palette, names


def label_palette(adata: ad.AnnData, label_key: str = "label") -> dict[str, str]:
    """Colours of the reference labels in ``obs[label_key]`` (grey for 'undetermined')."""
    return region_palette(_categories(adata.obs[label_key]))


# Longest side, in pixels, of the image drawn under a map: above what a 6.8 inch panel shows at
# 150 dpi; Pillow reduces an H&E to it far faster than Matplotlib resamples it (measurements:
# benchmarks/README.md, section "Why the defaults are what they are").
_DISPLAY_PX = 1000


def _reduce(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``crop`` resized by Pillow (Lanczos) to ``size`` (width, height): uint8 images as they
    are, any other type channel by channel as 32-bit floats, kept within the crop's range."""
    from PIL import Image

    if crop.dtype == np.uint8:
        return np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
    channels = crop.reshape(*crop.shape[:2], -1).astype(np.float32)
    reduced = np.stack([np.asarray(Image.fromarray(channels[..., c]).resize(size, Image.Resampling.LANCZOS))
                        for c in range(channels.shape[-1])], axis=-1)
    reduced = np.clip(reduced, channels.min(), channels.max())  # Lanczos overshoots at edges
    return reduced.reshape(size[1], size[0], *crop.shape[2:])


def _display_image(image: np.ndarray, window: tuple[float, float, float, float]) -> tuple[np.ndarray, tuple]:
    """The part of ``image`` inside ``window`` (x0, x1, y0, y1), reduced to at most
    :data:`_DISPLAY_PX` pixels a side, and its ``imshow`` extent in the image's pixel units
    (pixel ``(i, j)`` of ``image`` centred on ``(j, i)``)."""
    height, width = image.shape[:2]
    x0, x1, y0, y1 = window
    cx0, cy0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
    cx1, cy1 = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    if cx1 <= cx0 or cy1 <= cy0:  # the spots lie outside the image
        cx0, cy0, cx1, cy1 = 0, 0, width, height
    # A slide-sized crop is first thinned by striding (cheap, no copy of the whole slide), then
    # reduced by Pillow to the display size. A kept pixel stands for the stride x stride block
    # centred on it, so the kept pixels span stride times their number (past cx1 when the crop
    # is not a multiple of the stride).
    stride = max(1, max(cx1 - cx0, cy1 - cy0) // (4 * _DISPLAY_PX))
    crop = np.ascontiguousarray(image[cy0:cy1:stride, cx0:cx1:stride])
    factor = max(crop.shape[0], crop.shape[1]) / _DISPLAY_PX
    extent = (cx0 - stride / 2, cx0 + (crop.shape[1] - 0.5) * stride, cy0 + (crop.shape[0] - 0.5) * stride, cy0 - stride / 2)
    if factor > 1:
        crop = _reduce(crop, (max(round(crop.shape[1] / factor), 1), max(round(crop.shape[0] / factor), 1)))
    return crop, extent


def _paint_spots(ax, xy: np.ndarray, labels: np.ndarray, categories: list[str], palette: dict[str, str],
                 diameter: float, alpha: float) -> None:
    """Spots painted into one RGBA image at the axes' pixel resolution, in O(spots).

    At hundreds of thousands of spots a scatter draws every marker as a path (tens of seconds
    at a million) for a picture where most spots are a pixel or less; here each spot fills the
    pixels its diameter covers (at least one).
    """
    ax.figure.canvas.draw()
    x0, x1 = ax.get_xlim()
    y1, y0 = ax.get_ylim()  # inverted y axis: top is y0
    box = ax.get_window_extent()
    width, height = max(int(box.width), 1), max(int(box.height), 1)
    col = ((xy[:, 0] - x0) / (x1 - x0) * width).astype(np.int64)
    row = ((xy[:, 1] - y0) / (y1 - y0) * height).astype(np.int64)
    radius = int(diameter * width / abs(x1 - x0) / 2)
    raster = np.zeros((height, width, 4))
    codes = pd.Categorical(labels, categories=categories).codes
    colours = np.array([(*matplotlib.colors.to_rgb(palette.get(c, "#ffffff")), alpha) for c in categories])
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius + radius:  # a disc
                continue
            r, c = row + dy, col + dx
            ok = (r >= 0) & (r < height) & (c >= 0) & (c < width) & (codes >= 0)
            raster[r[ok], c[ok]] = colours[codes[ok]]
    ax.imshow(raster, extent=(x0, x1, y1, y0), interpolation="nearest", zorder=2)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)


def _draw_categories(ax, adata: ad.AnnData, key: str, title: str, layout, palette: dict[str, str] | None = None,
                     names: dict[str, str] | None = None) -> dict[str, str]:
    """Spots of ``obs[key]`` over the image; ``layout`` is :func:`_layout` of ``adata``."""
    values = adata.obs[key]
    categories = _categories(values)
    palette = palette or region_palette(categories)
    names = names or {}
    image, xy, diameter, (x0, x1, y0, y1) = layout
    if image is not None:
        shown, extent = _display_image(image, (x0, x1, y0, y1))
        ax.imshow(shown, extent=extent, interpolation="antialiased")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image convention: y grows downwards
    ax.set_aspect("equal")
    labels = values.astype("string").fillna("(none)").to_numpy()
    alpha = 0.85 if image is not None else 1.0
    if len(labels) > _RASTER_MIN_SPOTS:
        _paint_spots(ax, xy, labels, categories + ["(none)"], palette, diameter, alpha)
    else:
        size = _spot_size_points(ax, diameter)
        for category in categories + ["(none)"]:
            mask = labels == category
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=palette.get(category, "#ffffff"),
                           alpha=alpha, linewidths=0.6, edgecolors="white")
    counts = pd.Series(labels).value_counts()
    handles = [Line2D([], [], marker="o", linestyle="", markersize=9, markerfacecolor=palette[c],
                      markeredgecolor="white", label=f"{names.get(c, c)} ({counts.get(c, 0)})") for c in categories]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, title=key)
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    return palette


def regions(
    adata: ad.AnnData,
    key: str = "senca_region",
    label_key: str | None = "label",
    title: str | None = None,
) -> Figure:
    """Regions drawn as spots over the H&E image, with a legend (region and spot count).

    Colours and names are those of :func:`region_styles`: beside reference labels a region is
    named after a label only where that label holds a clear majority of it.

    Parameters
    ----------
    adata
        Section with ``obsm["spatial"]`` and ``obs[key]``.
    key
        Categorical column to colour by.
    label_key
        When this column exists (e.g. pathologist labels), it is drawn in a second panel beside
        the regions; ``None`` to skip.
    title
        Figure title.

    Returns
    -------
    The matplotlib figure (not saved).
    """
    if key not in adata.obs:
        raise SencaInputError(f"AnnData: obs[{key!r}] is missing; expected region labels to plot")
    panels = [(key, "senca regions")]
    if _has_labels(adata, label_key):
        panels.insert(0, (label_key, "reference labels"))
    layout = _layout(adata)
    has_image = layout[0] is not None
    # Panel height follows the section's shape, so a wide section leaves no band of white.
    x0, x1, y0, y1 = layout[3]
    map_width = 4.5  # inches; the legend takes the rest of the 6.8 inch panel
    height = float(np.clip(map_width * (y1 - y0) / max(x1 - x0, 1e-9), 2.5, 8.0)) + (1.2 if title else 0.7)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.8 * len(panels), height), squeeze=False, layout="constrained")
    suffix = "" if has_image else " (no H&E image)"
    if len(panels) == 2:
        _draw_categories(axes[0, 0], adata, label_key, panels[0][1] + suffix, layout)
    _draw_categories(axes[0, -1], adata, key, panels[-1][1] + suffix, layout, *region_styles(adata, key, label_key))
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def embedding(
    adata: ad.AnnData,
    basis: str = "X_umap",
    key: str = "senca_region",
    title: str | None = None,
    label_key: str | None = "label",
) -> Figure:
    """Scatter of a 2-D embedding (e.g. UMAP of ``X_senca``) coloured by ``obs[key]``.

    Colours and legend names are those of :func:`regions` (:func:`region_styles`). Spots
    without coordinates (``NaN``, e.g. left out of a subsampled UMAP) are not drawn; the
    legend counts the drawn ones.
    """
    if basis not in adata.obsm:
        raise SencaInputError(f"AnnData: obsm[{basis!r}] is missing; expected a 2-D embedding")
    values = adata.obs[key].astype("string").fillna("(none)").to_numpy()
    categories = _categories(adata.obs[key])
    palette, names = region_styles(adata, key, label_key)
    xy = np.asarray(adata.obsm[basis])[:, :2]
    drawn = np.isfinite(xy).all(axis=1)
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    size = max(1.0, min(40.0, 12000.0 / max(int(drawn.sum()), 1)))
    for category in categories:
        mask = (values == category) & drawn
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=palette[category], label=f"{names[category]} ({mask.sum()})",
                   linewidths=0, rasterized=True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, markerscale=2.0 / np.sqrt(size) * 3, title=key)
    ax.set_xlabel(f"{basis.removeprefix('X_').upper()} 1")
    ax.set_ylabel(f"{basis.removeprefix('X_').upper()} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"embedding coloured by {key}", fontsize=11)
    fig.tight_layout()
    return fig


def store_styles(adata: ad.AnnData, key: str = "senca_region", label_key: str | None = "label") -> None:
    """Write the colours and names of :func:`region_styles` into ``adata``, as scanpy keeps them.

    Sets ``uns[f"{key}_colors"]`` and, with labels, ``uns[f"{label_key}_colors"]`` (lists in
    category order, so ``sc.pl.spatial(adata, color=key)`` draws the colours of senca's
    figures), ``obs[f"{key}_name"]`` (categorical of the names, same order) with
    ``uns[f"{key}_name_colors"]``; ``obs[label_key]`` becomes categorical. Scanpy reads these
    lists only when their length equals the number of categories, which holds here.
    """
    palette, names = region_styles(adata, key, label_key)
    categories = _categories(adata.obs[key])
    if not hasattr(adata.obs[key], "cat"):
        adata.obs[key] = pd.Categorical(adata.obs[key].astype(str), categories=categories)
    adata.uns[f"{key}_colors"] = [palette[c] for c in categories]
    adata.obs[f"{key}_name"] = pd.Categorical(adata.obs[key].astype(str).map(names),
                                              categories=[names[c] for c in categories])
    adata.uns[f"{key}_name_colors"] = list(adata.uns[f"{key}_colors"])
    if _has_labels(adata, label_key):
        label_categories = _categories(adata.obs[label_key])
        adata.obs[label_key] = pd.Categorical(adata.obs[label_key].astype(object), categories=label_categories)
        colours = label_palette(adata, label_key)
        adata.uns[f"{label_key}_colors"] = [colours[c] for c in label_categories]
