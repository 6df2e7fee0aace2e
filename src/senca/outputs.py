"""Writing a run's outputs: all files or none, never over a folder the user has without ``force``."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterable

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from senca import plotting
from senca._process import array_bytes, owned_prefix, remove_dead_runs, signals_held
from senca.errors import SencaInputError
from senca.io import write_h5ad, write_regions
from senca.evaluation import markers as find_markers
from senca.evaluation import name_regions
from senca.layout import umap
from senca.pipeline import LABEL_KEY, REGION_KEY, RunResult, timed
from senca.plotting.report import write_report
from senca.settings import RunSettings, dump_toml

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("regions.csv", "senca.h5ad", "regions.png", "umap.png", "markers.csv", "markers.png",
                "metrics.json", "config.toml", "report.html")
# Written only when the run chose the number of regions itself.
K_SELECTION_FILE = "k_selection.png"
# Written only on request (``save_model``): SENCA.save with the section, for SENCA.load(folder).
MODEL_FOLDER = "model"
# Written only for a SpatialData input: the regions as a SpatialData table over the same spots.
SPATIALDATA_STORE = "senca.zarr"


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Plots, report, tables and config of the smallest run; more is checked once the section is known.
MIN_FREE_BYTES = 50 * 2**20


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(folder: Path, out: Path) -> None:
    """Create and remove a file in ``folder``: permission bits say little for root or read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise SencaInputError(f"{out}: cannot write in {folder} ({err.strerror or err}); choose another --out") from err


def _overlaps(out: Path, inputs: Iterable[str | Path | None]) -> str | None:
    for given in inputs:
        if not given:
            continue
        path = Path(given).resolve()
        if path == out:
            return f"it is the input {given}"
        if out in path.parents:
            return f"it contains the input {given}"
        if path in out.parents:
            return f"it lies inside the input {given}"
    return None


def check_output_dir(out: Path, force: bool, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Check ``--out`` before any work; return the folder the outputs will go to.

    Refuses an existing non-empty folder unless ``force``, any folder that is, contains or lies
    inside one of ``inputs`` (``--force`` would delete them), and a place where nothing can be
    written or less than :data:`MIN_FREE_BYTES` is free. A symlink is followed: the outputs
    replace its target and the link stays. Leftover staging folders of runs that were killed
    are removed.
    """
    out = Path(out)
    target = out.resolve()
    if out.is_symlink():
        logger.info("%s is a symlink; the outputs go to its target %s", out, target)
    problem = _overlaps(target, inputs)
    if problem:
        raise SencaInputError(f"{out}: not usable as --out: {problem}; choose an output folder apart from the inputs")
    if target.exists() and not target.is_dir():
        raise SencaInputError(f"{out}: exists and is not a folder; choose another --out")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise SencaInputError(f"{out}: output folder exists and is not empty; pass --force to replace it, or choose another --out")
    existing = _nearest_existing(target.parent)
    _check_writable(existing, out)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise SencaInputError(f"{out}: {free / 2**20:.0f} MiB free on its disk; the outputs need at least "
                              f"{MIN_FREE_BYTES / 2**20:.0f} MiB; free some space or choose another --out")
    _recover(target)
    return target


def _recover(target: Path) -> None:
    """Clean up after runs killed while writing: their staging folders, and a half-done replacement."""
    if not target.parent.is_dir():
        return
    remove_dead_runs(target.parent, f".{target.name}.", ".partial")
    previous = target.with_name(f".{target.name}.previous")
    if previous.is_dir() and not previous.is_symlink():
        if target.exists():
            shutil.rmtree(previous, ignore_errors=True)
        else:  # killed between moving the old outputs aside and moving the new ones in
            previous.rename(target)
            logger.warning("%s: restored the previous outputs, which an interrupted run had moved aside", target)


def _estimated_bytes(adata: ad.AnnData) -> int:
    """An upper bound of the outputs' size: the section's arrays uncompressed, images, plots."""
    arrays = [adata.X, *adata.obsm.values(), *adata.layers.values()]
    for library in adata.uns.get("spatial", {}).values():
        arrays += list(library.get("images", {}).values()) if isinstance(library, dict) else []
    return sum(array_bytes(array) for array in arrays) + MIN_FREE_BYTES + 200 * adata.n_obs


def _region_table(adata: ad.AnnData) -> pd.DataFrame:
    """Spots and mean confidence per region, with its name and, with labels, its most common
    label and that label's share (the evidence the name rests on)."""
    obs = adata.obs
    table = obs.groupby(REGION_KEY, observed=True).agg(
        spots=(REGION_KEY, "size"), mean_confidence=(f"{REGION_KEY}_confidence", "mean")).reset_index()
    table[REGION_KEY] = table[REGION_KEY].astype(str)
    _, names = plotting.region_styles(adata, REGION_KEY, LABEL_KEY)
    table.insert(1, "name", table[REGION_KEY].map(names))
    if LABEL_KEY in obs and obs[LABEL_KEY].notna().any():
        evidence = name_regions(obs[LABEL_KEY], obs[REGION_KEY]).set_index("region")
        table["most common reference label"] = table[REGION_KEY].map(evidence["label"])
        table["its share"] = table[REGION_KEY].map(evidence["share"])
    return table.rename(columns={REGION_KEY: "region"})


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=150, bbox_inches="tight", facecolor="white")
    plt.close(fig)


def write_outputs(result: RunResult, settings: RunSettings, out: Path, title: str, force: bool = False,
                  save_model: bool = False) -> Path:
    """Write every output of a run into ``out``, atomically.

    Everything is written into a temporary folder beside ``out`` (beside a symlink's target)
    and moved into place only when all files exist; on any failure or interrupt the temporary
    folder is removed and ``out`` is untouched. A disk too small for the outputs, known before
    or found while writing, is a :class:`SencaInputError`. Each step is logged with its time;
    ``metrics.json``, written last, holds them and the wall time since ``result.started``,
    outputs included. ``save_model`` also writes the model with its section into ``out/model``
    (:meth:`senca.SENCA.load` reads it without an AnnData).

    Returns
    -------
    ``out``.
    """
    given = Path(out)
    out = check_output_dir(given, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    free, needed = shutil.disk_usage(out.parent).free, _estimated_bytes(result.adata)
    if free < needed:
        raise SencaInputError(f"{given}: {free / 2**20:.0f} MiB free on its disk, the outputs may need up to "
                              f"{needed / 2**20:.0f} MiB; free some space or choose another --out")
    staging = Path(tempfile.mkdtemp(prefix=owned_prefix(f".{out.name}."), suffix=".partial", dir=out.parent))
    try:
        _write_all(result, settings, staging, title, save_model)
        # Signals wait until the swap is done, so an interrupt never leaves --out missing.
        with signals_held(signal.SIGINT, signal.SIGTERM):
            if out.exists():
                previous = out.with_name(f".{out.name}.previous")
                shutil.rmtree(previous, ignore_errors=True)
                out.rename(previous)
                staging.rename(out)
                shutil.rmtree(previous)
            else:
                staging.rename(out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if err.errno in _NO_SPACE or "No space left" in str(err):
            raise SencaInputError(f"{given}: the disk filled up while writing the outputs ({err.strerror or err}); "
                                  "nothing was written; free some space or choose another --out") from err
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("outputs written to %s", given)
    return given


def _write_all(result: RunResult, settings: RunSettings, folder: Path, title: str, save_model: bool) -> None:
    adata = result.adata
    seed = settings.seed
    seconds = result.metrics.setdefault("seconds", {})
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    regions = pd.DataFrame({
        "spot": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1],
        "region": adata.obs[REGION_KEY].astype(str).to_numpy(),
        "confidence": adata.obs[f"{REGION_KEY}_confidence"].to_numpy(),
        "name": adata.obs[f"{REGION_KEY}_name"].astype(str).to_numpy(),
    })
    if LABEL_KEY in adata.obs:
        regions["label"] = adata.obs[LABEL_KEY].astype("string").to_numpy()
    regions.to_csv(folder / "regions.csv", index=False)

    with timed("markers", seconds):
        markers = find_markers(adata, groupby=REGION_KEY, n_genes=10, seed=seed)
        markers.to_csv(folder / "markers.csv", index=False)
    with timed("UMAP", seconds):
        umap(adata, use_rep="X_senca", seed=seed)
    laid_out = adata.uns["umap"]["n_spots_laid_out"]
    umap_title = "UMAP of the senca embedding" + (
        f" ({laid_out:,} of {adata.n_obs:,} spots, drawn at random)" if laid_out < adata.n_obs else "")

    palette, names = plotting.region_styles(adata, REGION_KEY, LABEL_KEY)
    with timed("plots", seconds):
        _save(plotting.regions(adata, REGION_KEY, LABEL_KEY, title=title), folder / "regions.png")
        _save(plotting.embedding(adata, "X_umap", REGION_KEY, title=umap_title), folder / "umap.png")
        _save(plotting.marker_dotplot(adata, markers, REGION_KEY, n_genes=3, names=names), folder / "markers.png")
        figures = {"regions": folder / "regions.png", "umap": folder / "umap.png", "markers": folder / "markers.png"}
        selection = adata.uns.get(REGION_KEY, {}).get("k_selection")
        if selection:
            _save(plotting.k_selection(selection), folder / K_SELECTION_FILE)
            figures["k_selection"] = folder / K_SELECTION_FILE

    with timed("writing", seconds):
        config_text = dump_toml(settings.to_dict())
        (folder / "config.toml").write_text(config_text)
        write_h5ad(adata, folder / "senca.h5ad")
        if save_model:
            result.model.save(folder / MODEL_FOLDER, save_anndata=True)
        if "spatialdata" in adata.uns:
            write_regions(adata, folder / SPATIALDATA_STORE, REGION_KEY)
        metrics = result.metrics
        seconds["total_s"] = time.perf_counter() - result.started
        write_report(folder / "report.html", title, metrics, figures, markers, _region_table(adata), config_text, names)
    seconds.pop("total_s")
    seconds["total_s"] = time.perf_counter() - result.started  # wall time, outputs included
    metrics["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    missing = [name for name in OUTPUT_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"outputs not written: {missing}")
