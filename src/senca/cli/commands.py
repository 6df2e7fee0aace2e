"""What ``senca run``, ``senca cohort`` and ``senca demo`` do, once the arguments are parsed."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from senca.cli.main import ABLATIONS
from senca.errors import SencaInputError
from senca.evaluation import ari_nmi
from senca.outputs import check_output_dir, write_outputs
from senca.pipeline import LABEL_KEY, image_only_regions, load_section, run_section, timed
from senca.settings import RunSettings, read_toml

logger = logging.getLogger(__name__)

DEMO_EPOCHS = 60


def scale_epochs(settings: RunSettings, total: int) -> None:
    """Set the three stages' epochs to sum to ``total``, keeping their proportions."""
    if total < 1:
        raise SencaInputError(f"--epochs {total}: expected a positive number of epochs")
    model = settings.model
    stages = [model.epochs_warmup, model.epochs_shared, model.epochs_regions]
    scaled = [round(total * s / max(sum(stages), 1)) for s in stages]
    scaled[1] += total - sum(scaled)
    settings.model = model.replace(epochs_warmup=scaled[0], epochs_shared=scaled[1], epochs_regions=scaled[2])


def _apply_common(settings: RunSettings, args: argparse.Namespace) -> None:
    if args.seed is not None:
        settings.seed = args.seed
    if args.device is not None:
        settings.device = args.device
    if args.epochs is not None:
        scale_epochs(settings, args.epochs)
    if args.restarts is not None:  # checked by run_section, as a config file's value is
        settings.clustering = dataclasses.replace(settings.clustering, restarts=args.restarts)
    if args.jobs is not None:  # checked by run_section too
        settings.clustering = dataclasses.replace(settings.clustering, restart_jobs=args.jobs)


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Defaults, then the ``--config`` file, then the flags."""
    settings = RunSettings.from_dict(read_toml(args.config), str(args.config)) if args.config else RunSettings()
    source = settings.input
    settings.input = dataclasses.replace(
        source,
        path=str(args.input) if args.input is not None else source.path,
        format=args.format or source.format,
        sample=args.sample or source.sample,
        image=str(args.image) if args.image else source.image,
        image_scale=args.image_scale if args.image_scale is not None else source.image_scale,
        labels=str(args.labels) if args.labels else source.labels,
    )
    image = settings.image
    settings.image = dataclasses.replace(
        image,
        patch_px=args.patch_size or image.patch_px,
        patch_spots=args.patch_spots or image.patch_spots,
        features=args.image_features or image.features,
    )
    clustering = settings.clustering
    settings.clustering = dataclasses.replace(
        clustering,
        method=args.cluster_method or clustering.method,
        k=args.k if args.k is not None else clustering.k,
        refine=clustering.refine and not args.no_refine,
    )
    model_changes = dict(ABLATIONS[args.ablation])
    if args.image_weights:
        model_changes["image_weights"] = str(args.image_weights)
    if args.image_arch:
        model_changes["image_backbone"] = args.image_arch
    settings.model = settings.model.replace(**model_changes)
    _apply_common(settings, args)
    return settings.validate(f"{args.config} with the flags" if args.config else "flags")


def _summary(metrics: dict, out: Path) -> str:
    parts = [f"{metrics['n_spots']} spots", f"{metrics['n_regions']} regions"]
    if "ari" in metrics:
        parts.append(f"ARI {metrics['ari']:.3f}, NMI {metrics['nmi']:.3f} vs labels")
    return f"senca: {', '.join(parts)}; outputs in {out} (open {out / 'report.html'})"


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars only for a person watching: not with --quiet, not into a file or pipe."""
    return not args.quiet and sys.stderr.isatty()


def run(args: argparse.Namespace) -> int:
    """``senca run``."""
    started = time.perf_counter()
    settings = settings_from_args(args)
    if not settings.input.path:
        raise SencaInputError("no input given: name it as the first argument of 'senca run' or as path in the "
                              "[input] table of --config")
    source = settings.input
    inputs = [source.path, source.image, source.labels, args.config, settings.image.features, settings.model.image_weights]
    check_output_dir(args.out, args.force, inputs)  # before hours of work, not after
    timings: dict[str, float] = {}
    with timed("reading", timings):
        adata = load_section(settings)
    result = run_section(adata, settings, progress=_progress(args))
    result.started = started
    result.metrics["seconds"] = {**timings, **result.metrics["seconds"]}
    title = settings.input.sample or Path(settings.input.path).name
    write_outputs(result, settings, args.out, title=title, force=args.force, save_model=args.save_model)
    print(_summary(result.metrics, args.out))
    return 0


def cohort(args: argparse.Namespace) -> int:
    """``senca cohort``: exit 0 when every section finished, 3 when some failed."""
    from senca.cohort import local_client, read_manifest, run_cohort

    settings = RunSettings.from_dict(read_toml(args.config), str(args.config)) if args.config else RunSettings()
    if args.jobs is not None and args.jobs > 1:
        raise SencaInputError("--jobs: cohort sections train in Dask workers, which run no further processes; use --workers")
    _apply_common(settings, args)
    if args.k is not None:
        if args.k < 2:
            raise SencaInputError(f"--k {args.k}: expected at least 2 regions")
        settings.clustering = dataclasses.replace(settings.clustering, k=args.k)
    sections = read_manifest(args.manifest)
    client = local_client(args.workers, args.memory_limit, args.scheduler)
    try:
        result = run_cohort(sections, args.out, settings, client, mode=args.mode, force=args.force, progress=not args.quiet)
    finally:
        cluster = client.cluster
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        except (TimeoutError, OSError) as err:  # the outputs are written; a slow shutdown must not fail the run
            logger.warning("the local Dask cluster did not shut down cleanly (%s)", err)
    finished = len(sections) - len(result.failed)
    print(f"senca cohort: {finished} of {len(sections)} sections finished"
          + (f", {len(result.failed)} failed ({', '.join(result.failed)}; rerun the same command to retry them)" if result.failed else "")
          + f"; open {args.out / 'report.html'}")
    return 3 if result.failed else 0


def demo(args: argparse.Namespace) -> int:
    """``senca demo``: simulate, run senca with ST + H&E and with ST only, score the image branch alone."""
    from senca.simulation import simulate_tissue

    settings = RunSettings()
    # 32 px is the simulated image's own resolution over two spot diameters: no upsampling.
    settings.image = dataclasses.replace(settings.image, patch_px=32)
    if args.epochs is None:
        args.epochs = DEMO_EPOCHS  # a short schedule so the demo answers in minutes on a laptop CPU
    _apply_common(settings, args)
    settings.validate("flags")
    check_output_dir(args.out, args.force)
    started = time.perf_counter()
    progress = _progress(args)
    adata = simulate_tissue(n_spots=args.n_spots, grid=args.grid, seed=settings.seed)
    logger.info("demo: training senca on ST only")
    st_only = run_section(adata.copy(), dataclasses.replace(settings, model=settings.model.replace(use_image=False)),
                          progress=progress)
    logger.info("demo: clustering the image branch alone")
    image_regions = image_only_regions(adata.copy(), settings, progress=progress)
    image_only = ari_nmi(adata.obs[LABEL_KEY].reindex(image_regions.index), image_regions)
    logger.info("demo: training senca on ST + H&E")
    result = run_section(adata, settings, progress=progress)
    result.started = started  # the demo's wall time counts all three runs
    scores = {
        "ST only": st_only.metrics["ari"],
        "image only": image_only["ari"],
        "senca (ST + H&E)": result.metrics["ari"],
    }
    result.metrics["demo_ari"] = scores
    settings.input.path = "simulated"
    write_outputs(result, settings, args.out, title="simulated tissue", force=args.force)
    width = max(map(len, scores))
    print("ARI against the simulated truth:")
    for name, value in scores.items():
        print(f"  {name:<{width}}  {value:.3f}")
    print(f"outputs in {args.out} (open {args.out / 'report.html'})")
    return 0
