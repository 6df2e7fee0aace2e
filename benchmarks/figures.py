"""Figures like the paper's: a grid of region maps and the ablation grid on A1 (Figure 4 analogue).

Predicted regions are coloured by the reference label they are matched to (Hungarian matching
on the scored spots, :func:`senca.evaluation.match_regions`), so that colours compare
across methods; a region matched to no label is drawn in a shade of grey-brown.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.protocol import IGNORE  # noqa: E402
from senca.evaluation import match_regions  # noqa: E402

logger = logging.getLogger(__name__)

# Fixed colours per reference label so that a class has one colour in every row.
LABEL_COLOURS = {
    "invasive cancer": "#d62728",
    "cancer in situ": "#ff7f0e",
    "immune infiltrate": "#9467bd",
    "breast glands": "#2ca02c",
    "connective tissue": "#1f77b4",
    "adipose tissue": "#e6c229",
    "L1": "#1f77b4", "L2": "#ff7f0e", "L3": "#2ca02c", "L4": "#d62728", "L5": "#9467bd", "L6": "#8c564b",
    "WM": "#e377c2",
}
FALLBACK = ["#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a", "#ff9896", "#c5b0d5"]
UNMATCHED = ["#6b5b45", "#a39171", "#3d3d3d", "#c9b99a"]
IGNORED_COLOUR = "#d9d9d9"


@dataclass
class SectionMaps:
    """What one row of the region grid needs.

    Attributes
    ----------
    name
        Section name (row title).
    coords
        ``(n, 2)`` spot coordinates ``[x, y]`` in image pixels (y grows downwards).
    truth
        Reference label per spot, indexed by spot id (same order as ``coords``).
    regions
        ``{method: regions indexed by spot id}`` (a subset of the spots is fine).
    ari
        ``{method: ARI}`` shown in the panel titles.
    image
        Optional ``(image, scale)``: H&E array and image pixels per coordinate unit.
    group
        Legend group of its labels (e.g. the dataset), so that each label set gets its own line.
    """

    name: str
    coords: np.ndarray
    truth: pd.Series
    regions: dict[str, pd.Series] = field(default_factory=dict)
    ari: dict[str, float] = field(default_factory=dict)
    image: tuple[np.ndarray, float] | None = None
    group: str = ""


def label_colours(labels: Sequence[str]) -> dict[str, str]:
    """Colour of each reference label (fixed for known classes, a fallback cycle otherwise)."""
    out, spare = {}, iter(FALLBACK * (len(labels) // len(FALLBACK) + 1))
    for label in labels:
        if label in IGNORE:
            out[label] = IGNORED_COLOUR
        else:
            out[label] = LABEL_COLOURS.get(label) or next(spare)
    return out


def region_colours(truth: pd.Series, regions: pd.Series, colours: dict[str, str]) -> np.ndarray:
    """Colour per spot of ``regions`` (aligned to ``truth``): the colour of its matched label."""
    regions = regions.reindex(truth.index)
    present = regions.notna().to_numpy()
    mapping = match_regions(truth[present], regions[present], IGNORE)
    unmatched = iter(UNMATCHED * (len(mapping) // len(UNMATCHED) + 1))
    by_region = {region: colours[label] if label is not None else next(unmatched)
                 for region, label in sorted(mapping.items())}
    return np.array([by_region[str(r)] if p else "none" for r, p in zip(regions, present, strict=True)], dtype=object)


def _spot_size(ax: plt.Axes, coords: np.ndarray) -> float:
    """Marker area (points^2) so that neighbouring spots nearly touch."""
    from scipy.spatial import cKDTree

    if len(coords) < 2:
        return 20.0
    distances, _ = cKDTree(coords).query(coords, k=2)
    pitch = float(np.median(distances[:, 1]))
    fig = ax.figure
    width_pt = ax.get_position().width * fig.get_figwidth() * 72
    height_pt = ax.get_position().height * fig.get_figheight() * 72
    extent = np.ptp(coords, axis=0) + pitch
    points_per_unit = min(width_pt / extent[0], height_pt / extent[1])
    return float((0.9 * pitch * points_per_unit) ** 2)


def _panel(ax: plt.Axes, coords: np.ndarray, colours: np.ndarray | None, title: str,
           image: tuple[np.ndarray, float] | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    margin = 0.04 * max(np.ptp(coords, axis=0).max(), 1.0)
    ax.set_xlim(coords[:, 0].min() - margin, coords[:, 0].max() + margin)
    ax.set_ylim(coords[:, 1].max() + margin, coords[:, 1].min() - margin)
    ax.set_aspect("equal")
    if image is not None:
        array, scale = image
        height, width = array.shape[:2]
        ax.imshow(array, extent=(0, width / scale, height / scale, 0))
        ax.set_xlim(coords[:, 0].min() - margin, coords[:, 0].max() + margin)
        ax.set_ylim(coords[:, 1].max() + margin, coords[:, 1].min() - margin)
        return
    if colours is None:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="0.5")
        return
    shown = colours != "none"
    ax.scatter(coords[shown, 0], coords[shown, 1], c=list(colours[shown]), s=_spot_size(ax, coords),
               marker="o", linewidths=0)


def _legend_lines(sections: Sequence[SectionMaps], colours: dict[str, str]) -> list[list[tuple[str, str | None]]]:
    """Legend entries, one line per label group and a last line for the grey/brown spots."""
    groups: dict[str, list[str]] = {}
    for section in sections:
        entries = groups.setdefault(section.group, [])
        present = set(section.truth.dropna().astype(str))
        entries += [t for t in colours if t in present and t not in entries and t not in IGNORE]
    lines = [([(f"{group}:", None)] if group else []) + [(t, colours[t]) for t in entries]
             for group, entries in groups.items()]
    return lines + [[("undetermined / no label", IGNORED_COLOUR), ("region matched to no label", UNMATCHED[0])]]


def _legend(fig: plt.Figure, lines: list[list[tuple[str, str | None]]], line_in: float) -> None:
    for i, entries in enumerate(reversed(lines)):
        handles = [Line2D([], [], marker="o" if c else "", linestyle="", markersize=8, markerfacecolor=c,
                          markeredgewidth=0, label=label) for label, c in entries]
        bottom = (0.05 + i * line_in) / fig.get_figheight()
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, bottom), ncol=len(handles), fontsize=9,
                   frameon=False, handletextpad=0.3, columnspacing=1.2, borderaxespad=0)


def _title(method: str, section: SectionMaps) -> str:
    ari = section.ari.get(method)
    return method if ari is None else f"{method}\nARI {ari:.3f}"


def draw_grid(sections: Sequence[SectionMaps], methods: Sequence[str], path: Path, panel_in: float = 2.1,
              with_image: bool = False) -> Path:
    """Draw rows of sections and columns ``[H&E], ground truth, *methods``; save a PNG.

    Parameters
    ----------
    sections
        One :class:`SectionMaps` per row.
    methods
        Columns after the ground truth (a method without regions for a row shows "not run").
    path
        Output PNG.
    panel_in
        Size of one panel in inches.
    with_image
        Add an H&E column first (rows without an image leave it empty).
    """
    columns = (["H&E"] if with_image else []) + ["ground truth", *methods]
    known = list(LABEL_COLOURS)
    labels = {str(t) for section in sections for t in section.truth.dropna()}
    colours = label_colours(sorted(labels, key=lambda t: (known.index(t) if t in known else len(known), t)))
    legend = _legend_lines(sections, colours)
    line_in = 0.3
    legend_in = line_in * len(legend) + 0.1
    width = panel_in * len(columns) + 0.8
    # rows as tall as the widest-relative-to-height section needs, plus room for two-line titles
    aspect = max(np.ptp(s.coords[:, 1]) / max(np.ptp(s.coords[:, 0]), 1e-9) for s in sections)
    row_in = panel_in * float(np.clip(aspect, 0.5, 1.3)) + 0.45
    height = row_in * len(sections) + legend_in + 0.1
    fig, axes = plt.subplots(len(sections), len(columns), squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=0.8 / width, right=0.99, top=1 - 0.45 / height, bottom=(legend_in + 0.1) / height,
                        wspace=0.05, hspace=0.45 / (row_in - 0.45))
    for row, section in zip(axes, sections, strict=True):
        truth = section.truth.astype(object)
        row[0].text(-0.04, 0.5, section.name, transform=row[0].transAxes, ha="right", va="center", fontsize=11,
                    fontweight="bold", rotation=90)
        cells = list(row)
        if with_image:
            ax = cells.pop(0)
            if section.image is not None:
                _panel(ax, section.coords, None, "H&E", image=section.image)
            else:
                ax.axis("off")
        truth_colours = np.array([colours[str(t)] if pd.notna(t) else IGNORED_COLOUR for t in truth], dtype=object)
        _panel(cells[0], section.coords, truth_colours, "ground truth")
        for ax, method in zip(cells[1:], methods, strict=True):
            regions = section.regions.get(method)
            spot_colours = region_colours(truth, regions, colours) if regions is not None else None
            _panel(ax, section.coords, spot_colours, _title(method, section))
    _legend(fig, legend, line_in)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Saved as a 128-colour palette PNG: the maps are flat colours, and the full-colour PNG of
    # the 9-section grid was 4 MB against 0.75 MB so.
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    logger.info("wrote %s", path)
    return path
