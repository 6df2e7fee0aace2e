"""The benchmark protocol: which sections, how they are read, how a prediction is scored.

k = the number of reference labels other than "undetermined"; ARI and NMI are computed on
the spots whose label is present and not "undetermined" (the field's common practice).
Scoring is written here with scikit-learn, not taken from senca, so that the cached runs of
the peers depend on no senca code but the readers. Keep this file to the protocol: it is
part of every cached run's key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from senca import io

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
LABEL_KEY = "label"
IGNORE = ("undetermined",)
# The only H&E image available for a labelled section (README of the data): the 2000 px
# display version of A1, i.e. the original image scaled by 2000/6954.
A1_IMAGE = Path("ST-imgs") / "A" / "A1" / "A1_HE_display_2000px.png"
A1_IMAGE_SCALE = 0.28761


@dataclass(frozen=True)
class Section:
    """One labelled section of the benchmark.

    Attributes
    ----------
    dataset
        ``"her2st"`` or ``"dlpfc"`` (the top-level keys of ``results.json``).
    name
        Section name, e.g. ``"A1"`` or ``"151510"``.
    platform
        ``"st"`` (legacy ST, square grid) or ``"visium"`` (hexagonal grid).
    image
        Whether the H&E image is given to the methods. Only A1 has one; DLPFC's 600 px
        low-resolution image (spots ~4 px across) carries no morphology and is not used.
    """

    dataset: str
    name: str
    platform: str
    image: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("her2st", "A1", "st", image=True),
    *(Section("her2st", name, "st") for name in ("B1", "C1", "D1", "E1", "F1", "G2", "H1")),
    *(Section("dlpfc", name, "visium") for name in ("151510", "151673", "151674")),
)
DATASETS = ("her2st", "dlpfc")


def get_section(name: str) -> Section:
    """The :class:`Section` called ``name``.

    Raises
    ------
    ValueError
        An unknown name (the message lists the known ones).
    """
    for section in SECTIONS:
        if section.name == name:
            return section
    raise ValueError(f"unknown section {name!r}; expected one of {', '.join(s.name for s in SECTIONS)}")


def section_paths(section: Section, data_root: Path = DATA_ROOT) -> list[Path]:
    """The files a section is read from (to check that they exist before any work)."""
    if section.dataset == "her2st":
        root = data_root / "her2st"
        paths = [root / "ST-cnts" / f"{section.name}.tsv.gz", root / "ST-spotfiles" / f"{section.name}_selection.tsv",
                 root / "ST-pat" / "lbl" / f"{section.name}_labeled_coordinates.tsv"]
        return paths + ([root / A1_IMAGE] if section.image else [])
    root = data_root / "dlpfc" / section.name
    return [io.matrix_source(root) or root / "filtered_feature_bc_matrix.h5", root / "spatial", root / "layer_labels.tsv"]


def load_section(section: Section, data_root: Path = DATA_ROOT) -> ad.AnnData:
    """Read a section with its reference labels in ``obs["label"]`` (raw counts in ``X``).

    HER2ST sections come through :func:`senca.io.read_her2st` (A1 with its H&E image),
    DLPFC sections (151510 from its ``.h5``, 151673 and 151674 from their MTX folders) through
    :func:`senca.io.read_visium` without their image plus ``layer_labels.tsv``.
    """
    if section.dataset == "her2st":
        root = data_root / "her2st"
        if section.image:
            return io.read_her2st(root, section.name, image=root / A1_IMAGE, image_scale=A1_IMAGE_SCALE)
        return io.read_her2st(root, section.name)
    root = data_root / "dlpfc" / section.name
    adata = io.read_visium(root, load_image=False)
    io.read_labels(adata, root / "layer_labels.tsv")
    return adata


def _scored(labels: pd.Series) -> pd.Series:
    """The labels that count: present and not "undetermined", as strings."""
    labels = labels.astype(object)
    return labels[labels.notna() & ~labels.astype(str).isin(IGNORE)].astype(str)


def n_clusters(adata: ad.AnnData) -> int:
    """k of the protocol: distinct reference labels other than "undetermined"."""
    return int(_scored(adata.obs[LABEL_KEY]).nunique())


def score_prediction(adata: ad.AnnData, pred: pd.Series) -> dict[str, float | int]:
    """ARI/NMI of ``pred`` (region per spot, indexed by spot id) against ``obs["label"]``.

    Only the spots the method kept (``pred.index``) are scored; among them, those labelled
    "undetermined" or without a label are left out. NMI with arithmetic normalisation
    (scikit-learn's default).

    Returns
    -------
    ``{"ari", "nmi", "n_scored", "n_regions"}``: the scores, the number of scored spots and the
    distinct regions among them.

    Raises
    ------
    ValueError
        No scored spot, or a scored spot without a region.
    """
    truth = _scored(adata.obs[LABEL_KEY].reindex(pred.index))
    if truth.empty:
        raise ValueError("no spot to score: every kept spot is unlabelled or 'undetermined'")
    regions = pred.reindex(truth.index)
    if regions.isna().any():
        raise ValueError(f"{int(regions.isna().sum())} scored spot(s) have no region")
    regions = regions.astype(str)
    return {"ari": float(adjusted_rand_score(truth, regions)), "nmi": float(normalized_mutual_info_score(truth, regions)),
            "n_scored": len(truth), "n_regions": int(regions.nunique())}
