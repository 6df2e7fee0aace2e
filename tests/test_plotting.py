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


def test_large_image_is_reduced_before_drawing_and_stays_in_place():
    height, width = 2400, 2000
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([(xx * 255 // width), (yy * 255 // height), np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    adata = _section(["a"] * 20 + ["b"] * 20, ["0"] * 20 + ["1"] * 20)
    adata.obsm["spatial"] = np.random.default_rng(1).uniform(400, 1600, size=(40, 2))
    adata.uns["spatial"] = {"s": {"images": {"hires": image},
                                  "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 30.0}}}
    ax = regions(adata).axes[-1]
    shown = ax.images[0]
    assert max(shown.get_array().shape[:2]) <= 1000
    x0, x1, y1, y0 = shown.get_extent()
    # The crop covers the spots; its colours still follow the gradient where they are drawn.
    (sx0, sy0), (sx1, sy1) = adata.obsm["spatial"].min(axis=0), adata.obsm["spatial"].max(axis=0)
    assert x0 < sx0 and x1 > sx1 and y0 < sy0 and y1 > sy1 and x1 - x0 < width
    array = np.asarray(shown.get_array())
    col = int((1000 - x0) / (x1 - x0) * array.shape[1])
    assert abs(int(array[array.shape[0] // 2, col, 0]) - 1000 * 255 // width) <= 3
