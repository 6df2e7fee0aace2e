"""Writing a run's outputs: all files or none, never over a folder the user has without ``force``."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from senca import plotting
from senca.errors import SencaInputError
from senca.evaluation import markers as find_markers
from senca.layout import umap
from senca.pipeline import LABEL_KEY, REGION_KEY, RunResult
from senca.plotting.report import write_report
from senca.settings import RunSettings, dump_toml

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("regions.csv", "senca.h5ad", "regions.png", "umap.png", "markers.csv", "markers.png",
                "metrics.json", "config.toml", "report.html")


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing, non-empty output folder unless ``force``."""
    if out.exists() and not out.is_dir():
        raise SencaInputError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SencaInputError(f"{out}: output folder exists and is not empty; pass --force to replace it, or choose another --out")


def _region_table(adata: ad.AnnData) -> pd.DataFrame:
    obs = adata.obs
    table = obs.groupby(REGION_KEY, observed=True).agg(
        spots=(REGION_KEY, "size"), mean_confidence=(f"{REGION_KEY}_confidence", "mean")).reset_index()
    if LABEL_KEY in obs and obs[LABEL_KEY].notna().any():
        # Plain strings: mapping a categorical column through a categorical Series pairs codes, not names.
        majority = {
            str(region): (str(labels.value_counts().index[0]) if labels.notna().any() else "")
            for region, labels in obs.groupby(REGION_KEY, observed=True)[LABEL_KEY]
        }
        table["most common reference label"] = table[REGION_KEY].astype(str).map(majority)
    return table.rename(columns={REGION_KEY: "region"})


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def _write_h5ad(adata: ad.AnnData, path: Path) -> None:
    """Write ``adata`` with a ``uns`` that h5ad can store (no tuples, no None), without copying the data.

    A copy of the whole AnnData would double the memory of a large section at its last step;
    only ``uns`` is swapped, and put back.
    """
    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items() if v is not None}
        if isinstance(value, tuple):
            return list(value)
        return value
    original = adata.uns
    adata.uns = clean(dict(original))
    try:
        adata.write_h5ad(path, compression="gzip")
    finally:
        adata.uns = original


def write_outputs(result: RunResult, settings: RunSettings, out: Path, title: str, force: bool = False) -> Path:
    """Write every output of a run into ``out``, atomically.

    Everything is written into a temporary folder beside ``out`` and moved into place only when
    all files exist; on any failure the temporary folder is removed and ``out`` is untouched.

    Returns
    -------
    ``out``.
    """
    out = Path(out)
    check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write_all(result, settings, staging, title)
        if out.exists():
            previous = out.with_name(f".{out.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
            staging.rename(out)
            shutil.rmtree(previous)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("outputs written to %s", out)
    return out


def _write_all(result: RunResult, settings: RunSettings, folder: Path, title: str) -> None:
    adata = result.adata
    seed = settings.seed
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    regions = pd.DataFrame({
        "spot": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1],
        "region": adata.obs[REGION_KEY].astype(str).to_numpy(),
        "confidence": adata.obs[f"{REGION_KEY}_confidence"].to_numpy(),
    })
    if LABEL_KEY in adata.obs:
        regions["label"] = adata.obs[LABEL_KEY].astype("string").to_numpy()
    regions.to_csv(folder / "regions.csv", index=False)

    seconds = {}
    step = time.perf_counter()
    markers = find_markers(adata, groupby=REGION_KEY, n_genes=10, seed=seed)
    markers.to_csv(folder / "markers.csv", index=False)
    seconds["markers_s"] = time.perf_counter() - step

    step = time.perf_counter()
    umap(adata, use_rep="X_senca", seed=seed)
    seconds["umap_s"] = time.perf_counter() - step
    laid_out = adata.uns["umap"]["n_spots_laid_out"]
    umap_title = "UMAP of the senca embedding" + (
        f" ({laid_out:,} of {adata.n_obs:,} spots, drawn at random)" if laid_out < adata.n_obs else "")

    step = time.perf_counter()
    _save(plotting.regions(adata, REGION_KEY, LABEL_KEY, title=title), folder / "regions.png")
    _save(plotting.embedding(adata, "X_umap", REGION_KEY, title=umap_title), folder / "umap.png")
    _save(plotting.marker_dotplot(adata, markers, REGION_KEY, n_genes=3), folder / "markers.png")
    seconds["plots_s"] = time.perf_counter() - step

    metrics = dict(result.metrics)
    metrics["seconds"] = {**metrics.get("seconds", {}), **{k: round(v, 2) for k, v in seconds.items()}}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    config_text = dump_toml(settings.to_dict())
    (folder / "config.toml").write_text(config_text)
    _write_h5ad(adata, folder / "senca.h5ad")

    write_report(folder / "report.html", title, metrics,
                 {"regions": folder / "regions.png", "umap": folder / "umap.png", "markers": folder / "markers.png"},
                 markers, _region_table(adata), config_text)
    missing = [name for name in OUTPUT_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"outputs not written: {missing}")
