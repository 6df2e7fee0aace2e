"""Marker genes per region (Welch's t-test, one region vs the rest)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

_MIN_SPOTS_PER_REGION = 500

MARKER_COLUMNS = [
    "region", "rank", "gene", "score", "logfoldchange", "pval_adj", "pct_in", "pct_out"
]


def _expression(adata: AnnData, layer: str | None) -> tuple[object, str]:
    if layer is None:
        layer = "lognorm" if "lognorm" in adata.layers else None
    if layer is None:
        return adata.X, "adata.X"
    if layer not in adata.layers:
        available = ", ".join(repr(k) for k in adata.layers.keys()) or "none"
        raise SencaInputError(
            f"adata.layers has no key {layer!r}: expected log1p-normalised expression there; "
            f"available layers: {available}"
        )
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def _looks_like_counts(matrix: object) -> bool:
    """True when a sample of the values is all integers above 20: raw counts, not log1p data."""
    sample = matrix[: min(matrix.shape[0], 500)]
    values = sample.data if sp.issparse(sample) else np.asarray(sample).ravel()
    values = np.asarray(values, dtype=np.float64)
    return values.size > 0 and bool(np.all(values == np.round(values))) and values.max() > 20


def _stratified_rows(regions: np.ndarray, max_spots: int, seed: int) -> np.ndarray:
    """Sorted rows of a random subsample: each region its share of ``max_spots``, at least ``min(size, 500)``."""
    rng = np.random.default_rng(seed)
    rows = []
    for region in np.unique(regions):
        members = np.flatnonzero(regions == region)
        take = min(members.size, max(int(round(max_spots * members.size / regions.size)), _MIN_SPOTS_PER_REGION))
        rows.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(rows))


def markers(
    adata: AnnData,
    groupby: str = "senca_region",
    n_genes: int = 10,
    layer: str | None = None,
    max_spots: int | None = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Top marker genes of every region against all other spots.

    Runs :func:`scanpy.tl.rank_genes_groups` (Welch's t-test, scanpy's default,
    Benjamini–Hochberg) on a lightweight view of the data, so ``adata`` is not modified. Not
    the Wilcoxon rank-sum: scanpy compiles its ranking with numba on the first call after an
    install, which cost a first run more than all its other outputs together
    (benchmarks/README.md, "Why the defaults are what they are", "Marker test").

    Parameters
    ----------
    adata
        Annotated data. Expression must be log1p-normalised (e.g. ``normalize_total`` then
        ``log1p``): the fold changes assume it. Raw counts give a warning.
    groupby
        ``obs`` column with the region per spot. Spots with a missing region are left out;
        regions with fewer than 2 spots cannot be tested and are skipped with a warning.
    n_genes
        Markers reported per region.
    layer
        Layer with the log-normalised expression. ``None``: ``layers["lognorm"]`` when present
        (senca's preprocessing puts log-normalised values for ALL genes there, keeping counts
        in ``layers["counts"]``), otherwise ``adata.X``. ``adata.raw`` is not used.
    max_spots
        Above this many spots, the test runs on a random subsample of about this many
        (drawn with ``seed``), each region keeping its share but at least
        ``min(its size, 500)`` spots: ranking every spot of every gene is what costs, and
        the top markers of regions that large are settled well before (a message says so).
        ``None``: all spots.
    seed
        Seed of that subsample.

    Returns
    -------
    DataFrame with columns ``region, rank, gene, score, logfoldchange, pval_adj, pct_in,
    pct_out``; ``rank`` starts at 1 within each region; ``pct_in``/``pct_out`` are the
    fractions of spots in / outside the region where the gene is detected (non-zero).
    """
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes < 1:
        raise SencaInputError(f"n_genes={n_genes!r}: expected an integer >= 1")
    if groupby not in adata.obs.columns:
        cols = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise SencaInputError(
            f"adata.obs has no column {groupby!r}: expected the region per spot "
            f"(run senca.tl.cluster first); available columns: {cols}"
        )
    matrix, where = _expression(adata, layer)
    if _looks_like_counts(matrix):
        logger.warning(
            "%s looks like raw counts: marker fold changes expect log1p-normalised expression",
            where,
        )

    groups = adata.obs[groupby]
    present = groups.notna().to_numpy()
    regions = groups[present].astype(str)
    obs = pd.DataFrame(
        {"region": pd.Categorical(regions.to_numpy())}, index=adata.obs_names[present]
    )
    if not present.all():
        logger.warning("%d spots without a region are left out", int((~present).sum()))
        matrix = matrix[present]
    if max_spots is not None and len(obs) > max_spots:
        keep = _stratified_rows(obs["region"].to_numpy(), max_spots, seed)
        logger.info("marker genes tested on %d of %d spots (a random subsample, every region kept)", keep.size, len(obs))
        obs, matrix = obs.iloc[keep], matrix[keep]
    sizes = obs["region"].value_counts()
    testable = [g for g in obs["region"].cat.categories if sizes[g] >= 2]
    skipped = [g for g in obs["region"].cat.categories if sizes[g] < 2]
    if skipped:
        logger.warning("regions %s have fewer than 2 spots: no markers for them", skipped)
    if len(obs["region"].cat.categories) < 2 or not testable:
        raise SencaInputError(
            f"adata.obs[{groupby!r}] has {len(obs['region'].cat.categories)} region(s), "
            f"{len(testable)} with >= 2 spots: expected at least 2 regions, one with >= 2 spots"
        )

    # Imported here: scanpy takes seconds to import and only this test needs it, so the model
    # and clustering layers, which import senca.evaluation, load without it.
    import scanpy as sc

    view = AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=adata.var_names.astype(str)))
    sc.tl.rank_genes_groups(
        view,
        "region",
        groups=testable,
        reference="rest",
        method="t-test",
        n_genes=n_genes,
        pts=True,
        use_raw=False,
    )
    table = sc.get.rank_genes_groups_df(view, group=None)
    if "group" not in table.columns:  # a single tested group comes back without the column
        table.insert(0, "group", testable[0])
    table["rank"] = table.groupby("group", observed=True).cumcount() + 1
    out = pd.DataFrame(
        {
            "region": table["group"].astype(str).to_numpy(),
            "rank": table["rank"].to_numpy(dtype=np.int64),
            "gene": table["names"].astype(str).to_numpy(),
            "score": table["scores"].to_numpy(dtype=np.float64),
            "logfoldchange": table["logfoldchanges"].to_numpy(dtype=np.float64),
            "pval_adj": table["pvals_adj"].to_numpy(dtype=np.float64),
            "pct_in": table["pct_nz_group"].to_numpy(dtype=np.float64),
            "pct_out": table["pct_nz_reference"].to_numpy(dtype=np.float64),
        },
        columns=MARKER_COLUMNS,
    )
    return out.reset_index(drop=True)
