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


class _CoordinateSlide:
    """A slide-sized RGB uint8 image computed on indexing (nothing of it is held): red is each
    pixel's column modulo 256, green its row modulo 256."""

    def __init__(self, height: int, width: int):
        self.shape, self.dtype, self.ndim = (height, width, 3), np.dtype(np.uint8), 3

    def __getitem__(self, key):
        rows, cols = (np.arange(n)[k] for n, k in zip(self.shape[:2], key[:2]))
        out = np.zeros((len(rows), len(cols), 3), np.uint8)
        out[..., 0] = (cols % 256)[None, :]
        out[..., 1] = (rows % 256)[:, None]
        return out


def _mod_256_error(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``found - expected`` for a value known modulo 256, where ``expected`` lies well away
    from a wrap of 256 and from the image's edges (elsewhere NaN: there Lanczos's window, three
    displayed pixels either side, mixes the two sides of a wrap or is cut off)."""
    error = (found - expected + 128) % 256 - 128
    error[:3] = error[-3:] = np.nan
    return np.where(np.abs(expected % 256 - 127.5) < 60, error, np.nan)


def test_slide_sized_image_is_reduced_and_every_pixel_stays_in_place():
    from senca.plotting.spatial import _DISPLAY_PX, _display_image

    slide = _CoordinateSlide(20000, 20000)
    window = (1900.3, 19650.7, 2400.2, 15800.9)  # 17751 x 13401 pixels: strided by 4, not a multiple
    shown, (left, right, bottom, top) = _display_image(slide, window)
    assert shown.dtype == np.uint8 and max(shown.shape[:2]) == _DISPLAY_PX
    assert abs(shown.shape[0] / shown.shape[1] - 13401 / 17751) < 2e-3
    # the window is covered, up to a displayed pixel at the far edges (the stride drops a remainder)
    pixel = (right - left) / shown.shape[1]
    assert left <= 1900.3 and right >= 19650.7 - pixel and top <= 2400.2 and bottom >= 15800.9 - pixel
    # Where imshow puts each displayed pixel's centre, the slide shows that very position: a spot
    # drawn at its image coordinates lands on its own pixels.
    rows, cols = np.arange(shown.shape[0]), np.arange(shown.shape[1])
    x = left + (cols + 0.5) * (right - left) / shown.shape[1]
    y = top + (rows + 0.5) * (bottom - top) / shown.shape[0]
    x_error = _mod_256_error(shown[:, :, 0].astype(float).mean(axis=0), x)
    y_error = _mod_256_error(shown[:, :, 1].astype(float).mean(axis=1), y)
    for error in (x_error, y_error):
        assert np.isfinite(error).sum() > 0.3 * len(error)
        assert np.nanmax(np.abs(error)) < 1.0 and abs(np.nanmean(error)) < 0.25


def test_float_image_is_reduced_too():
    from senca.plotting.spatial import _DISPLAY_PX, _display_image

    image = np.linspace(0.0, 1.0, 3000 * 2500 * 3, dtype=np.float32).reshape(3000, 2500, 3)
    shown, extent = _display_image(image, (0.0, 2499.0, 0.0, 2999.0))
    assert shown.shape == (_DISPLAY_PX, round(_DISPLAY_PX * 2500 / 3000), 3) and shown.dtype == np.float32
    assert 0.0 <= shown.min() and shown.max() <= 1.0 and extent == (-0.5, 2499.5, 2999.5, -0.5)
    assert abs(float(shown.mean()) - float(image.mean())) < 1e-3


def test_region_map_over_a_memory_mapped_slide(tmp_path):
    # A 20000 x 20000 RGB slide on disk (a sparse file: only the marked squares are written).
    slide = np.lib.format.open_memmap(tmp_path / "slide.npy", mode="w+", dtype=np.uint8, shape=(20000, 20000, 3))
    spots = np.array([[3000.0, 4000.0], [17003.0, 15011.0], [10001.0, 9003.0], [2400.0, 15800.0]])
    for x, y in spots.astype(int):
        slide[y - 150:y + 151, x - 150:x + 151] = 255
    slide.flush()
    adata = _section(["a", "a", "b", "b"], ["0", "1", "0", "1"])
    adata.obsm["spatial"] = spots / 0.5  # full-resolution coordinates, the slide at scale 0.5
    adata.uns["spatial"] = {"s": {"images": {"hires": np.load(tmp_path / "slide.npy", mmap_mode="r")},
                                  "scalefactors": {"tissue_hires_scalef": 0.5, "spot_diameter_fullres": 200.0}}}
    shown = regions(adata, label_key=None).axes[0].images[0]
    array = np.asarray(shown.get_array())
    assert max(array.shape[:2]) <= 1000
    left, right, bottom, top = shown.get_extent()
    # every spot is drawn on its white square: the displayed pixel under it is white
    for x, y in spots:
        col = int((x - left) / (right - left) * array.shape[1])
        row = int((y - top) / (bottom - top) * array.shape[0])
        assert array[row, col].min() == 255
        # 25 displayed pixels off, towards the middle: background
        off_col, off_row = col + (25 if 2 * col < array.shape[1] else -25), row + (25 if 2 * row < array.shape[0] else -25)
        assert array[row, off_col].max() < 10 and array[off_row, col].max() < 10
