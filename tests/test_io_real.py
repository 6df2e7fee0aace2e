"""Readers, graph and patches on the real sections in ../shared/data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import senca.io as io
from senca.graph import spatial_graph
from senca.image import extract_patches
from conftest import A1_IMAGE, A1_SCALE, C2_IMAGE, DLPFC, HER2ST, LABELLED_HER2ST, require


def test_her2st_a1_with_image_joins_labels_and_patches_are_tissue():
    require(A1_IMAGE)
    adata = io.read_her2st(HER2ST, "A1", image=A1_IMAGE, image_scale=A1_SCALE)
    assert adata.n_obs == 346
    assert adata.obs["label"].notna().sum() == 346
    assert adata.obs["label"].cat.categories.size == 6
    library = adata.uns["spatial"]["A1"]
    image = library["images"]["hires"]
    assert image.dtype == np.uint8 and image.shape[1] == 2000 and image.shape[2] == 3
    assert library["scalefactors"]["tissue_hires_scalef"] == pytest.approx(A1_SCALE)
    # A spot is ~29 image px across on the 2000 px display image.
    diameter_px = library["scalefactors"]["spot_diameter_fullres"] * A1_SCALE
    assert 25 < diameter_px < 33
    patches = extract_patches(adata, patch_px=32, show_progress=False)
    assert patches.shape == (346, 3, 32, 32) and patches.dtype == np.uint8
    # Tissue, not the black background the display image has around the section.
    assert (adata.obs["patch_tissue_fraction"] > 0.5).mean() >= 0.99
    assert patches.reshape(346, -1).mean(axis=1).min() > 40


@pytest.mark.parametrize("sample", LABELLED_HER2ST)
def test_all_labelled_her2st_sections_load(sample):
    require(HER2ST / "ST-cnts" / f"{sample}.tsv.gz")
    adata = io.read_her2st(HER2ST, sample)
    assert adata.n_obs > 150 and adata.n_vars > 10_000
    assert adata.obs["label"].notna().mean() == 1.0
    assert 4 <= adata.obs["label"].cat.categories.size <= 7
    assert adata.uns["spatial"][sample]["images"] == {}
    spatial_graph(adata)
    # Square ST grid: up to 4 edge + 4 diagonal neighbours.
    assert 3.0 < adata.uns["spatial_neighbors"]["mean_degree"] <= 8.0


def test_dlpfc_151510_loads_lowres_image_and_layers():
    require(DLPFC)
    adata = io.read(DLPFC, labels=DLPFC / "layer_labels.tsv")
    assert io.detect_format(DLPFC) == "visium"
    assert adata.n_obs == 4634 and adata.n_vars == 500
    library = adata.uns["spatial"]["151510"]
    assert list(library["images"]) == ["lowres"]
    assert library["images"]["lowres"].shape[:2] == (600, 600)
    assert library["scalefactors"]["tissue_lowres_scalef"] == pytest.approx(0.045004502)
    assert set(adata.obs["label"].dropna().unique()) == {"L1", "L2", "L3", "L4", "L5", "L6", "WM"}
    assert adata.obs["label"].notna().sum() > 4500
    spatial_graph(adata)
    # Hex grid: 6 neighbours inside the tissue.
    assert 5.0 < adata.uns["spatial_neighbors"]["mean_degree"] <= 6.0
    patches = extract_patches(adata, patch_px=16, show_progress=False)
    assert (adata.obs["patch_tissue_fraction"] > 0.5).mean() > 0.95
    assert patches.shape == (4634, 3, 16, 16)


_C2_SCRIPT = """
import json, resource, sys
import senca.io as io, senca.image as im
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base = peak()
adata = io.read_her2st(sys.argv[1], "C2", image=sys.argv[2], image_scale=1.0)
after_read = peak()
patches = im.extract_patches(adata, patch_px=64, show_progress=False)
image = adata.uns["spatial"]["C2"]["images"]["hires"]
print(json.dumps({"base": base, "after_read": after_read, "after_patches": peak(), "image_bytes": image.nbytes,
                  "shape": list(image.shape), "n": int(patches.shape[0]), "patch_bytes": patches.nbytes}))
"""


def test_full_resolution_c2_image_patched_without_copies():
    require(C2_IMAGE)
    out = subprocess.run([sys.executable, "-c", _C2_SCRIPT, str(HER2ST), str(C2_IMAGE)],
                         capture_output=True, text=True, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert m["shape"] == [9911, 9274, 3]
    assert m["n"] == 187
    # Decoding holds the image about twice at most (PIL's 4-byte pixels + the array).
    assert m["after_read"] - m["base"] < 3.0 * m["image_bytes"]
    # Cutting patches must not copy the image: growth is bounded by a small fraction of it.
    assert m["after_patches"] - m["after_read"] < 0.2 * m["image_bytes"]
