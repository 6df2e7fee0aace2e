"""Wall time and memory of senca's training restarts, one after another or in parallel processes.

    python benchmarks/restart_jobs.py --sections C1 A1 151510 --jobs 1 2 3

Each (section, jobs) runs ``senca.pipeline.run_section`` at the default settings (seed 0, CPU)
with ``clustering.restart_jobs = jobs`` in a fresh child process, one at a time (with jobs > 1
the child starts the fork server before importing senca, as ``senca run`` does), and the table
goes to ``benchmarks/restart_jobs.md``: wall seconds, the peak resident memory of the run's
process and of its largest restart process, the ARI, and whether the regions equal those of
the first ``jobs`` value (they should: every restart seeds itself).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import platform
import queue as queue_module
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import DATA_ROOT, SECTIONS, load_section  # noqa: E402

logger = logging.getLogger("benchmarks.restart_jobs")
OUT = Path(__file__).resolve().parent / "restart_jobs.md"


def _measure(section_name: str, jobs: int, data_root: str, queue) -> None:
    import dataclasses

    from senca._process import WORKER_MODULES, start_worker_server

    if jobs > 1:  # as senca run does: the server imports senca while this process does
        start_worker_server(WORKER_MODULES)
    from senca.pipeline import run_section
    from senca.settings import RunSettings

    section = next(s for s in SECTIONS if s.name == section_name)
    adata = load_section(section, Path(data_root))
    settings = RunSettings()
    settings.device = "cpu"
    settings.clustering = dataclasses.replace(settings.clustering, restart_jobs=jobs)
    start = time.perf_counter()
    result = run_section(adata, settings, progress=False)
    seconds = time.perf_counter() - start
    queue.put({
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "restart_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if jobs > 1 else None,
        "ari": result.metrics["ari"],
        "regions": result.adata.obs["senca_region"].astype(str).to_numpy(),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=["A1", "151510"], choices=[s.name for s in SECTIONS])
    parser.add_argument("--jobs", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--data-root", default=str(DATA_ROOT))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    context = multiprocessing.get_context("spawn")
    rows = []
    for section in args.sections:
        first = None
        for jobs in args.jobs:
            queue = context.Queue()
            child = context.Process(target=_measure, args=(section, jobs, args.data_root, queue))
            child.start()
            while True:  # a child that dies (e.g. out of memory) sends nothing: do not wait for it forever
                try:
                    run = queue.get(timeout=5)
                    break
                except queue_module.Empty:
                    if not child.is_alive():
                        raise RuntimeError(f"{section} with {jobs} job(s): the run's process died "
                                           f"(exit code {child.exitcode})") from None
            child.join()
            first = run["regions"] if first is None else first
            same = "yes" if np.array_equal(run["regions"], first) else "NO"
            restart_peak = "—" if run["restart_peak_mb"] is None else f"{run['restart_peak_mb']:.0f} MB"
            rows.append(f"| {section} | {jobs} | {run['seconds']:.0f} s | {run['peak_mb']:.0f} MB | {restart_peak} | "
                        f"{run['ari']:.3f} | {same} |")
            logger.info("%s, %d job(s): %.0f s, ARI %.3f, regions as with %d job(s): %s",
                        section, jobs, run["seconds"], run["ari"], args.jobs[0], same)
    lines = [
        "# Training restarts in parallel processes",
        "",
        "Written by:",
        "",
        "```",
        f"python benchmarks/restart_jobs.py --sections {' '.join(args.sections)} --jobs {' '.join(map(str, args.jobs))}",
        "```",
        "",
        f"senca at its defaults (three restarts, seed 0, CPU) with `clustering.restart_jobs` = jobs; "
        f"{platform.machine()}, {multiprocessing.cpu_count()} CPU cores, one run at a time. Peak memory: "
        "the run's own process, and the largest restart process (up to `jobs` of them run beside it).",
        "",
        f"| section | jobs | wall time | peak memory | restart process peak | ARI | regions as with {args.jobs[0]} job(s) |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]
    tmp = args.out.with_suffix(".md.partial")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
