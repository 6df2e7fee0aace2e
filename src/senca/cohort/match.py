"""Region ids that agree across independently clustered sections, by their expression profiles."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

# Genes that vary most between the region profiles carry the matching; the rest add noise.
_N_GENES = 2000
_ITERATIONS = 5


def region_profiles(adata: AnnData, key: str, layer: str = "lognorm") -> pd.DataFrame:
    """Mean expression of every region minus the section's mean (regions x genes).

    Subtracting the section mean removes what differs between whole sections (depth,
    chemistry), so that profiles of different sections compare region against region. The
    means come from one sparse product, so all genes of a large section fit.
    """
    matrix = adata.layers[layer] if layer in adata.layers else adata.X
    regions = adata.obs[key].astype(str).to_numpy()
    names, codes = np.unique(regions, return_inverse=True)
    indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes)))
    sums = np.asarray((indicator @ matrix).todense() if sp.issparse(matrix) else indicator @ matrix, dtype=float)
    means = sums / np.bincount(codes)[:, None]
    overall = np.asarray(matrix.mean(axis=0), dtype=float).ravel()
    return pd.DataFrame(means - overall, index=pd.Index(names, name="region"), columns=adata.var_names)


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(1, keepdims=True)) / np.maximum(a.std(1, keepdims=True), 1e-12)
    b = (b - b.mean(1, keepdims=True)) / np.maximum(b.std(1, keepdims=True), 1e-12)
    return a @ b.T / a.shape[1]


def match_sections(profiles: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Give every region of every section a cohort region id, matching regions by profile.

    The section with the most regions is the reference; its regions are the cohort regions.
    Each section's regions are matched one to one to the cohort regions (Hungarian matching,
    maximum total correlation of the profiles), the cohort profiles are recomputed as the mean
    of their matched regions, and the matching is repeated until it settles, so no single
    section's noise fixes the ids. Sections with fewer regions leave some cohort regions
    without a match; the ids mean the same tissue where the profiles agree.

    Parameters
    ----------
    profiles
        Section -> :func:`region_profiles` (regions x genes; the genes shared by all sections
        are used).

    Returns
    -------
    One row per section and region: ``section, region, cohort_region, correlation`` (the
    correlation of the region's profile with its cohort region's profile).
    """
    genes = None
    for table in profiles.values():
        genes = table.columns if genes is None else genes.intersection(table.columns, sort=False)
    stacked = pd.concat([table[genes] for table in profiles.values()])
    top = stacked.var(axis=0).sort_values(ascending=False).index[:_N_GENES]
    data = {name: table[top].to_numpy(dtype=float) for name, table in profiles.items()}
    reference = max(data, key=lambda name: data[name].shape[0])
    centres = data[reference].copy()
    previous = None
    for _ in range(_ITERATIONS):
        assignment = {}
        for name, x in data.items():
            rows, cols = linear_sum_assignment(_correlation(x, centres), maximize=True)
            assignment[name] = cols[np.argsort(rows)]
        if previous is not None and all(np.array_equal(assignment[n], previous[n]) for n in data):
            break
        previous = assignment
        for c in range(centres.shape[0]):
            members = [data[n][assignment[n] == c] for n in data]
            members = [m for m in members if m.size]
            if members:
                centres[c] = np.vstack(members).mean(axis=0)
    rows = []
    for name, x in data.items():
        corr = _correlation(x, centres)
        for i, region in enumerate(profiles[name].index):
            c = int(assignment[name][i])
            rows.append({"section": name, "region": str(region), "cohort_region": str(c), "correlation": float(corr[i, c])})
    logger.info("matched the regions of %d sections to the %d regions of %s", len(data), centres.shape[0], reference)
    return pd.DataFrame(rows)
