"""The ``senca`` command: ``senca run`` on a real section, ``senca cohort`` on many, ``senca demo`` on simulated tissue.

Exit codes: 0 success, 2 bad usage or bad input (one clear line), 1 internal error, 3 a cohort
finished with some sections failed (named in its report; the others are finished).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from senca import __version__
from senca._process import WORKER_MODULES, signal_handler, start_worker_server, usable_cores, workers_may_start
from senca.errors import SencaInputError

logger = logging.getLogger("senca")

ABLATIONS = {
    "full": {},
    "st-only": {"use_image": False},
    "no-graph": {"use_graph": False},
    "no-cross-attention": {"cross_attention": False},
    "unshared": {"shared_encoder": False},
    "single-level": {"hierarchical": False},
    "vanilla-contrastive": {"vanilla_contrastive": True},
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"senca: error: {message} (see 'senca {self.prog.split()[-1]} --help')\n" if " " in self.prog
                  else f"senca: error: {message}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist or be empty, unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing output folder (only once the new outputs are complete)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0); the same seed on CPU gives identical results")
    parser.add_argument("--device", default=None, help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N' (default auto)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="total training epochs over the three stages, split in the default proportions "
                             "(default: the model's schedule; 60 for the demo)")
    parser.add_argument("--restarts", type=int, default=None,
                        help="train this many times from different seeds and report the consensus of their regions: "
                             "steadier regions for N times the run time (default 3; 1 for a quick look)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="train up to this many restarts at once, each in its own process: the same regions "
                             "sooner on a machine with free cores, at the memory of one run per process "
                             "(default: one per free core, or one per restart where that keeps every core busy; "
                             "CPU only)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="senca", description="Find tissue regions by fusing spatial transcriptomics with the H&E image (SENCA-st).")
    parser.add_argument("--version", action="version", version=f"senca {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="find regions in a section", description=(
        "Run senca on one section: a HER2ST-layout folder (with --sample), a Space Ranger folder (or its run folder "
        "or .h5 file), an .h5ad file or a SpatialData .zarr store. "
        "Settings come from the defaults, then --config, then the flags."))
    run.add_argument("input", type=Path, nargs="?", default=None,
                     help="HER2ST-layout folder, Space Ranger output folder, .h5ad file or SpatialData .zarr store "
                          "(default: [input] path of --config)")
    _add_common(run)
    run.add_argument("--format", choices=["her2st", "visium", "h5ad", "spatialdata"], default=None, help="input format (default: detected)")
    run.add_argument("--sample", default=None, help="section of a HER2ST-layout folder, e.g. A1")
    run.add_argument("--image", type=Path, default=None, help="H&E image of a legacy ST section")
    run.add_argument("--image-scale", type=float, default=None,
                     help="image pixels per spot-coordinate pixel (HER2ST 2000 px display images: 0.28761); required with --image")
    run.add_argument("--labels", type=Path, default=None,
                     help="table of spot id and label (TSV or CSV with a header) to score against; "
                          "a HER2ST folder's own label file is found without it")
    run.add_argument("--k", type=int, default=None,
                     help="number of regions (default: the number of reference labels other than 'undetermined', else chosen "
                          "by the elbow of the BIC curve over 2-12 among k whose every region is supported by enough spots, drawn in "
                          "k_selection.png)")
    run.add_argument("--cluster-method", choices=["gmm", "kmeans", "leiden"], default=None, help="clustering of the embedding (default gmm)")
    run.add_argument("--no-refine", action="store_true", help="skip the spatial majority-vote refinement of regions")
    run.add_argument("--patch-size", type=int, default=None, help="H&E patch side in pixels after resizing (default 64)")
    run.add_argument("--patch-spots", type=float, default=None, help="H&E patch side in spot diameters (default 2.0)")
    run.add_argument("--image-weights", type=Path, default=None, help="torchvision-format ResNet weight file (default: random init)")
    run.add_argument("--image-arch", choices=["resnet18", "resnet50"], default=None, help="image backbone (default resnet18)")
    run.add_argument("--image-features", default=None,
                     help="precomputed per-spot image features (.npy, spots x features, or an obsm key of the .h5ad) instead of the ResNet")
    run.add_argument("--ablation", choices=sorted(ABLATIONS), default="full", help="run an ablation of the model (default full)")
    run.add_argument("--config", type=Path, default=None, help="TOML file of settings (as the config.toml senca writes); flags override it")
    run.add_argument("--save-model", action="store_true",
                     help="also save the trained model with its section in OUT/model (senca.SENCA.load(OUT/'model') reads it)")

    cohort = commands.add_parser("cohort", help="find regions in many sections, with ids that agree across them", description=(
        "Run senca on every section of a manifest (TOML [[section]] tables or CSV: path, name, sample, format, image, "
        "image_scale, labels, group, patient) as Dask tasks, and write one folder per section and a cohort report. "
        "Rerunning the same command resumes: finished sections are kept, failed ones retried."))
    cohort.add_argument("manifest", type=Path, help="cohort manifest (.toml or .csv)")
    _add_common(cohort)
    cohort.add_argument("--mode", choices=["joint", "independent"], default="independent",
                        help="joint: one model over all sections, ids agree by construction; independent: one model per "
                             "section, regions matched across sections by expression (default independent)")
    cohort.add_argument("--scheduler", default=None,
                        help="address of a running Dask scheduler (e.g. tcp://host:8786, from dask-jobqueue); default: a local cluster")
    cohort.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster, one section each at a time (default 2)")
    cohort.add_argument("--memory-limit", default="auto",
                        help="memory per local worker, e.g. 8GiB (default auto: the machine's memory split evenly)")
    cohort.add_argument("--k", type=int, default=None,
                        help="number of regions (default: the number of reference labels other than 'undetermined', else chosen by BIC)")
    cohort.add_argument("--config", type=Path, default=None, help="TOML file of settings (as the config.toml senca writes); flags override it")

    demo = commands.add_parser("demo", help="run the whole pipeline on built-in simulated tissue", description=(
        "Simulate a section with known regions (NB counts with dropout, H&E-like image), run senca with ST only, "
        "image only and both, and print the ARI of each against the truth."))
    _add_common(demo)
    demo.add_argument("--n-spots", type=int, default=1000, help="spots in the simulated section (default 1000)")
    demo.add_argument("--grid", choices=["hex", "square"], default="hex", help="spot grid (default hex, like Visium)")
    return parser


def configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs (partial outputs, workers)."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _start_restart_server(args: argparse.Namespace) -> None:
    # Restart processes fork from a server that imports senca (senca._process.worker_context);
    # started before this process imports senca, it does so on another core at the same time.
    if (args.command in ("run", "demo") and args.jobs != 1 and args.restarts != 1
            and args.device in (None, "auto", "cpu") and usable_cores() > 1 and workers_may_start()):
        start_worker_server(WORKER_MODULES)


@contextlib.contextmanager
def _imports_uncollected(own_process: bool) -> Iterator[None]:
    # What torch, TorchDynamo and scanpy create on import lives until the process ends, yet the
    # cyclic collector walked it eight times during the import (about 1 of 5 CPU seconds);
    # frozen, the later collections skip it too. Only in the executable's own process: frozen
    # objects are never collected, which a caller of main() (a test, a notebook) would not expect.
    if not own_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def executable() -> int:
    """The ``senca`` executable: :func:`main` in a process of its own, which it ends quickly."""
    code = main(own_process=True)
    # Left to the collections at interpreter shutdown, the objects of the imported libraries
    # took about a second to free on every run; the process ends, so they are left in place.
    gc.freeze()
    return code


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Entry point of the ``senca`` command; ``own_process`` when nothing else runs in this
    interpreter (:func:`executable`), so the imported libraries may be kept from the collector."""
    args = build_parser().parse_args(argv)
    configure_logging(args.quiet)
    try:
        with signal_handler(signal.SIGTERM, _terminate):
            _start_restart_server(args)
            # Imported here so that --help and usage errors answer instantly.
            with _imports_uncollected(own_process):
                from senca.cli.commands import cohort, demo, run
            return {"run": run, "cohort": cohort, "demo": demo}[args.command](args)
    except SencaInputError as err:
        if args.debug:
            raise
        print(f"senca: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"senca: {'terminated' if isinstance(err, Terminated) else 'interrupted'}; no outputs were written",
              file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except Exception as err:  # noqa: BLE001 - the promise is exit code 1 and one line
        if args.debug:
            raise
        print(f"senca: internal error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(executable())
