"""Region maps: regions take the colours of the reference labels they match."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

from senca.evaluation import NAME_MIN_SHARE, name_regions
from senca.plotting.spatial import embedding, region_palette, region_styles, regions


def _section(labels: list[str], regions_: list[str]) -> ad.AnnData:
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((len(labels), 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(len(labels), 2))
    adata.obs["label"] = pd.Categorical(labels)
    adata.obs["senca_region"] = pd.Categorical(regions_)
    return adata


def test_region_is_named_only_after_a_clear_majority_label():
    # Region 2: 18 of 19 spots tumour. Region 0: 4 stroma, 2 tumour, 2 immune (50%: no name).
    # Region 1: 2 immune of 5 labelled (3 undetermined count against the share).
    labels = ["tumour"] * 18 + ["stroma"] + ["stroma"] * 4 + ["tumour"] * 2 + ["immune"] * 2 + ["immune"] * 2 + ["undetermined"] * 3
    found = ["2"] * 19 + ["0"] * 8 + ["1"] * 5
    table = name_regions(labels, found)
    assert table["region"].tolist() == ["0", "1", "2"]
    assert table["name"].tolist() == ["0", "1", "2: tumour"]
    assert table["share"].round(3).tolist() == [0.5, 0.4, round(18 / 19, 3)]
    assert NAME_MIN_SHARE == 0.6
    palette, names = region_styles(_section(labels, found))
    assert names == {"0": "0", "1": "1", "2": "2: tumour"}
    label_colours = region_palette(["immune", "stroma", "tumour", "undetermined"])
    assert palette["2"] == label_colours["tumour"]
    # Unnamed regions take colours no label uses, even where forced matching would pair them.
    assert palette["0"] not in label_colours.values() and palette["1"] not in label_colours.values()


def test_two_regions_of_one_label_share_the_name_but_not_the_colour():
    labels = ["tumour"] * 20 + ["stroma"] * 10
    found = ["0"] * 10 + ["1"] * 10 + ["2"] * 10
    palette, names = region_styles(_section(labels, found))
    assert names == {"0": "0: tumour", "1": "1: tumour", "2": "2: stroma"}
    assert len(set(palette.values())) == 3


def test_region_map_legend_names_the_matched_labels():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((40, 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(40, 2))
    adata.obs["label"] = pd.Categorical(["tumour"] * 20 + ["stroma"] * 20)
    adata.obs["senca_region"] = pd.Categorical(["1"] * 20 + ["0"] * 20)
    fig = regions(adata)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["stroma (20)", "tumour (20)"], ["0: stroma (20)", "1: tumour (20)"]]
    colours = [[h.get_markerfacecolor() for h in ax.get_legend().legend_handles] for ax in fig.axes]
    assert colours[0] == colours[1]
    # The UMAP uses the same colours and names as the map.
    adata.obsm["X_umap"] = rng.normal(size=(40, 2))
    umap_legend = embedding(adata).axes[0].get_legend()
    assert [t.get_text() for t in umap_legend.get_texts()] == legends[1]
    assert [matplotlib.colors.to_hex(h.get_facecolor()[0]) for h in umap_legend.legend_handles] == colours[1]


def test_region_table_names_each_regions_own_majority_label():
    from senca.outputs import _region_table

    adata = ad.AnnData(np.zeros((6, 1), dtype=np.float32))
    # One label per region, in another order than the label categories (the case pandas'
    # categorical map got wrong).
    adata.obs["label"] = pd.Categorical(["b", "b", "a", "a", "c", "c"], categories=["a", "b", "c"])
    adata.obs["senca_region"] = pd.Categorical(["0", "0", "1", "1", "2", "2"])
    adata.obs["senca_region_confidence"] = 1.0
    table = _region_table(adata)
    assert table["most common reference label"].tolist() == ["b", "a", "c"]
    assert table["name"].tolist() == ["0: b", "1: a", "2: c"] and table["its share"].tolist() == [1.0, 1.0, 1.0]
    assert table["spots"].tolist() == [2, 2, 2]
