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
        from senca.graph import spot_spacing
        diameter = 0.8 * spot_spacing(xy)
    margin = 1.5 * diameter
    x0, y0 = xy.min(axis=0) - margin
    x1, y1 = xy.max(axis=0) + margin
    return image, xy, diameter, (x0, x1, y0, y1)


def _spot_size_points(ax, diameter_data: float) -> float:
    """Marker area (points^2) that draws a circle ``diameter_data`` data units across."""
    ax.figure.canvas.draw()
    x0, x1 = ax.get_xlim()
    width_px = ax.get_window_extent().width
    points = diameter_data * width_px / abs(x1 - x0) * 72.0 / ax.figure.dpi
    return max(points, 1.0) ** 2


def _categories(values: pd.Series) -> list[str]:
    return [str(c) for c in (values.cat.categories if hasattr(values, "cat") else sorted(values.dropna().unique()))]


def matched_palette(regions: pd.Series, labels: pd.Series, label_palette: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Colours of the regions that follow the reference labels: each region takes the colour of
    the label it is matched to (:func:`senca.evaluation.match_regions`); the others take colours
    no label uses.

    Returns
    -------
    ``(palette, names)``: colour and legend name (``"3 ≈ stroma"``) of every region.
    """
    from senca.evaluation import match_regions

    mapping = match_regions(labels.astype(object), regions.astype(object))
    spare = iter(c for c in region_palette([str(i) for i in range(len(label_palette) + len(mapping))]).values()
                 if c not in label_palette.values())
    palette, names = {}, {}
    for region in _categories(regions):
        label = mapping.get(region)
        palette[region] = label_palette[label] if label is not None else next(spare)
        names[region] = f"{region} \u2248 {label}" if label is not None else region
    return palette, names


def _has_labels(adata: ad.AnnData, label_key: str | None) -> bool:
    return bool(label_key) and label_key in adata.obs and adata.obs[label_key].notna().any()


def region_styles(adata: ad.AnnData, key: str, label_key: str | None = "label") -> tuple[dict[str, str], dict[str, str]]:
    """Colour and legend name of every value of ``obs[key]``, the same in every figure.

    With reference labels in ``obs[label_key]``: :func:`matched_palette`; otherwise
    :func:`region_palette` and the plain names.
    """
    if _has_labels(adata, label_key):
        label_palette = region_palette(_categories(adata.obs[label_key]))
        return matched_palette(adata.obs[key], adata.obs[label_key], label_palette)
    categories = _categories(adata.obs[key])
    return region_palette(categories), {c: c for c in categories}


def _draw_categories(ax, adata: ad.AnnData, key: str, title: str, layout, palette: dict[str, str] | None = None,
                     names: dict[str, str] | None = None) -> dict[str, str]:
    """Spots of ``obs[key]`` over the image; ``layout`` is :func:`_layout` of ``adata``."""
    values = adata.obs[key]
    categories = _categories(values)
    palette = palette or region_palette(categories)
    names = names or {}
    image, xy, diameter, (x0, x1, y0, y1) = layout
    if image is not None:
        ax.imshow(image, interpolation="lanczos")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)  # image convention: y grows downwards
    ax.set_aspect("equal")
    size = _spot_size_points(ax, diameter)
    labels = values.astype("string").fillna("(none)").to_numpy()
    for category in categories + ["(none)"]:
        mask = labels == category
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=palette.get(category, "#ffffff"),
                       alpha=0.85 if image is not None else 1.0, linewidths=0.6, edgecolors="white")
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

    Beside reference labels, each region is drawn in the colour of the label it overlaps most
    (one to one, :func:`matched_palette`) and its legend names that label, so the two panels
    compare at a glance.

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

    Colours and legend names are those of :func:`regions` (:func:`region_styles`).
    """
    if basis not in adata.obsm:
        raise SencaInputError(f"AnnData: obsm[{basis!r}] is missing; expected a 2-D embedding")
    values = adata.obs[key].astype("string").fillna("(none)")
    categories = _categories(adata.obs[key])
    palette, names = region_styles(adata, key, label_key)
    xy = np.asarray(adata.obsm[basis])[:, :2]
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    size = max(4.0, min(40.0, 12000.0 / max(adata.n_obs, 1)))
    for category in categories:
        mask = (values == category).to_numpy()
        ax.scatter(xy[mask, 0], xy[mask, 1], s=size, c=palette[category], label=f"{names[category]} ({mask.sum()})", linewidths=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, markerscale=2.0 / np.sqrt(size) * 3, title=key)
    ax.set_xlabel(f"{basis.removeprefix('X_').upper()} 1")
    ax.set_ylabel(f"{basis.removeprefix('X_').upper()} 2")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"embedding coloured by {key}", fontsize=11)
    fig.tight_layout()
    return fig
