"""Figures over several sections: region maps side by side and the region composition per section."""

from __future__ import annotations

import math

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from senca.errors import SencaInputError
from senca.graph import section_codes
from senca.plotting.spatial import _categories, _draw_categories, _layout, region_palette


def regions_by_section(
    adata: ad.AnnData,
    library_key: str,
    key: str = "senca_region",
    ncols: int = 4,
    title: str | None = None,
) -> Figure:
    """One region map per section in a grid, each over its own image (``uns["spatial"][section]``).

    The colours are shared by all panels, so the same region id has the same colour in every
    section; one legend for the whole figure.

    Parameters
    ----------
    adata
        Spots of several sections with ``obsm["spatial"]`` and ``obs[key]``.
    library_key
        ``obs`` column naming each spot's section.
    key
        Categorical column to colour by.
    ncols
        Panels per row.
    title
        Figure title.
    """
    if key not in adata.obs:
        raise SencaInputError(f"AnnData: obs[{key!r}] is missing; expected region labels to plot")
    names, codes = section_codes(adata, library_key)
    categories = _categories(adata.obs[key])
    palette = region_palette(categories)
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.6 * nrows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for code, (name, ax) in enumerate(zip(names, axes.ravel())):
        section = adata[codes == code]
        _draw_categories(ax, section, key, name, _layout(section, name), palette)
        ax.get_legend().remove()
    handles = [Line2D([], [], marker="o", linestyle="", markersize=8, markerfacecolor=palette[c], markeredgecolor="white", label=c)
               for c in categories]
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=9, title=key)
    if title:
        fig.suptitle(title, fontsize=13)
    return fig


def composition(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Stacked bars: the fraction of each section's spots in every region.

    Parameters
    ----------
    table
        Sections x regions, fractions summing to 1 per row (e.g. ``pd.crosstab(..., normalize="index")``).
    title
        Figure title.
    """
    palette = region_palette([str(c) for c in table.columns])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(table) + 2.5), 4.2), layout="constrained")
    bottom = np.zeros(len(table))
    for column in table.columns:
        values = table[column].to_numpy(dtype=float)
        ax.bar(table.index.astype(str), values, bottom=bottom, color=palette[str(column)], label=str(column), width=0.8)
        bottom += values
    ax.set_ylabel("fraction of spots")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=90 if len(table) > 8 else 0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=9, title="region")
    ax.set_title(title or "region composition per section", fontsize=11)
    return fig
