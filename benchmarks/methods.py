"""Every method of the benchmark: senca, its ablations, the baselines and the peers.

A method turns a section (raw counts, ``obs["label"]``) into one region per spot, given k
and a seed. senca and its ablations go through :func:`senca.pipeline.run_section` with
:class:`senca.settings.RunSettings` at its defaults, so they pick up whatever the model's
defaults are; ablation switches come from ``senca.cli.main.ABLATIONS``, and the image-only
ablation is :func:`senca.pipeline.image_only_regions`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pandas as pd

from benchmarks.peers import banksy, common, graphst, spagcn, stagate
from benchmarks.protocol import REPO, Section

logger = logging.getLogger(__name__)

QUICK_FACTOR = 10
# One setting for every section of both platforms, chosen before looking at any score: the
# same QC/HVG as senca, 30 PCs (the usual PCA baseline), GMM with one shared full covariance on
# the unscaled PCs (what mclust EEE fits), spatial smoothing at senca.tl's default strength.
BASELINE_N_COMPS = 30
BASELINE_GMM_SCALE = "none"
BASELINE_SMOOTH_ALPHA = 0.5

SENCA_SOURCES = ("src/senca/**/*.py", "benchmarks/methods.py", "benchmarks/protocol.py")
# A peer uses senca only to read the data (benchmarks/protocol.py): its cached runs survive
# changes to the rest of senca and to the other peers' adapters.
PEER_SOURCES = ("src/senca/io/*.py", "benchmarks/protocol.py", "benchmarks/peers/common.py")

RunFn = Callable[[ad.AnnData, Section, int, int, bool], pd.Series]


@dataclass(frozen=True)
class Method:
    """One column of the results table.

    Attributes
    ----------
    name
        Key in ``results.json``.
    kind
        ``"senca"``, ``"ablation"``, ``"baseline"`` or ``"peer"``.
    run
        ``run(adata, section, k, seed, quick) -> pd.Series`` of regions indexed by spot id.
    params
        ``params(quick) -> dict`` of the hyper-parameters (written to RESULTS.md and keyed
        into the cache).
    sources
        Globs (relative to the repository) whose contents key the cache of its runs.
    needs_image
        Run only on sections with an H&E image.
    unavailable
        ``unavailable() -> str | None``: why it cannot run here.
    """

    name: str
    kind: str
    run: RunFn
    params: Callable[[bool], dict]
    sources: tuple[str, ...]
    needs_image: bool = False
    unavailable: Callable[[], str | None] = lambda: None

    def source_files(self) -> list[Path]:
        """The files named by :attr:`sources`."""
        return sorted({path for pattern in self.sources for path in REPO.glob(pattern)})


# --- senca and its ablations ------------------------------------------------------------

# benchmark column -> ablation: a key of senca.cli.main.ABLATIONS, or "image-only"
# (senca.pipeline.image_only_regions: the image branch alone)
ABLATION_KEYS = {
    "senca": "full",
    "senca-st-only": "st-only",
    "senca-image-only": "image-only",
    "senca-no-cross-attention": "no-cross-attention",
    "senca-vanilla-contrastive": "vanilla-contrastive",
}
IMAGE_ONLY = "image-only"


def ablation_changes(key: str) -> dict:
    """Model switches of an ablation (none for the full model and the image-only path)."""
    from senca.cli.main import ABLATIONS

    return {} if key == IMAGE_ONLY else dict(ABLATIONS[key])


def senca_settings(key: str, quick: bool):
    """:class:`~senca.settings.RunSettings` at the defaults with the ablation's switches.

    ``quick`` scales the three training stages to a tenth of their epochs.
    """
    from senca.cli.commands import scale_epochs
    from senca.settings import RunSettings

    settings = RunSettings()
    settings.model = settings.model.replace(**ablation_changes(key))
    if quick:
        model = settings.model
        total = model.epochs_warmup + model.epochs_shared + model.epochs_regions
        scale_epochs(settings, max(total // QUICK_FACTOR, 3))
    return settings


def _senca_method(name: str) -> Method:
    key = ABLATION_KEYS[name]

    def run(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
        from senca.pipeline import REGION_KEY, image_only_regions, run_section

        settings = senca_settings(key, quick)
        settings.seed = seed
        settings.clustering = dataclasses.replace(settings.clustering, k=k)
        if key == IMAGE_ONLY:
            return image_only_regions(adata, settings).astype(str)
        return run_section(adata, settings).adata.obs[REGION_KEY].astype(str)

    def params(quick: bool) -> dict:
        settings = senca_settings(key, quick).to_dict()
        settings.pop("seed")
        switches = ("senca.pipeline.image_only_regions: the warm-up-trained image branch, PCA, the same clustering"
                    if key == IMAGE_ONLY else ablation_changes(key))
        return {"ablation": key, "switches": switches, "settings": settings}

    return Method(name, "senca" if key == "full" else "ablation", run, params, SENCA_SOURCES,
                  needs_image=key != "full")


# --- baselines ----------------------------------------------------------------------------


def _baseline_preprocess(adata: ad.AnnData, seed: int) -> ad.AnnData:
    from senca.graph import spatial_graph
    from senca.preprocessing import preprocess
    from senca.settings import RunSettings

    settings = RunSettings()
    pp, graph = settings.preprocessing, settings.graph
    adata = preprocess(adata, min_counts=pp.min_counts, min_spots=pp.min_spots, n_top_genes=pp.n_top_genes,
                       n_comps=BASELINE_N_COMPS, seed=seed)
    spatial_graph(adata, method=graph.method, radius=graph.radius, n_neighbors=graph.n_neighbors)
    return adata


def _baseline_params(**clustering) -> Callable[[bool], dict]:
    def params(quick: bool) -> dict:
        from senca.settings import RunSettings

        settings = RunSettings()
        preprocessing = dataclasses.asdict(settings.preprocessing) | {"n_comps": BASELINE_N_COMPS}
        graph = {k: v for k, v in dataclasses.asdict(settings.graph).items() if v is not None}
        return {"preprocessing": preprocessing, "graph": graph, "clustering": clustering}

    return params


def run_pca_gmm(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """Preprocessing as senca, 30 PCs, GMM (shared full covariance) with k components."""
    from senca.clustering import cluster

    adata = _baseline_preprocess(adata, seed)
    cluster(adata, use_rep="X_pca", method="gmm", n_clusters=k, scale=BASELINE_GMM_SCALE, seed=seed, key_added="region")
    return adata.obs["region"].astype(str)


def run_pca_gmm_smooth(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """As :func:`run_pca_gmm` on PCs blended with their spatial neighbours' mean (alpha 0.5)."""
    from senca.clustering import cluster, smooth_representation

    adata = _baseline_preprocess(adata, seed)
    smooth_representation(adata, use_rep="X_pca", key_added="X_pca_smooth", alpha=BASELINE_SMOOTH_ALPHA)
    cluster(adata, use_rep="X_pca_smooth", method="gmm", n_clusters=k, scale=BASELINE_GMM_SCALE, seed=seed,
            key_added="region")
    return adata.obs["region"].astype(str)


def run_leiden(adata: ad.AnnData, section: Section, k: int, seed: int, quick: bool) -> pd.Series:
    """Leiden on a 15-NN graph of the 30 PCs, resolution searched to give k regions."""
    from senca.clustering import cluster

    adata = _baseline_preprocess(adata, seed)
    cluster(adata, use_rep="X_pca", method="leiden", n_clusters=k, seed=seed, key_added="region")
    return adata.obs["region"].astype(str)


BASELINE_SOURCES = ("src/senca/preprocessing/*.py", "src/senca/clustering/*.py", "src/senca/graph/*.py",
                    "src/senca/io/*.py", "src/senca/settings.py", "benchmarks/methods.py", "benchmarks/protocol.py")


def _peer_method(adapter, epoch_keys: tuple[str, ...]) -> Method:
    """The :class:`Method` of a peer adapter module (``PEER``, ``PARAMS``, ``run``)."""
    peer = adapter.PEER

    def params(quick: bool) -> dict:
        out = dict(adapter.PARAMS)
        if quick:
            out.update({key: common.quick_epochs(out[key], quick) for key in epoch_keys})
        return out | {"version": peer.version()}

    sources = (*PEER_SOURCES, f"benchmarks/peers/{peer.name}.py")
    return Method(peer.name, "peer", adapter.run, params, sources, unavailable=peer.unavailable)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("pca-gmm", "baseline", run_pca_gmm, _baseline_params(method="gmm", scale=BASELINE_GMM_SCALE),
               BASELINE_SOURCES),
        Method("pca-gmm-smooth", "baseline", run_pca_gmm_smooth,
               _baseline_params(method="gmm", scale=BASELINE_GMM_SCALE, smooth_alpha=BASELINE_SMOOTH_ALPHA),
               BASELINE_SOURCES),
        Method("leiden", "baseline", run_leiden, _baseline_params(method="leiden", n_neighbors=15,
                                                                  resolution="searched to k"), BASELINE_SOURCES),
        _peer_method(spagcn, ("max_epochs", "search_max_epochs")),
        _peer_method(stagate, ("n_epochs",)),
        _peer_method(graphst, ("epochs",)),
        _peer_method(banksy, ()),
        *(_senca_method(name) for name in ("senca-st-only", "senca-image-only", "senca-no-cross-attention",
                                           "senca-vanilla-contrastive", "senca")),
    )
}
REFERENCE = "senca"
ABLATIONS = tuple(name for name, m in METHODS.items() if m.kind == "ablation")
