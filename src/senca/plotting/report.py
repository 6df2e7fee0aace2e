"""A single self-contained HTML page (figures embedded) summarising one run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from PIL import Image

_STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;background:#f6f5f3;color:#222}
header{background:#4a2545;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px;font-weight:600}
header p{margin:4px 0 0;opacity:.85;font-size:14px}
main{max-width:1200px;margin:0 auto;padding:16px 32px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:16px 20px;margin:16px 0}
h2{font-size:17px;margin:0 0 12px;color:#4a2545}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#faf7fa;border:1px solid #eadcea;border-radius:6px;padding:10px 12px;min-width:90px}
.card b{display:block;font-size:20px;color:#4a2545}.card span{font-size:12px;color:#666}
img{max-width:100%;height:auto;display:block;margin:0 auto}
img.narrow{max-width:760px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #eee;padding:4px 10px;text-align:left}
th{background:#faf7fa}
pre{background:#f4f4f4;padding:12px;border-radius:6px;font-size:12px;overflow-x:auto}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media(max-width:900px){.grid{grid-template-columns:1fr}}
"""


def _img(path: Path, alt: str, narrow: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    css = ' class="narrow"' if narrow else ""
    return f'<img{css} src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{html.escape(path.name)}">'


def _single_panel(png: Path) -> bool:
    """Whether the region figure has one panel (no reference labels): shown narrower, not blown up."""
    with Image.open(png) as image:
        return image.width < 1500


def _cards(metrics: dict) -> str:
    items = [("spots", metrics.get("n_spots")), ("genes", metrics.get("n_genes")), ("regions", metrics.get("n_regions"))]
    if "ari" in metrics:
        items += [("ARI vs labels", f"{metrics['ari']:.3f}"), ("NMI vs labels", f"{metrics['nmi']:.3f}")]
    items += [("run time", f"{metrics.get('seconds', {}).get('total_s', 0):.0f} s"),
              ("peak memory", f"{metrics.get('peak_memory_mb', 0):.0f} MB"), ("image input", metrics.get("image"))]
    return '<div class="cards">' + "".join(
        f"<div class='card'><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>" for k, v in items) + "</div>"


def write_report(
    path: Path,
    title: str,
    metrics: dict,
    figures: dict[str, Path],
    markers: pd.DataFrame,
    region_table: pd.DataFrame,
    config_text: str,
    names: dict[str, str] | None = None,
) -> None:
    """Write ``report.html``: summary, region map, UMAP, marker plot and tables, settings.

    Parameters
    ----------
    path
        Output file.
    title
        Section name for the header.
    metrics
        As in ``metrics.json``.
    figures
        ``{"regions": png, "umap": png, "markers": png}`` and optionally ``"k_selection"``;
        each is embedded, so the page needs no other file and no network.
    markers
        Marker table (``markers.csv``).
    region_table
        Spots per region with mean confidence.
    config_text
        ``config.toml`` as written.
    names
        Name of each region (as in the figures); the region itself when absent.
    """
    names = names or {}
    top = markers[markers["rank"] <= 5].astype({"region": str})  # ranks start at 1
    order = [str(r) for r in region_table["region"]]
    marker_rows = "".join(
        f"<tr><td>{html.escape(names.get(region, region))}</td>"
        f"<td>{html.escape(', '.join(top.loc[top['region'] == region, 'gene']))}</td></tr>"
        for region in order if (top["region"] == region).any()
    )
    k_section = ("" if "k_selection" not in figures else
                 f"<section><h2>Number of regions</h2>{_img(figures['k_selection'], 'criterion curve of the number of regions', narrow=True)}"
                 "<p style='font-size:12px;color:#666'>Chosen automatically (no k given, no reference labels): "
                 "the elbow of the BIC curve. Pass --k to set it.</p></section>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>senca report: {html.escape(title)}</title>
<style>{_STYLE}</style></head><body>
<header><h1>senca: tissue regions of {html.escape(title)}</h1>
<p>SENCA-st embedding of spatial transcriptomics fused with H&amp;E, clustered into regions</p></header>
<main>
<section><h2>Summary</h2>{_cards(metrics)}</section>
<section><h2>Regions over the H&amp;E image</h2>{_img(figures["regions"], "regions over the H&E image", narrow=_single_panel(figures["regions"]))}</section>
<div class="grid">
<section><h2>Embedding (UMAP)</h2>{_img(figures["umap"], "UMAP of the senca embedding")}</section>
<section><h2>Regions</h2>{region_table.rename(columns=lambda c: c.replace("_", " ")).to_html(index=False, border=0, float_format=lambda v: f"{v:.2f}")}</section>
</div>
<section><h2>Marker genes</h2>{_img(figures["markers"], "marker gene dot plot")}
<table><tr><th>region</th><th>top 5 marker genes (t-test, vs all other spots)</th></tr>{marker_rows}</table>
<p style="font-size:12px;color:#666">Full table: markers.csv. Per-spot regions and confidences: regions.csv. All data: senca.h5ad.</p></section>
{k_section}
<section><h2>Settings (config.toml)</h2><pre>{html.escape(config_text)}</pre></section>
</main></body></html>
"""
    path.write_text(page, encoding="utf-8")
