"""Per-restart ARIs and two ways of combining three restarts, on the benchmark sections.

    python benchmarks/restart_variants.py --sections A1 151673 --seeds 0 [--set hidden_dim=128]

For each section and seed, senca is trained three times (the pipeline's restart seeds) at the
model defaults (``--set NAME=VALUE`` overrides one), each embedding is clustered as the pipeline
does, and the ARI is reported for every restart, for the per-spot vote of the three
(:func:`senca.clustering.consensus_labels`, what ``senca run`` does) and for one GMM on the
three embeddings side by side (each centred and divided by its global scale). One JSON line per
section and seed goes to ``--out`` (default ``benchmarks/cache/restart_variants.jsonl``). It
reads the labels only to score.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import get_section, load_section, n_clusters, score_prediction  # noqa: E402
from senca.clustering import cluster, consensus_labels, global_scale  # noqa: E402
from senca.image import extract_patches  # noqa: E402
from senca.model import SENCA  # noqa: E402
from senca.pipeline import _image_usable, _prepare, has_image, restart_seeds  # noqa: E402
from senca.settings import RunSettings  # noqa: E402

logger = logging.getLogger("benchmarks.restart_variants")


def _value(text: str):
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run(section_name: str, seed: int, overrides: dict) -> dict:
    """Train the restarts of one section and seed; ARIs of each, of their vote and of the joint GMM."""
    raw = load_section(get_section(section_name))
    k = n_clusters(raw)
    settings = RunSettings()
    settings.seed = seed
    adata, _ = _prepare(raw, settings)
    config = settings.model.replace(n_clusters=k, **overrides)
    patches = None
    if config.use_image and has_image(adata) and _image_usable(adata, settings.image.min_spot_px):
        patches = extract_patches(adata, show_progress=False)
    else:
        config = config.replace(use_image=False)
    labels, confidences, embeddings, seconds = [], [], [], []
    for restart_seed in restart_seeds(settings):
        start = time.perf_counter()
        model = SENCA(adata, config=config.replace(seed=restart_seed), patches=patches, device="cpu")
        model.train(progress_bar=False)
        seconds.append(time.perf_counter() - start)
        embeddings.append(model.get_latent_representation())
        adata.obsm["X_senca"] = embeddings[-1]
        cluster(adata, use_rep="X_senca", n_clusters=k, refine=True, scale=settings.clustering.scale,
                seed=restart_seed, key_added="region")
        labels.append(adata.obs["region"].astype(str).to_numpy())
        confidences.append(adata.obs["region_confidence"].to_numpy())

    def ari(pred: np.ndarray) -> float:
        return round(score_prediction(raw, pd.Series(pred, index=adata.obs_names))["ari"], 3)

    vote = consensus_labels(labels, confidences)
    scaled = []
    for embedding in embeddings:
        centre, factor = global_scale(embedding)
        scaled.append((embedding - centre) / factor)
    adata.obsm["joint"] = np.hstack(scaled)
    cluster(adata, use_rep="joint", n_clusters=k, refine=True, scale="none", seed=seed, key_added="joint")
    return {"section": section_name, "seed": seed, "overrides": overrides, "restarts": [ari(lab) for lab in labels],
            "vote": ari(vote.labels), "joint_gmm": ari(adata.obs["joint"].astype(str).to_numpy()),
            "restart_agreement": round(vote.agreement, 3), "seconds_per_restart": round(float(np.mean(seconds)), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="model setting overrides")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cache" / "restart_variants.jsonl")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    overrides = {name: _value(value) for name, value in (item.split("=", 1) for item in args.set)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections:
        for seed in args.seeds:
            row = run(name, seed, overrides)
            logger.info("%s", row)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
