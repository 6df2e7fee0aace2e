"""Dot plot of marker genes per region."""

from __future__ import annotations

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.figure import Figure

from senca.errors import SencaInputError


def marker_dotplot(
    adata: ad.AnnData,
    markers: pd.DataFrame,
    groupby: str = "senca_region",
    n_genes: int = 3,
    layer: str | None = "lognorm",
    names: dict[str, str] | None = None,
) -> Figure:
    """Dots per region x marker gene: size = fraction of the region's spots expressing the gene,
    colour = mean expression scaled 0..1 per gene.

    As in scanpy's dot plot with genes grouped by region, each region's top genes stand
    together under a bracket naming the region, so a column is read against its own region.

    Parameters
    ----------
    adata
        Section with ``obs[groupby]`` and log-normalised expression (``layers[layer]`` or ``X``).
    markers
        Table with columns ``region``, ``rank`` and ``gene`` (as :func:`senca.tl.markers` returns).
    groupby
        Region column.
    n_genes
        Top genes shown per region.
    layer
        Expression layer; ``X`` when ``None`` or absent.
    names
        Name of each region for rows and brackets (as :func:`senca.pl.region_styles` gives);
        the region itself when ``None``.

    Returns
    -------
    The matplotlib figure.
    """
    for column in ("region", "rank", "gene"):
        if column not in markers.columns:
            raise SencaInputError(f"marker table lacks column {column!r}; expected the output of senca.tl.markers")
    groups = adata.obs[groupby].astype(str).to_numpy()
    regions = [str(r) for r in (adata.obs[groupby].cat.categories if hasattr(adata.obs[groupby], "cat") else sorted(set(groups)))]
    names = {r: (names or {}).get(r, r) for r in regions}
    top = markers[markers["rank"] <= n_genes].astype({"region": str})  # ranks start at 1
    blocks = [(r, top[top["region"] == r].sort_values("rank")["gene"].tolist()) for r in regions]
    blocks = [(r, genes) for r, genes in blocks if genes]
    genes = [g for _, block in blocks for g in block]
    if not genes:
        raise SencaInputError("marker table holds no genes to plot")
    data = adata.layers[layer] if layer and layer in adata.layers else adata.X
    data = data[:, adata.var_names.get_indexer(genes)]
    data = data.toarray() if sp.issparse(data) else np.asarray(data)
    mean = np.array([data[groups == r].mean(axis=0) for r in regions])
    frac = np.array([(data[groups == r] > 0).mean(axis=0) for r in regions])
    span = mean.max(axis=0) - mean.min(axis=0)
    scaled = (mean - mean.min(axis=0)) / np.where(span > 0, span, 1.0)

    width = max(5.0, 0.42 * len(genes) + 0.09 * max(map(len, names.values())) + 3.6)
    fig, ax = plt.subplots(figsize=(width, max(3.0, 0.45 * len(regions) + 2.4)))
    gx, gy = np.meshgrid(np.arange(len(genes)), np.arange(len(regions)))
    dots = ax.scatter(gx.ravel(), gy.ravel(), s=(frac.ravel() * 14) ** 2 + 2, c=scaled.ravel(), cmap="Reds",
                      vmin=0, vmax=1, edgecolors="#555555", linewidths=0.4)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=9)
    ax.set_yticks(range(len(regions)), [names[r] for r in regions], fontsize=9)
    ax.set_xlim(-0.7, len(genes) - 0.3)
    ax.set_ylim(len(regions) - 0.5, -0.5)
    ax.grid(color="#eeeeee", linewidth=0.5)
    ax.set_axisbelow(True)
    _brackets(ax, blocks, names)
    colourbar = fig.colorbar(dots, ax=ax, fraction=0.04, pad=0.02)
    colourbar.set_label("mean expression (scaled per gene)", fontsize=8)
    for fraction in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=(fraction * 14) ** 2 + 2, c="#bbbbbb", edgecolors="#555555", linewidths=0.4, label=f"{fraction:.0%}")
    legend_in = 1.1  # inches kept free on the right for the size legend, beside the colour bar
    ax.set_title(f"top {n_genes} marker genes per region", fontsize=11, pad=34)
    fig.tight_layout(rect=(0, 0, 1 - legend_in / width, 1))
    fig.legend(*ax.get_legend_handles_labels(), title="spots expressing", loc="upper left",
               bbox_to_anchor=(1 - (legend_in - 0.1) / width, ax.get_position().y1), frameon=False, fontsize=8,
               title_fontsize=8, labelspacing=1.1)
    return fig


def _brackets(ax, blocks: list[tuple[str, list[str]]], names: dict[str, str]) -> None:
    """A bracket above each region's genes, labelled with the region's name (scanpy's dot plot style)."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    start = 0
    for region, block in blocks:
        left, right = start - 0.35, start + len(block) - 0.65
        ax.plot([left, left, right, right], [1.01, 1.04, 1.04, 1.01], transform=transform, color="#333333",
                linewidth=0.8, clip_on=False)
        ax.text((left + right) / 2, 1.05, names[region], transform=transform, ha="left" if len(block) < 3 else "center",
                va="bottom", fontsize=8, rotation=30 if len(block) < 3 else 0, rotation_mode="anchor")
        start += len(block)
