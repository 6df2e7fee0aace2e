"""Region maps: regions take the colours of the reference labels they match."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd

from senca.plotting.spatial import embedding, matched_palette, region_palette, regions


def test_regions_take_the_colour_of_their_matched_label():
    labels = pd.Series(["tumour"] * 5 + ["stroma"] * 5 + ["undetermined"] * 2)
    found = pd.Series(["2"] * 5 + ["0"] * 4 + ["1"] * 3, dtype="category")
    label_palette = region_palette(["stroma", "tumour", "undetermined"])
    palette, names = matched_palette(found, labels, label_palette)
    assert palette["2"] == label_palette["tumour"] and palette["0"] == label_palette["stroma"]
    assert palette["1"] not in label_palette.values()  # unmatched: a colour no label uses
    assert names == {"0": "0 \u2248 stroma", "1": "1", "2": "2 \u2248 tumour"}


def test_region_map_legend_names_the_matched_labels():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(np.zeros((40, 2), dtype=np.float32))
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(40, 2))
    adata.obs["label"] = pd.Categorical(["tumour"] * 20 + ["stroma"] * 20)
    adata.obs["senca_region"] = pd.Categorical(["1"] * 20 + ["0"] * 20)
    fig = regions(adata)
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["stroma (20)", "tumour (20)"], ["0 \u2248 stroma (20)", "1 \u2248 tumour (20)"]]
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
    assert table["spots"].tolist() == [2, 2, 2]
