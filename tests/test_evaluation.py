"""Tests for senca.evaluation: ARI/NMI scoring and marker genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from senca.errors import SencaInputError
from senca.evaluation import ari_nmi, markers, match_regions, n_clusters_from_labels, score
from senca.evaluation.markers import MARKER_COLUMNS


def labelled_adata(labels, regions) -> ad.AnnData:
    adata = ad.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    adata.obs["label"] = pd.Categorical(labels)
    adata.obs["senca_region"] = pd.Categorical(regions)
    return adata


# --- ARI / NMI -----------------------------------------------------------------------------


def test_ari_nmi_perfect_up_to_renaming():
    out = ari_nmi(["a", "a", "b", "b", "c"], [2, 2, 0, 0, 1])
    assert out == {"ari": 1.0, "nmi": 1.0, "n_scored": 5, "n_labels": 3, "n_regions": 3}


def test_undetermined_is_excluded_and_would_change_the_score():
    labels = ["tumour"] * 6 + ["stroma"] * 6 + ["undetermined"] * 6
    # the undetermined spots are spread over both regions: scoring them would lower the ARI
    regions = ["0"] * 6 + ["1"] * 6 + ["0", "1"] * 3
    adata = labelled_adata(labels, regions)

    out = score(adata)
    assert out["ari"] == pytest.approx(1.0) and out["nmi"] == pytest.approx(1.0)
    assert out["n_scored"] == 12 and out["n_labels"] == 2

    everything = score(adata, ignore=None)
    assert everything["n_scored"] == 18 and everything["n_labels"] == 3
    assert everything["ari"] == pytest.approx(adjusted_rand_score(labels, regions))
    assert everything["ari"] < 0.9
    assert score(adata, ignore=()) == everything
    assert score(adata, ignore="undetermined") == out  # a lone string is one label


def test_missing_labels_are_excluded():
    labels = np.array(["a", "a", None, "b", "b", np.nan], dtype=object)
    pred = np.array([0, 0, 1, 1, 1, 0])
    out = ari_nmi(labels, pred)
    assert out["n_scored"] == 4 and out["ari"] == pytest.approx(1.0)
    adata = labelled_adata(["a", "a", np.nan, "b", "b", np.nan], ["0", "0", "1", "1", "1", "0"])
    assert score(adata)["n_scored"] == 4


def test_scores_match_sklearn_on_imperfect_prediction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200).astype(str)
    pred = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, 200).astype(str))
    out = ari_nmi(labels, pred, ignore=None)
    assert out["ari"] == pytest.approx(adjusted_rand_score(labels, pred))
    assert out["nmi"] == pytest.approx(normalized_mutual_info_score(labels, pred))
    assert 0 < out["ari"] < 1


def test_n_clusters_from_labels_skips_ignored_and_missing():
    adata = labelled_adata(
        ["invasive cancer", "adipose tissue", "undetermined", np.nan, "invasive cancer"],
        ["0"] * 5,
    )
    assert n_clusters_from_labels(adata) == 2
    assert n_clusters_from_labels(adata, ignore=None) == 3


def test_bad_input_messages():
    adata = labelled_adata(["a", "b"], ["0", "1"])
    message = r"adata\.obs has no column 'truth'.*'label', 'senca_region'"
    with pytest.raises(SencaInputError, match=message):
        score(adata, label_key="truth")
    message = r"adata\.obs has no column 'regions'.*run senca\.tl\.cluster"
    with pytest.raises(SencaInputError, match=message):
        score(adata, region_key="regions")
    with pytest.raises(SencaInputError, match=r"adata\.obs has no column 'truth'"):
        n_clusters_from_labels(adata, label_key="truth")

    none_scored = labelled_adata(["undetermined", np.nan], ["0", "1"])
    with pytest.raises(SencaInputError, match=r"adata\.obs\['label'\]: no spot left to score"):
        score(none_scored)
    message = r"every label is missing or in ignore=\['undetermined'\]"
    with pytest.raises(SencaInputError, match=message):
        n_clusters_from_labels(none_scored)

    with pytest.raises(SencaInputError, match=r"labels has 3 entries and pred has 2"):
        ari_nmi(["a", "b", "c"], [0, 1])
    message = r"pred has 1 missing values among the labelled spots"
    with pytest.raises(SencaInputError, match=message):
        ari_nmi(["a", "b", "c"], [0, None, 1])


# --- marker genes --------------------------------------------------------------------------


def marker_adata(n_per: int = 40, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Three regions; gene G3 is up in region "0", G7 in "1", G11 in "2" (log1p values)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(3 * n_per, n_genes)).astype(np.float32)
    for region, gene in enumerate((3, 7, 11)):
        counts[region * n_per:(region + 1) * n_per, gene] += rng.poisson(20, n_per)
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs["senca_region"] = pd.Categorical(np.repeat(["0", "1", "2"], n_per))
    adata.layers["counts"] = adata.X.copy()
    adata.layers["lognorm"] = sp.csr_matrix(np.log1p(counts))
    return adata


def test_markers_find_planted_genes():
    adata = marker_adata()
    uns_before = set(adata.uns.keys())
    table = markers(adata, n_genes=5)
    assert list(table.columns) == MARKER_COLUMNS
    assert len(table) == 15
    top = table[table["rank"] == 1].set_index("region")["gene"].to_dict()
    assert top == {"0": "G3", "1": "G7", "2": "G11"}
    assert table.groupby("region")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 3
    first = table.iloc[0]
    assert first["logfoldchange"] > 2 and first["pval_adj"] < 1e-6
    assert first["pct_in"] == pytest.approx(1.0) and 0 < first["pct_out"] <= 1
    assert set(adata.uns.keys()) == uns_before  # adata is not modified


def test_markers_prefer_lognorm_layer_over_x():
    adata = marker_adata()
    # X holds something else entirely: only layers["lognorm"] carries the planted markers
    adata.X = sp.csr_matrix(np.random.default_rng(1).random(adata.shape).astype(np.float32))
    assert markers(adata, n_genes=1)["gene"].tolist() == ["G3", "G7", "G11"]
    assert markers(adata, n_genes=1, layer=None)["gene"].tolist() == ["G3", "G7", "G11"]
    del adata.layers["lognorm"]
    assert markers(adata, n_genes=1)["gene"].tolist() != ["G3", "G7", "G11"]  # now uses X


def test_markers_warn_on_counts_and_skip_singletons(caplog):
    adata = marker_adata()
    regions = adata.obs["senca_region"].astype(str).to_numpy()
    regions[0] = "9"
    adata.obs["senca_region"] = pd.Categorical(regions)
    with caplog.at_level("WARNING", logger="senca"):
        table = markers(adata, n_genes=2, layer="counts")
    assert "9" not in set(table["region"])
    assert set(table["region"]) == {"0", "1", "2"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "looks like raw counts" in messages and "['9']" in messages


def test_markers_bad_input_messages():
    adata = marker_adata()
    with pytest.raises(SencaInputError, match=r"adata\.obs has no column 'leiden'"):
        markers(adata, groupby="leiden")
    message = r"adata\.layers has no key 'log1p'.*'counts', 'lognorm'"
    with pytest.raises(SencaInputError, match=message):
        markers(adata, layer="log1p")
    with pytest.raises(SencaInputError, match=r"n_genes=0: expected an integer >= 1"):
        markers(adata, n_genes=0)
    adata.obs["one"] = pd.Categorical(["0"] * adata.n_obs)
    with pytest.raises(SencaInputError, match=r"has 1 region\(s\).*expected at least 2 regions"):
        markers(adata, groupby="one")


def test_match_regions_is_one_to_one_and_ignores_undetermined():
    truth = ["tumour"] * 4 + ["stroma"] * 4 + ["undetermined"] * 3
    pred = [7] * 4 + [3] * 3 + [9] + [9] * 3
    assert match_regions(truth, pred) == {"7": "tumour", "3": "stroma", "9": None}
    # undetermined spots carry no weight: region 2 would otherwise outweigh region 1 for "a"
    assert match_regions(["a", "b", "undetermined", "undetermined"], ["1", "2", "2", "2"]) == {"1": "a", "2": "b"}
    assert match_regions([None, "undetermined"], ["1", "2"]) == {"1": None, "2": None}
