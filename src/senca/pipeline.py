"""The whole job on one section: read, preprocess, graph, patches, SENCA, regions, scores.

Shared by the command line and the benchmarks, so both run exactly the same method.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from tqdm.auto import tqdm

from senca import io
from senca._process import (WORKER_MODULES, array_bytes, available_memory, owned_prefix,
                            remove_dead_runs, start_worker_server, usable_cores, worker_context,
                            worker_server_started, workers_may_start)
from senca.clustering import cluster, consensus_labels
from senca.errors import SencaInputError
from senca.evaluation import n_clusters_from_labels, score
from senca.graph import section_codes, spatial_graph
from senca.image import extract_patches, section_image
from senca.model import SENCA
from senca.model._senca import resolve_device
from senca.model.restarts import init_restart_worker, load_restart, save_restart, train_restart, train_restart_in_worker
from senca.plotting import store_styles
from senca.preprocessing import preprocess
from senca.settings import RunSettings

logger = logging.getLogger(__name__)

LABEL_KEY = "label"
REGION_KEY = "senca_region"
# Seed of restart r: seed + r * step, so restarts of seeds 0, 1, 2 never share a seed.
_RESTART_SEED_STEP = 1000
_RESTARTS_STEM = "senca-restarts-"
#: ``(adata, config, seeds, patches, image_features, device) -> [(model, embedding)]``, see :func:`run_section`.
RestartTrainer = Callable[..., list[tuple[SENCA, np.ndarray]]]
# Below this many spots a restart takes about as long as starting the fork server (or spawning
# a process); forking from a server that runs already costs far less.
_AUTO_JOBS_MIN_SPOTS = 2000
# Memory of a restart process beyond its copy of the section: the interpreter, torch, the model.
_PROCESS_OVERHEAD_BYTES = 1 << 30


@contextlib.contextmanager
def timed(phase: str, timings: dict[str, float]) -> Iterator[None]:
    """Log the phase with its seconds and add them to ``timings[f"{phase}_s"]``.

    Every phase of a run says what it did and how long it took, so a slow step is never silent.
    """
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    key = phase.lower().replace(" ", "_") + "_s"
    timings[key] = timings.get(key, 0.0) + seconds
    logger.info("%s: %.1f s", phase, seconds)


def restart_seeds(settings: RunSettings) -> list[int]:
    """Seeds of the training restarts: ``seed + r * 1000`` for ``r < settings.clustering.restarts``."""
    restarts = settings.clustering.restarts
    if not isinstance(restarts, int) or restarts < 1:
        raise SencaInputError(f"clustering.restarts={restarts!r}: expected an integer >= 1")
    return [settings.seed + _RESTART_SEED_STEP * r for r in range(restarts)]


def restart_jobs(settings: RunSettings, n_restarts: int, n_spots: int = 0) -> int:
    """How many restarts train at once: ``settings.clustering.restart_jobs``, 1 off the CPU.

    ``"auto"`` uses one process per restart where that pays and is safe: where the server the
    processes fork from runs already (:func:`senca._process.start_worker_server`; ``senca run``
    starts it before its own imports), or else on a section of at least
    ``_AUTO_JOBS_MIN_SPOTS`` spots (below it, starting the server or spawning a process costs
    about what a restart does), and when the main program is the ``senca`` command or an
    interactive session. A user's script may lack the ``if __name__ == "__main__":`` guard that
    the processes need (they import the main module), so there it trains the restarts one after
    another unless given a number.
    There is one process per core this process may run on, or one per restart where the
    restarts do not divide evenly over the cores and are at most twice as many: three restarts
    on two cores then finish together after about 1.5 restarts' time, where two processes take
    two restarts' time with one core idle for the last (measurements:
    benchmarks/restart_jobs.md).
    """
    jobs = settings.clustering.restart_jobs
    auto = jobs == "auto"
    if not auto and (not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1):
        raise SencaInputError(f"clustering.restart_jobs={jobs!r}: expected 'auto' or an integer >= 1")
    if resolve_device(settings.device).type != "cpu":
        if not auto and jobs > 1:
            logger.info("restarts train one after another on %s (restart_jobs applies to the CPU)", settings.device)
        return 1
    if auto:
        if not workers_may_start() or (n_spots < _AUTO_JOBS_MIN_SPOTS and not worker_server_started()):
            return 1
        cores = usable_cores()
        if cores < n_restarts <= 2 * cores and n_restarts % cores:
            return n_restarts  # e.g. three restarts on two cores: none waits for a core to free up
        return min(cores, n_restarts)
    return min(jobs, n_restarts)


def _affordable_jobs(jobs: int, adata: ad.AnnData, patches, image_features) -> int:
    """Lower ``jobs`` to the restart processes the free memory holds, each with its own copy of the section.

    A process is reckoned at three times the section's arrays (its copy, the tensors made
    from it, the pickle it was sent in) plus ``_PROCESS_OVERHEAD_BYTES`` for torch and the
    model; on a Visium HD-sized section that leaves the restarts one after another.
    """
    if jobs == 1:
        return 1
    section = sum(array_bytes(a) for a in (adata.X, *adata.layers.values(), *adata.obsm.values(),
                                           *adata.obsp.values(), patches, image_features))
    per_process = 3 * section + _PROCESS_OVERHEAD_BYTES
    free = available_memory()
    affordable = max(1, min(jobs, free // per_process))
    if affordable < jobs:
        logger.info("restarts: %d process(es), not %d: each needs about %.1f GB and %.1f GB are free", affordable, jobs,
                    per_process / 1e9, free / 1e9)
    return affordable


def train_restart_files(adata: ad.AnnData, config, patches, image_features, device: str) -> dict[str, bytes]:
    """Train one restart of :func:`run_section` and return its saved model as ``{file name: bytes}``.

    For restarts that train elsewhere (a Dask task, see :func:`senca.cohort.run_cohort`): the
    files travel back in memory, so no shared file system is needed.
    :func:`restarts_from_files` turns them back into models.
    """
    model = train_restart(adata, config, patches, image_features, device, progress=False)
    with tempfile.TemporaryDirectory(prefix=owned_prefix(_RESTARTS_STEM)) as tmp:
        save_restart(model, Path(tmp))
        return {path.name: path.read_bytes() for path in Path(tmp).iterdir()}


def restarts_from_files(saved: list[dict[str, bytes]], adata: ad.AnnData, image_features,
                        device: str) -> list[tuple[SENCA, np.ndarray]]:
    """``(model, embedding)`` of each restart saved by :func:`train_restart_files`, in order."""
    out = []
    with tempfile.TemporaryDirectory(prefix=owned_prefix(_RESTARTS_STEM)) as tmp:
        for i, files in enumerate(saved):
            folder = Path(tmp) / f"restart-{i}"
            folder.mkdir()
            for name, blob in files.items():
                (folder / name).write_bytes(blob)
            out.append(load_restart(folder, adata, image_features, device))
    return out


def _train_restarts(adata: ad.AnnData, config, seeds: list[int], patches, image_features, device: str, jobs: int,
                    progress: bool) -> list[tuple[SENCA, np.ndarray]]:
    """Train one model per seed; ``(model, embedding)`` in seed order.

    With ``jobs > 1`` the restarts train in that many child processes, forked from a server
    that imported senca once (:func:`senca._process.worker_context`; spawned where the platform
    has no fork): a child forked from this process would inherit torch's thread pools. Each
    restart seeds itself and runs the same kernels, so the embeddings equal those of the
    sequential path; the models come back through :meth:`SENCA.save` / :meth:`SENCA.load`.
    Inputs and results pass through files in a temporary folder, not the pool's pipes: a
    worker ended halfway through reading a large message would leave the pipe's writer
    blocked, and an interrupted run waiting on it forever. The children import the main
    module, as spawned ones do, so a script that calls this must guard its top level with
    ``if __name__ == "__main__":``.
    """
    if jobs == 1:
        out = []
        for i, seed in enumerate(seeds):
            start = time.perf_counter()
            logger.info("training restart %d/%d (seed %d)", i + 1, len(seeds), seed)
            model = train_restart(adata, config.replace(seed=seed), patches, image_features, device, progress)
            out.append((model, model.get_latent_representation()))
            logger.info("restart %d/%d trained: %.1f s", i + 1, len(seeds), time.perf_counter() - start)
        return out
    logger.info("training %d restarts in %d processes", len(seeds), jobs)
    remove_dead_runs(Path(tempfile.gettempdir()), _RESTARTS_STEM)
    with tempfile.TemporaryDirectory(prefix=owned_prefix(_RESTARTS_STEM)) as tmp:
        context = worker_context(WORKER_MODULES)
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=init_restart_worker,
                                   initargs=(os.getpid(), context.get_start_method() == "forkserver"))
        try:
            inputs = Path(tmp) / "inputs.pickle"
            with open(inputs, "wb") as f:
                pickle.dump((adata, patches, image_features), f, protocol=pickle.HIGHEST_PROTOCOL)
            folders = [Path(tmp) / f"restart-{seed}" for seed in seeds]
            # The ResNet passes take the process's share of the cores, not all of them.
            share = config.image_num_threads or max(1, usable_cores() // jobs)
            futures = [pool.submit(train_restart_in_worker, str(inputs), config.replace(seed=seed, image_num_threads=share), str(folder))
                       for seed, folder in zip(seeds, folders)]
            for future in tqdm(futures, desc="restarts", unit="run", disable=not progress):
                future.result()
        except BrokenProcessPool as err:
            raise RuntimeError(f"a training restart process died ({err}); the usual cause is memory: each of the "
                               f"{jobs} processes holds its own copy of the section, so lower restart_jobs "
                               f"(--jobs)") from err
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed: end the workers now instead of waiting for their training.
            _stop_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [load_restart(folder, adata, image_features, device) for folder in folders]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor offers no public way to end running tasks before Python 3.14.
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


def _region_order(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 30, name)


@dataclass
class RunResult:
    """A finished run: the section with ``obsm["X_senca"]`` and regions, the model, and numbers.

    ``started`` is the ``time.perf_counter()`` the run's wall time counts from (set it earlier
    to count reading the input too); ``metrics["seconds"]`` holds the seconds of every phase.
    """

    adata: ad.AnnData
    model: SENCA
    metrics: dict = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def load_section(settings: RunSettings) -> ad.AnnData:
    """Read the input named in ``settings.input``."""
    source = settings.input
    if not source.path:
        raise SencaInputError("no input given; expected a HER2ST-layout folder, a Space Ranger folder or an .h5ad file")
    return io.read(source.path, format=source.format, sample=source.sample, image=source.image,
                   image_scale=source.image_scale, labels=source.labels)


def has_image(adata: ad.AnnData) -> bool:
    """Whether any library of the section carries an H&E image."""
    return any(library.get("images") for library in adata.uns.get("spatial", {}).values())


def _image_features(adata: ad.AnnData, spec: str) -> np.ndarray:
    if spec in adata.obsm:
        return np.asarray(adata.obsm[spec], dtype=np.float32)
    path = Path(spec)
    if path.suffix != ".npy":
        raise SencaInputError(f"image features {spec!r}: expected an obsm key of the input or an .npy file")
    if not path.is_file():
        raise SencaInputError(f"{path}: image feature file not found")
    try:
        features = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SencaInputError(f"{path}: cannot read as a NumPy array ({err})") from err
    if features.ndim != 2 or features.shape[0] != adata.n_obs or features.dtype.kind not in "biuf":
        raise SencaInputError(f"{path}: image features have shape {features.shape}, dtype {features.dtype}; "
                              f"expected ({adata.n_obs} spots, n_features) numbers")
    features = features.astype(np.float32)
    if not np.isfinite(features).all():
        raise SencaInputError(f"{path}: image features hold {int((~np.isfinite(features)).sum())} NaN/infinite value(s)")
    return features


def _prepare(adata: ad.AnnData, settings: RunSettings, library_key: str | None = None) -> tuple[ad.AnnData, np.ndarray | None]:
    """Preprocess and build the spatial graph (per section with ``library_key``); the given image features follow the kept spots."""
    image_features = _image_features(adata, settings.image.features) if settings.image.features else None
    kept = adata.obs_names
    pp = settings.preprocessing
    adata = preprocess(adata, min_counts=pp.min_counts, min_spots=pp.min_spots, n_top_genes=pp.n_top_genes,
                       n_comps=pp.n_comps, seed=settings.seed, library_key=library_key)
    if image_features is not None:
        image_features = image_features[kept.get_indexer(adata.obs_names)]
    spatial_graph(adata, method=settings.graph.method, radius=settings.graph.radius, n_neighbors=settings.graph.n_neighbors,
                  library_key=library_key)
    return adata, image_features


def _image_usable(adata: ad.AnnData, min_spot_px: float, library_key: str | None = None) -> bool:
    """Whether the section's image shows texture: at least ``min_spot_px`` pixels across a spot.

    With ``library_key``, every section's own image must (the model reads all or none).
    """
    names = [None] if library_key is None else section_codes(adata, library_key)[0]
    for name in names:
        image, scale, diameter = section_image(adata, None if name is None else str(name))
        spot_px = diameter * scale
        if spot_px < min_spot_px:
            logger.warning("the H&E image%s has %.1f px across a spot (%d x %d px image), too few for texture "
                           "(at least %g, image.min_spot_px): running on the transcriptomics alone; give a "
                           "higher-resolution image to use it", "" if name is None else f" of section {name}",
                           spot_px, image.shape[1], image.shape[0], min_spot_px)
            return False
    return True


def _n_regions(adata: ad.AnnData, settings: RunSettings) -> int | None:
    """``settings.clustering.k``, else the number of reference labels when there are labels."""
    k = settings.clustering.k
    if k is None and LABEL_KEY in adata.obs and adata.obs[LABEL_KEY].notna().any():
        k = n_clusters_from_labels(adata, LABEL_KEY)
        logger.info("k = %d, the number of reference labels other than 'undetermined'", k)
    return k


def run_section(adata: ad.AnnData, settings: RunSettings, progress: bool = True, library_key: str | None = None,
                train_restarts: RestartTrainer | None = None) -> RunResult:
    """Run senca on one section, or jointly on several.

    Parameters
    ----------
    adata
        The section as read (raw counts in ``X``).
    settings
        All settings; ``settings.clustering.k`` ``None`` means: the number of reference labels
        (other than "undetermined") when the section has labels, otherwise chosen by BIC.
    progress
        Show progress bars (patch cutting, training).
    library_key
        ``obs`` column naming each spot's section when ``adata`` holds several (with their
        images under ``uns["spatial"][section]``): one model and one clustering over all of
        them, so region ids mean the same in every section, while normalisation, graph,
        patches and refinement stay within sections (see :func:`senca.pp.preprocess`,
        :func:`senca.graph.spatial_graph`).
    train_restarts
        Trains the restarts elsewhere: called as ``train_restarts(adata, config, seeds, patches,
        image_features, device)``, it returns ``(model, embedding)`` per seed, in seed order, as
        the restarts here would (e.g. as Dask tasks, :func:`senca.cohort.run_cohort`). ``None``:
        in this process or in restart processes (``settings.clustering.restart_jobs``).

    Returns
    -------
    The preprocessed section with ``obsm["X_senca"]``, ``obs["senca_region"]``,
    ``obs["senca_region_confidence"]``, the trained model and metrics (ARI/NMI when labels exist,
    seconds per step, peak memory, agreement of the restarts). With
    ``settings.clustering.restarts`` > 1 the regions are the consensus of the restarts
    (:func:`senca.clustering.consensus_labels`; confidence: the restarts' confidences where
    they agree with it, averaged); embedding and model are those of the restart that agrees
    best with the others. With ``settings.clustering.restart_jobs`` > 1 (CPU) the restarts
    train in parallel processes, with the same result (see :func:`_train_restarts`).
    """
    seeds = restart_seeds(settings)  # bad restart settings fail before the costly steps
    jobs = restart_jobs(settings, len(seeds), adata.n_obs)
    if jobs > 1 and train_restarts is None:
        start_worker_server(WORKER_MODULES)  # it imports senca while this process preprocesses
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with timed("preprocess", timings):
        adata, image_features = _prepare(adata, settings, library_key)

    config = settings.model.replace(seed=settings.seed)
    patches = None
    if config.use_image and image_features is None:
        if not has_image(adata):
            logger.warning("the section has no H&E image: running on the transcriptomics alone")
            config = config.replace(use_image=False)
        elif not _image_usable(adata, settings.image.min_spot_px, library_key):
            config = config.replace(use_image=False)
        else:
            with timed("patches", timings):
                patches = extract_patches(adata, patch_spots=settings.image.patch_spots,
                                          patch_px=settings.image.patch_px, show_progress=progress,
                                          library_key=library_key)

    k = _n_regions(adata, settings)
    config = config.replace(n_clusters=k)
    # Regions of one training run depend on its random start; the consensus of restarts is
    # steadier (benchmarks/README.md, "Why the defaults are what they are", "[clustering] restarts").
    if settings.clustering.restart_jobs == "auto":
        jobs = _affordable_jobs(jobs, adata, patches, image_features)
    with timed("training", timings):
        if train_restarts is None:
            trained = _train_restarts(adata, config, seeds, patches, image_features, settings.device, jobs, progress)
        else:
            trained = train_restarts(adata, config, seeds, patches, image_features, settings.device)
    runs = []
    chosen = [model.n_regions for model, _ in trained]
    # Without k, each restart's region stage chooses its own (select_k); they may differ by one
    # or two, so every restart is clustered with their median, and the consensus combines
    # clusterings of one k. Without a region stage the clustering chooses.
    k_used = k if k is not None or None in chosen else sorted(chosen)[len(chosen) // 2]
    selection = next((m.k_selection for m, _ in trained if m.n_regions == k_used and m.k_selection), None)
    with timed("clustering", timings):
        for seed, (model, embedding) in zip(seeds, trained):
            adata.obsm["X_senca"] = embedding
            cluster(adata, use_rep="X_senca", method=settings.clustering.method, n_clusters=k_used,
                    refine=settings.clustering.refine, scale=settings.clustering.scale, seed=seed,
                    key_added=REGION_KEY, library_key=library_key)
            if k_used is None and selection is None:
                curve = adata.uns[REGION_KEY]["bic"]
                selection = {"k": adata.uns[REGION_KEY]["n_clusters"], "ks": [int(v) for v in curve],
                             "bic": list(curve.values()), "criterion": "elbow of the tied-GMM BIC"}
            runs.append((model, embedding, adata.obs[REGION_KEY].astype(str).to_numpy(),
                         adata.obs[f"{REGION_KEY}_confidence"].to_numpy()))
        consensus = consensus_labels([r[2] for r in runs], [r[3] for r in runs])
    model, adata.obsm["X_senca"] = runs[consensus.reference][0], runs[consensus.reference][1]
    adata.obs[REGION_KEY] = pd.Categorical(consensus.labels, categories=sorted(set(consensus.labels), key=_region_order))
    adata.obs[f"{REGION_KEY}_confidence"] = consensus.confidence
    store_styles(adata, REGION_KEY, LABEL_KEY)
    names = {str(r): str(n) for r, n in zip(adata.obs[REGION_KEY].cat.categories, adata.obs[f"{REGION_KEY}_name"].cat.categories)}
    # What produced the consensus, not the last restart's clustering.
    adata.uns[REGION_KEY] = {
        "method": settings.clustering.method,
        "n_clusters": int(adata.obs[REGION_KEY].nunique()),
        "refined": bool(settings.clustering.refine),
        "use_rep": "X_senca",
        "restarts": len(runs),
        "seeds": list(seeds),
        "restart_k": [int(c) for c in chosen if c is not None],
        "reference_restart": int(consensus.reference),
        "restart_agreement": None if consensus.agreement is None else float(consensus.agreement),
        "k_selection": selection,
        "names": names,
    }
    logger.info("regions: %s", ", ".join(f"{n} ({c})" for n, c in adata.obs[f"{REGION_KEY}_name"].value_counts(sort=False).items()))
    timings["total_s"] = time.perf_counter() - started  # write_outputs extends it to the outputs

    metrics: dict = {
        "n_spots": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_regions": int(adata.obs[REGION_KEY].nunique()),
        "image": "features" if image_features is not None else ("patches" if patches is not None else "none"),
        "restarts": len(runs),
        "restart_agreement": None if consensus.agreement is None else round(consensus.agreement, 4),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "restart_jobs": jobs,
    }
    if jobs > 1:
        # Each restart process holds its own copy; up to ``jobs`` of them run beside this one.
        metrics["peak_memory_restart_process_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    if LABEL_KEY in adata.obs and adata.obs[LABEL_KEY].notna().any():
        metrics.update(score(adata, LABEL_KEY, REGION_KEY))
    return RunResult(adata=adata, model=model, metrics=metrics, started=started)


def image_only_regions(adata: ad.AnnData, settings: RunSettings, n_comps: int = 30, progress: bool = True) -> pd.Series:
    """Regions from senca's image branch alone (the image-only ablation).

    Trains only the image branch of the model of ``settings``: its ``epochs_image`` passes
    of view agreement (none by default), then the BatchNorm re-estimation and freezing that
    end stage 1. With the same settings and seed its features are exactly those the full model
    fuses (:meth:`senca.model.SENCA.get_image_features`); the rest of the warm-up trains the
    gene branch only and is skipped. They are reduced by PCA and
    clustered with the clustering of ``settings`` (method, k, spatial refinement), and the
    regions of the restarts (``settings.clustering.restarts``) combined as in :func:`run_section`. Precomputed
    image features (``settings.image.features``) are clustered as they are (standardised).

    Parameters
    ----------
    adata
        The section as read (raw counts in ``X``) with its H&E image or image features.
    settings
        All settings, as for :func:`run_section`; ``settings.clustering.k`` ``None`` means the
        number of reference labels (other than "undetermined") when the section has labels,
        otherwise chosen by BIC.
    n_comps
        Principal components of the image features that are clustered.
    progress
        Show progress bars (patch cutting, training).

    Returns
    -------
    Region per spot, indexed by the spots kept by preprocessing.

    Raises
    ------
    SencaInputError
        The section has neither an H&E image nor image features.
    """
    adata, image_features = _prepare(adata, settings)
    patches = None
    if image_features is None:
        if not has_image(adata):
            raise SencaInputError("image-only regions: the section has no H&E image and no image features were given")
        patches = extract_patches(adata, patch_spots=settings.image.patch_spots, patch_px=settings.image.patch_px,
                                  show_progress=progress)
    model_settings = settings.model
    k = _n_regions(adata, settings)
    runs = []
    for seed in restart_seeds(settings):
        config = model_settings.replace(seed=seed, use_image=True, epochs_warmup=model_settings.epochs_image,
                                        epochs_shared=0, epochs_regions=0)
        model = SENCA(adata, config=config, patches=patches, image_features=image_features, device=settings.device)
        if patches is not None:  # precomputed features need no training
            model.train(progress_bar=progress)
        features = model.get_image_features()
        n_pcs = min(n_comps, features.shape[1], features.shape[0] - 1)
        adata.obsm["X_image"] = PCA(n_pcs, random_state=seed).fit_transform(features)
        cluster(adata, use_rep="X_image", method=settings.clustering.method, n_clusters=k,
                refine=settings.clustering.refine, seed=seed, key_added="image_region")
        runs.append(adata.obs["image_region"].astype(str).to_numpy())
    return pd.Series(consensus_labels(runs).labels, index=adata.obs_names, name=REGION_KEY)


def find_regions(
    adata: ad.AnnData,
    n_regions: int | None = None,
    *,
    restarts: int | None = None,
    jobs: int | None = None,
    seed: int | None = None,
    settings: RunSettings | None = None,
    progress: bool = True,
) -> RunResult:
    """Find the regions of a section in one call, exactly as ``senca run`` does.

    Preprocessing, spatial graph, H&E patches (when the image shows texture), training with
    restarts, their consensus, region names and colours: :func:`run_section` with the settings
    of ``senca run`` (its defaults, or ``settings``, e.g. read from a ``config.toml`` with
    :meth:`senca.settings.RunSettings.from_dict`). The keyword arguments override single
    settings, as the command's flags do.

    Parameters
    ----------
    adata
        The section as read (raw counts in ``X``; e.g. :func:`senca.io.read`); not modified.
    n_regions
        Number of regions (``--k``); ``None``: the number of reference labels in
        ``obs["label"]`` when there are any, else chosen by :func:`senca.clustering.select_k`.
    restarts, jobs, seed
        As ``--restarts``, ``--jobs`` and ``--seed``.
    settings
        All other settings.
    progress
        Show progress bars.

    Returns
    -------
    :class:`RunResult`: ``.adata`` (the preprocessed section with ``obs["senca_region"]``,
    ``obs["senca_region_name"]``, their colours in ``uns`` and ``obsm["X_senca"]``), ``.model``
    and ``.metrics``.
    """
    settings = dataclasses.replace(settings or RunSettings())
    changes = {k: v for k, v in (("k", n_regions), ("restarts", restarts), ("restart_jobs", jobs)) if v is not None}
    settings.clustering = dataclasses.replace(settings.clustering, **changes)
    if seed is not None:
        settings.seed = seed
    return run_section(adata.copy(), settings, progress=progress)
