"""Agreement between found regions and pathologist labels (ARI, NMI)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from senca.errors import SencaInputError

logger = logging.getLogger(__name__)

DEFAULT_IGNORE = ("undetermined",)


def _ignore_set(ignore: Iterable[str] | str | None) -> set[str]:
    if ignore is None:
        return set()
    if isinstance(ignore, str):  # a lone string is one label, not a sequence of characters
        return {ignore}
    return {str(v) for v in ignore}


def _scored_mask(labels: pd.Series, ignore: Iterable[str] | str | None) -> np.ndarray:
    """Spots to score: label present (not NaN/None) and not in ``ignore`` (exact string match)."""
    missing = labels.isna().to_numpy()
    ignored = labels.astype(str).isin(_ignore_set(ignore)).to_numpy()
    return ~(missing | ignored)


def _ari_nmi(
    labels: Sequence | np.ndarray | pd.Series,
    pred: Sequence | np.ndarray | pd.Series,
    ignore: Iterable[str] | str | None,
    label_name: str,
    pred_name: str,
) -> dict[str, float | int]:
    lab = pd.Series(np.asarray(labels, dtype=object))
    prd = pd.Series(np.asarray(pred, dtype=object))
    if len(lab) != len(prd):
        raise SencaInputError(
            f"{label_name} has {len(lab)} entries and {pred_name} has {len(prd)}: expected one "
            "entry per spot in both"
        )
    keep = _scored_mask(lab, ignore)
    if not keep.any():
        raise SencaInputError(
            f"{label_name}: no spot left to score ({len(lab)} spots, all labels missing or in "
            f"ignore={sorted(_ignore_set(ignore))}); expected at least one labelled spot"
        )
    n_missing_pred = int(prd[keep].isna().sum())
    if n_missing_pred:
        raise SencaInputError(
            f"{pred_name} has {n_missing_pred} missing values among the labelled spots: "
            "expected a region for every scored spot"
        )
    y_true = lab[keep].astype(str).to_numpy()
    y_pred = prd[keep].astype(str).to_numpy()
    return {
        "ari": float(adjusted_rand_score(y_true, y_pred)),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "n_scored": int(keep.sum()),
        "n_labels": int(len(np.unique(y_true))),
        "n_regions": int(len(np.unique(y_pred))),
    }


def ari_nmi(
    labels: Sequence | np.ndarray | pd.Series,
    pred: Sequence | np.ndarray | pd.Series,
    ignore: Iterable[str] | str | None = DEFAULT_IGNORE,
) -> dict[str, float | int]:
    """Adjusted Rand index and normalised mutual information of ``pred`` against ``labels``.

    Spots whose label is missing (NaN/None) or equal, as a string, to an entry of ``ignore``
    are excluded before scoring (common practice: "undetermined" spots are not scored).

    Parameters
    ----------
    labels
        Ground-truth label per spot.
    pred
        Predicted region per spot (same length).
    ignore
        Label values to exclude (exact string match); ``None`` or ``()`` excludes none.

    Returns
    -------
    ``{"ari", "nmi", "n_scored", "n_labels", "n_regions"}``: the scores
    (:func:`sklearn.metrics.adjusted_rand_score`,
    :func:`sklearn.metrics.normalized_mutual_info_score` with arithmetic normalisation), the
    number of scored spots, and the distinct labels and regions among them.
    """
    return _ari_nmi(labels, pred, ignore, "labels", "pred")


def _obs_column(adata: AnnData, key: str, what: str) -> pd.Series:
    if key not in adata.obs.columns:
        cols = ", ".join(repr(c) for c in adata.obs.columns) or "none"
        raise SencaInputError(
            f"adata.obs has no column {key!r}: expected {what}; available columns: {cols}"
        )
    return adata.obs[key]


def score(
    adata: AnnData,
    label_key: str = "label",
    region_key: str = "senca_region",
    ignore: Iterable[str] | str | None = DEFAULT_IGNORE,
) -> dict[str, float | int]:
    """Score found regions against labels stored in ``adata.obs``.

    Parameters
    ----------
    adata
        Annotated data with ``obs[label_key]`` and ``obs[region_key]``.
    label_key
        ``obs`` column with the pathologist label per spot.
    region_key
        ``obs`` column with the found region per spot (written by :func:`senca.tl.cluster`).
    ignore
        Label values not scored (exact string match), in addition to missing labels.

    Returns
    -------
    ``{"ari", "nmi", "n_scored", "n_labels", "n_regions"}``, see :func:`ari_nmi`.
    """
    labels = _obs_column(adata, label_key, "the true label per spot")
    pred = _obs_column(adata, region_key, "the region per spot (run senca.tl.cluster first)")
    result = _ari_nmi(
        labels, pred, ignore, f"adata.obs[{label_key!r}]", f"adata.obs[{region_key!r}]"
    )
    logger.info(
        "%s vs %s: ARI %.3f, NMI %.3f on %d spots",
        region_key, label_key, result["ari"], result["nmi"], result["n_scored"],
    )
    return result


def n_clusters_from_labels(
    adata: AnnData,
    label_key: str = "label",
    ignore: Iterable[str] | str | None = DEFAULT_IGNORE,
) -> int:
    """Number of distinct labels in ``obs[label_key]``, not counting missing or ignored ones.

    The usual choice of ``k`` when comparing against pathologist annotation.

    Raises
    ------
    SencaInputError
        If the column is missing or no label remains.
    """
    labels = _obs_column(adata, label_key, "the true label per spot")
    lab = pd.Series(np.asarray(labels, dtype=object))
    keep = _scored_mask(lab, ignore)
    if not keep.any():
        raise SencaInputError(
            f"adata.obs[{label_key!r}]: every label is missing or in "
            f"ignore={sorted(_ignore_set(ignore))}; expected at least one labelled spot"
        )
    return int(lab[keep].astype(str).nunique())


def match_regions(
    labels: Iterable, regions: Iterable, ignore: Iterable[str] | str | None = DEFAULT_IGNORE
) -> dict[str, str | None]:
    """Map each region to the reference label it overlaps most, one to one.

    Hungarian matching (:func:`scipy.optimize.linear_sum_assignment`) on the contingency table
    of the labelled spots (label present and not in ``ignore``), so that region maps can share
    the colours of the labels.

    Parameters
    ----------
    labels, regions
        One entry per spot.
    ignore
        Labels left out of the matching.

    Returns
    -------
    ``{region: label}`` for every region (as strings); a region left unmatched (more regions
    than labels, or no labelled spot) maps to ``None``.
    """
    lab = pd.Series(np.asarray(list(labels), dtype=object))
    reg = pd.Series(np.asarray(list(regions), dtype=object)).astype(str)
    keep = _scored_mask(lab, ignore)
    mapping: dict[str, str | None] = {region: None for region in reg.unique()}
    if keep.any():
        table = pd.crosstab(reg[keep], lab[keep].astype(str))
        rows, cols = linear_sum_assignment(table.to_numpy(), maximize=True)
        mapping.update({table.index[r]: table.columns[c] for r, c in zip(rows, cols, strict=True)})
    return mapping


# A region is named after a label only when that label holds at least this share of the
# region's labelled spots: more than half, so the label outnumbers all others together, with a
# margin so that a label ahead by a handful of spots (where relabelling one spot could flip the
# name) names nothing. Forced one-to-one matching, used before, named a region of 18 invasive-
# cancer spots and one other "immune infiltrate" on HER2ST A1.
NAME_MIN_SHARE = 0.6


def name_regions(
    labels: Iterable, regions: Iterable, min_share: float = NAME_MIN_SHARE,
    ignore: Iterable[str] | str | None = DEFAULT_IGNORE,
) -> pd.DataFrame:
    """Name each region after the reference label that holds a clear majority of it.

    Parameters
    ----------
    labels, regions
        One entry per spot.
    min_share
        Least share of the region's labelled spots (label present; ignored labels such as
        "undetermined" count against the share) that the most common label must hold.
    ignore
        Labels a region is never named after.

    Returns
    -------
    One row per region (in the order the regions first appear when sorted as numbers where
    they are numbers): ``region``, ``label`` (most common label other than the ignored, ``""``
    when none), ``share`` (its share of the region's labelled spots, ``NaN`` when none is
    labelled) and ``name``: ``"3: invasive cancer"`` when ``share >= min_share``, else ``"3"``.
    """
    lab = pd.Series(np.asarray(list(labels), dtype=object))
    reg = pd.Series(np.asarray(list(regions), dtype=object)).astype(str)
    present = lab.notna().to_numpy()
    named = _scored_mask(lab, ignore)
    order = sorted(reg.unique(), key=lambda r: (0, int(r), r) if r.isdigit() else (1, 0, r))
    rows = []
    for region in order:
        in_region = (reg == region).to_numpy()
        counts = lab[in_region & named].astype(str).value_counts()
        n_labelled = int((in_region & present).sum())
        label = str(counts.index[0]) if len(counts) else ""
        share = float(counts.iloc[0] / n_labelled) if len(counts) else float("nan")
        rows.append({"region": region, "label": label, "share": share,
                     "name": f"{region}: {label}" if len(counts) and share >= min_share else region})
    return pd.DataFrame(rows, columns=["region", "label", "share", "name"])
