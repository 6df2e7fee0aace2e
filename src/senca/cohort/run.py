"""Running a cohort: per-section work as Dask tasks, finished sections kept, failures reported.

The functions named ``_task_*`` run on Dask workers (any process or machine of the cluster);
everything they need travels as arguments and everything they produce is written to the
section's own output folder, atomically (:func:`senca.outputs.write_outputs`), so a run that
stops at any point leaves only whole sections behind and the next run starts after them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from senca.clustering import cluster, smooth_representation
from senca.cohort.manifest import Section
from senca.cohort.match import region_profiles
from senca.cohort.report import write_cohort_report
from senca.errors import SencaInputError
from senca.evaluation import ari_nmi
from senca.io import concat_sections, split_sections
from senca.outputs import OUTPUT_FILES, write_outputs
from senca.pipeline import (LABEL_KEY, REGION_KEY, RunResult, has_image, load_section, restarts_from_files, run_section,
                            train_restart_files)
from senca.settings import RunSettings, dump_toml

logger = logging.getLogger(__name__)

MODES = ("joint", "independent")
LIBRARY_KEY = "section"
SECTIONS_DIR = "sections"
STATE_FILE = "cohort.json"
# Side of the section images in the cohort report's grid: enough for a panel, small to ship.
_THUMBNAIL_PX = 600
# Principal components of the expression-only baseline of the paired test.
_BASELINE_PCS = 30
# Weight of the neighbours' mean in the baseline's PCs (that of the benchmark's smoothed baseline).
_BASELINE_SMOOTHING = 0.5


@dataclass
class CohortResult:
    """What a cohort run left: the status of every section and the report's tables.

    ``status`` has one row per section: ``section, status`` (``"done"``: run now, ``"kept"``:
    finished by an earlier run, ``"failed"``), ``error``, ``seconds``, ``group``, ``patient``.
    """

    out: Path
    status: pd.DataFrame
    scores: pd.DataFrame | None = None

    @property
    def failed(self) -> list[str]:
        """Names of the sections that failed."""
        return self.status.loc[self.status["status"] == "failed", "section"].tolist()


def section_settings(settings: RunSettings, section: Section) -> RunSettings:
    """The settings of one section: the cohort's, with the section's input."""
    return dataclasses.replace(settings, input=section.input)


def section_folder(out: Path, section: Section) -> Path:
    """Where a section's outputs go: ``OUT/sections/NAME``."""
    return Path(out) / SECTIONS_DIR / section.name


def is_finished(folder: Path, settings: RunSettings) -> bool:
    """Whether ``folder`` holds a whole run of ``settings``.

    Raises
    ------
    SencaInputError
        The folder holds a whole run of other settings: resuming would mix two runs.
    """
    if not all((folder / name).is_file() for name in OUTPUT_FILES):
        return False
    if (folder / "config.toml").read_text() != dump_toml(settings.to_dict()):
        raise SencaInputError(f"{folder}: holds a run with other settings than this one; rerun with the settings it was "
                              "made with (its config.toml), pass --force to run the cohort again, or choose another --out")
    return True


def _within_worker(settings: RunSettings) -> RunSettings:
    """``settings`` to run with on a Dask worker: the ResNet pass takes the worker's threads.

    Left at ``None``, ``image_num_threads`` means every core of the machine, which its other
    workers use too. The features do not depend on the thread count, so neither do the
    regions; the outputs record the settings as given.
    """
    if settings.model.image_num_threads is not None:
        return settings
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not running on a worker
        return settings
    threads = worker.state.nthreads
    return dataclasses.replace(settings, model=settings.model.replace(image_num_threads=threads))


def _task_independent(section: Section, settings: RunSettings, folder: str) -> dict:
    """Read, preprocess, train and write one section (a Dask task)."""
    adata = load_section(settings)
    result = run_section(adata, _within_worker(settings), progress=False)
    write_outputs(result, settings, Path(folder), title=section.name, force=True)
    return result.metrics


def _task_read(settings: RunSettings) -> ad.AnnData:
    """Read one section (a Dask task of the joint mode)."""
    return load_section(settings)


def _task_restart(inputs: tuple, config, device: str) -> dict[str, bytes]:
    """Train one restart of the joint model (a Dask task); its saved model's files."""
    adata, patches, image_features = inputs
    return train_restart_files(adata, config, patches, image_features, device)


def _restarts_as_tasks(adata: ad.AnnData, config, seeds: list[int], patches, image_features, device: str) -> list:
    """Train the joint model's restarts as Dask tasks, side by side on the cluster's workers.

    Called from the joint task, which leaves its worker thread while it waits
    (``worker_client``), so that even a one-thread cluster can run the restarts. Each restart
    seeds itself and runs the same kernels as in one process, so the regions are the same.
    """
    from distributed import worker_client

    with worker_client() as client:
        [shared] = client.scatter([(adata, patches, image_features)], hash=False)
        futures = [client.submit(_task_restart, shared, config.replace(seed=seed), device,
                                 key=f"senca-restart-{seed}-{time.time_ns()}", pure=False) for seed in seeds]
        saved = client.gather(futures)
    return restarts_from_files(saved, adata, image_features, device)


def _task_joint(sections: dict[str, ad.AnnData], settings: RunSettings, inputs: dict[str, RunSettings],
                folders: dict[str, str]) -> dict[str, dict]:
    """One model and one clustering over all sections; each section's outputs written apart (a Dask task)."""
    joined = concat_sections(sections, library_key=LIBRARY_KEY)
    if settings.model.use_image and settings.image.features is None and not all(map(has_image, sections.values())):
        missing = [name for name, adata in sections.items() if not has_image(adata)]
        logger.warning("sections without an H&E image (%s): the joint model runs on the transcriptomics alone", ", ".join(missing))
        settings = dataclasses.replace(settings, model=settings.model.replace(use_image=False))
    result = run_section(joined, _within_worker(settings), progress=False, library_key=LIBRARY_KEY,
                         train_restarts=_restarts_as_tasks)
    metrics = {}
    for name, part in split_sections(result.adata, LIBRARY_KEY).items():
        part.obs[REGION_KEY] = part.obs[REGION_KEY].cat.remove_unused_categories()
        section_metrics = {**result.metrics, "n_spots": int(part.n_obs), "n_regions": int(part.obs[REGION_KEY].nunique()),
                           "joint": {"sections": list(sections), "n_spots": int(result.adata.n_obs)}}
        for key in ("ari", "nmi"):
            section_metrics.pop(key, None)
        if LABEL_KEY in part.obs and part.obs[LABEL_KEY].notna().any():
            section_metrics.update(ari_nmi(part.obs[LABEL_KEY], part.obs[REGION_KEY]))
        write_outputs(RunResult(part, result.model, section_metrics), inputs[name], Path(folders[name]), title=name, force=True)
        metrics[name] = section_metrics
    return metrics


def _thumbnail(adata: ad.AnnData, name: str) -> dict:
    """The section's image, shrunk to at most ``_THUMBNAIL_PX`` a side, as a ``uns["spatial"]`` library."""
    for library in adata.uns.get("spatial", {}).values():
        images, scalefactors = library.get("images", {}), library.get("scalefactors", {})
        for resolution in ("hires", "lowres"):
            if resolution in images and f"tissue_{resolution}_scalef" in scalefactors:
                image = np.asarray(images[resolution])[..., :3]
                shrink = min(1.0, _THUMBNAIL_PX / max(image.shape[:2]))
                size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
                small = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(size, Image.Resampling.BOX))
                return {"images": {"hires": small}, "scalefactors": {
                    "tissue_hires_scalef": float(scalefactors[f"tissue_{resolution}_scalef"]) * shrink,
                    "spot_diameter_fullres": float(scalefactors.get("spot_diameter_fullres", 0.0))}}
    return {}


def _task_summary(name: str, folder: str, seed: int, refine: bool) -> dict:
    """What the cohort report needs of one finished section, read from its ``senca.h5ad`` (a Dask task).

    Returns its spots and regions, region expression profiles, a small copy of its image and,
    with labels, the scores of an expression-only baseline (PCA + GMM with the same number of
    regions and refinement) for the paired test.
    """
    adata = ad.read_h5ad(Path(folder) / "senca.h5ad")
    xy = np.asarray(adata.obsm["spatial"])[:, :2]
    spots = pd.DataFrame({"section": name, "spot": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1],
                          "region": adata.obs[REGION_KEY].astype(str).to_numpy()})
    summary = {"name": name, "spots": spots, "profiles": region_profiles(adata, REGION_KEY),
               "library": _thumbnail(adata, name), "baseline": None}
    if LABEL_KEY in adata.obs and adata.obs[LABEL_KEY].notna().any():
        spots["label"] = adata.obs[LABEL_KEY].astype("string").to_numpy()
        # The benchmark's strongest simple baseline: unscaled PCs averaged with their spatial
        # neighbours', then a tied GMM. Without the averaging the mixture spends components on
        # single outlying spots of a small section and its ARI is near 0 (HER2ST A1).
        adata.obsm["X_baseline"] = np.asarray(adata.obsm["X_pca"])[:, :_BASELINE_PCS]
        smooth_representation(adata, use_rep="X_baseline", key_added="X_baseline", alpha=_BASELINE_SMOOTHING)
        cluster(adata, use_rep="X_baseline", method="gmm", n_clusters=int(adata.obs[REGION_KEY].nunique()),
                scale="none", refine=refine, seed=seed, key_added="baseline_region")
        summary["baseline"] = ari_nmi(adata.obs[LABEL_KEY], adata.obs["baseline_region"])
    return summary


def _collect(futures: dict, what: str, progress: bool, release: bool = True) -> tuple[dict, dict]:
    """Wait for ``{name: future}``; ``(results, errors)`` by name, errors as one line each.

    With ``release``, each result is dropped from the cluster once fetched.
    """
    from distributed import as_completed

    names = {future.key: name for name, future in futures.items()}
    results, errors = {}, {}
    for future in tqdm(as_completed(list(futures.values())), total=len(futures), desc=what, unit="section", disable=not progress):
        name = names[future.key]
        try:
            results[name] = future.result()
        except (Exception, CancelledError) as err:  # noqa: BLE001 - any failure of one section is reported, the rest go on
            errors[name] = f"{type(err).__name__}: {err}".strip()
            logger.error("section %s failed: %s", name, errors[name])
        if release:
            future.release()
    return results, errors


def _read_state(out: Path, mode: str) -> dict:
    path = out / STATE_FILE
    if not path.is_file():
        return {"mode": mode}
    state = json.loads(path.read_text())
    if state.get("mode") != mode:
        raise SencaInputError(f"{out}: holds a cohort run in {state.get('mode')!r} mode; rerun with --mode {state.get('mode')}, "
                              "pass --force, or choose another --out")
    return state


def _clear_stale(out: Path) -> None:
    """Remove staging folders left by a run that was killed while writing."""
    for partial in (out / SECTIONS_DIR).glob(".*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("removed %s, left by an interrupted run", partial)


def run_cohort(
    sections: list[Section],
    out: str | Path,
    settings: RunSettings,
    client,
    mode: str = "independent",
    force: bool = False,
    progress: bool = True,
) -> CohortResult:
    """Run senca on every section of a cohort and write the cohort report.

    Parameters
    ----------
    sections
        From :func:`senca.cohort.read_manifest`.
    out
        Output folder: ``sections/NAME/`` per section (as ``senca run`` writes) and the cohort
        report beside it (:func:`senca.cohort.report.write_cohort_report`).
    settings
        The settings of every section (their ``input`` is replaced by each section's).
    client
        A ``distributed.Client``; the per-section work runs as its tasks.
    mode
        ``"independent"``: one model per section, region ids matched across sections by
        their expression profiles afterwards. ``"joint"``: one model and one clustering over
        all sections (graph, normalisation, patches and refinement per section), so region
        ids agree by construction; its restarts train as tasks side by side.
    force
        Run every section again, replacing earlier outputs in ``out``.
    progress
        Progress bars over the sections.

    Returns
    -------
    The status of every section and the scores; a failed section leaves the others finished
    and is named in the report; running again skips what is finished.
    """
    if mode not in MODES:
        raise SencaInputError(f"cohort mode {mode!r}: expected one of {', '.join(MODES)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SencaInputError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / STATE_FILE).is_file() and not force:
        raise SencaInputError(f"{out}: folder exists, is not empty and holds no cohort run; choose another --out or pass --force")
    if force and (out / STATE_FILE).is_file():
        (out / STATE_FILE).unlink()
    state = _read_state(out, mode)
    (out / SECTIONS_DIR).mkdir(parents=True, exist_ok=True)
    (out / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")  # from now on a rerun resumes here
    _clear_stale(out)
    inputs = {s.name: section_settings(settings, s) for s in sections}
    folders = {s.name: section_folder(out, s) for s in sections}
    finished = {s.name for s in sections if not force and is_finished(folders[s.name], inputs[s.name])}
    started = time.perf_counter()
    if mode == "independent":
        todo = [s for s in sections if s.name not in finished]
        if finished:
            logger.info("%d of %d sections are finished already; running the other %d", len(finished), len(sections), len(todo))
        futures = {s.name: client.submit(_task_independent, s, inputs[s.name], str(folders[s.name]), key=f"senca-section-{s.name}-{time.time_ns()}",
                                         pure=False) for s in todo}
        metrics, errors = _collect(futures, "sections", progress)
    else:
        metrics, errors = _run_joint(sections, settings, inputs, folders, finished, state, client, progress)
        if metrics:  # a new joint model: these are the sections it spans
            state["joint_sections"] = sorted(metrics)
    seconds = time.perf_counter() - started
    done = [s for s in sections if s.name not in errors and (s.name in metrics or s.name in finished)]
    summaries, summary_errors = _collect(
        {s.name: client.submit(_task_summary, s.name, str(folders[s.name]), settings.seed, settings.clustering.refine,
                               key=f"senca-summary-{s.name}-{time.time_ns()}", pure=False) for s in done},
        "cohort report", progress)
    errors.update(summary_errors)
    status = pd.DataFrame([{
        "section": s.name,
        "status": "failed" if s.name in errors else ("done" if s.name in metrics else "kept"),
        "error": errors.get(s.name, ""),
        "seconds": round(metrics[s.name]["seconds"]["total_s"], 1) if s.name in metrics and "seconds" in metrics[s.name] else None,
        "group": s.group or "", "patient": s.patient or "",
    } for s in sections])
    (out / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")
    scores = write_cohort_report(out, sections, [summaries[s.name] for s in sections if s.name in summaries], status, mode,
                                 dump_toml(settings.to_dict()), wall_seconds=seconds)
    logger.info("cohort: %d sections finished, %d failed; report in %s", int((status["status"] != "failed").sum()),
                int((status["status"] == "failed").sum()), out)
    return CohortResult(out=out, status=status, scores=scores)


def _run_joint(sections, settings, inputs, folders, finished, state, client, progress) -> tuple[dict, dict]:
    """The joint mode: read every section (tasks), then one task trains on all that could be read.

    When the sections that can be read are exactly those of the finished joint run, nothing
    is trained again; otherwise the joint model is trained anew on all of them.
    """
    names = [s.name for s in sections]
    if set(names) == finished and sorted(names) == sorted(state.get("joint_sections", [])):
        logger.info("all %d sections are finished in one joint run already", len(names))
        return {}, {}
    reads = {s.name: client.submit(_task_read, inputs[s.name], key=f"senca-read-{s.name}-{time.time_ns()}", pure=False)
             for s in sections}
    try:
        readable, errors = _collect(reads, "reading sections", progress, release=False)
        ok = [n for n in names if n in readable]
        if not ok:
            return {}, errors
        if set(ok) <= finished and sorted(ok) == sorted(state.get("joint_sections", [])):
            logger.info("the %d readable sections are finished in one joint run already", len(ok))
            return {}, errors
        joint = client.submit(_task_joint, {n: reads[n] for n in ok}, settings, {n: inputs[n] for n in ok},
                              {n: str(folders[n]) for n in ok}, key=f"senca-joint-{time.time_ns()}", pure=False)
        metrics, joint_errors = _collect({"joint": joint}, "joint model", progress)
    finally:
        client.cancel(list(reads.values()))
    if joint_errors:
        return {}, {**errors, **{n: joint_errors["joint"] for n in ok}}
    return metrics["joint"], errors


def local_client(workers: int = 2, memory_limit: str = "auto", scheduler: str | None = None):
    """A ``distributed.Client``: of the cluster at ``scheduler``, else of a new ``LocalCluster``.

    The local cluster has ``workers`` processes of one thread each (a section's training is
    single-threaded; processes keep sections from sharing the interpreter) and
    ``memory_limit`` per worker (``"auto"``: the machine's memory split evenly; Dask pauses
    and then restarts a worker that goes beyond it).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except OSError as err:
            raise SencaInputError(f"--scheduler {scheduler}: cannot reach a Dask scheduler there ({err})") from err
    if workers < 1:
        raise SencaInputError(f"--workers {workers}: expected at least 1")
    import dask

    # One section per worker at a time, none queued behind it: a worker that dies takes only
    # the section it was running with it. Dask's nanny starts workers with
    # MALLOC_TRIM_THRESHOLD_=65536, which fixes glibc's mmap threshold at 128 KiB and hands freed
    # memory straight back: every tensor of a training step is then mapped and faulted in anew,
    # and half the worker's CPU time went to the kernel. Unset, the worker allocates as
    # `senca run` does (benchmarks/cohort.md).
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=":0")
    limit = next(iter(cluster.scheduler_info["workers"].values()))["memory_limit"]
    logger.info("local Dask cluster: %d worker processes, 1 thread and %.1f GiB memory each", workers, limit / 2**30)
    return Client(cluster)
