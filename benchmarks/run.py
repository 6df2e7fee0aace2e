"""Benchmark of senca against baselines and published peers on the labelled sections.

    python benchmarks/run.py            # the full benchmark -> benchmarks/results.json, RESULTS.md, figures
    python benchmarks/run.py --quick    # one seed, a tenth of the epochs -> benchmarks/cache/check/

Every (method, section, seed) runs in its own child process (``run.py --one ...``) that
reports ARI, NMI, wall seconds, peak memory and the region of every spot. Finished runs are
cached in ``benchmarks/cache/runs/`` under a key made of the method's hyper-parameters and
the source files it depends on, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# Run as a script (python benchmarks/run.py): make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import DATA_ROOT, REPO, SECTIONS, Section, get_section  # noqa: E402

logger = logging.getLogger("benchmarks")

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
DEFAULT_SEEDS = (0, 1, 2)
REGION_COLUMNS = ("pca-gmm", "pca-gmm-smooth", "leiden", "spagcn", "stagate", "graphst", "banksy", "senca")


@dataclass(frozen=True)
class Job:
    """One (method, section, seed) run and where its result is cached."""

    method: str
    section: Section
    seed: int
    quick: bool
    key: str
    cache: Path = CACHE / "runs"

    @property
    def cache_path(self) -> Path:
        tag = "quick" if self.quick else "full"
        folder = self.cache / self.section.dataset / self.section.name / self.method
        return folder / f"seed{self.seed}-{tag}-{self.key}.json"


def fingerprint(value: object, files: Iterable[Path] = ()) -> str:
    """Short hash of a JSON-able value and the contents of ``files`` (the cache key of a run)."""
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode())
    for path in sorted(set(files)):
        digest.update(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_key(method, section: Section, seed: int, quick: bool) -> str:
    """Cache key: method, hyper-parameters, section, seed, quick and the method's source files."""
    spec = {"method": method.name, "params": method.params(quick), "section": section.name, "seed": seed,
            "quick": quick}
    return fingerprint(spec, method.source_files())


# --- the child: one run ------------------------------------------------------------------


def run_one(method_name: str, section_name: str, seed: int, quick: bool, data_root: Path) -> dict:
    """Run one method on one section with one seed in this process; return its record."""
    from benchmarks.methods import METHODS
    from benchmarks.protocol import load_section, n_clusters, score_prediction

    section = get_section(section_name)
    method = METHODS[method_name]
    adata = load_section(section, data_root)
    k = n_clusters(adata)
    start = time.perf_counter()
    regions = method.run(adata, section, k, seed, quick)
    seconds = time.perf_counter() - start
    scores = score_prediction(adata, regions)
    return {
        "method": method_name, "dataset": section.dataset, "section": section_name, "seed": seed, "quick": quick,
        "status": "ok", "k": k, "ari": scores["ari"], "nmi": scores["nmi"], "n_scored": scores["n_scored"],
        "n_regions": scores["n_regions"], "seconds": round(seconds, 3),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "spots": regions.index.astype(str).tolist(), "regions": regions.astype(str).tolist(),
    }


def child_main(args: argparse.Namespace) -> int:
    """``run.py --one METHOD SECTION SEED --result FILE``: write the record of one run as JSON."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    method, section, seed = args.one
    try:
        record = run_one(method, section, int(seed), args.quick, args.data_root)
    except Exception as err:  # noqa: BLE001 - the parent reports it and carries on with the other runs
        traceback.print_exc()
        record = {"method": method, "section": section, "dataset": get_section(section).dataset, "seed": int(seed),
                  "status": "failed", "error": f"{type(err).__name__}: {err}"}
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(args.result)
    return 0 if record["status"] == "ok" else 1


# --- the parent: plan, run, report --------------------------------------------------------


def _tail(path: Path, n: int = 5) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return " | ".join(lines[-n:]) or "no output"


def execute(job: Job, data_root: Path, threads: int | None, timeout: float | None) -> dict:
    """Run ``job`` in a child process; cache and return its record (a failure is not cached)."""
    path = job.cache_path
    path.parent.mkdir(parents=True, exist_ok=True)
    result, log = path.with_suffix(".result"), path.with_suffix(".log")
    command = [sys.executable, str(Path(__file__).resolve()), "--one", job.method, job.section.name, str(job.seed),
               "--result", str(result), "--data-root", str(data_root)] + (["--quick"] if job.quick else [])
    env = dict(os.environ)
    if threads:
        env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    base = {"method": job.method, "dataset": job.section.dataset, "section": job.section.name, "seed": job.seed}
    with log.open("w") as handle:
        try:
            subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return base | {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
    if not result.exists():
        return base | {"status": "failed", "error": f"child process died ({_tail(log)}); log: {log}"}
    record = json.loads(result.read_text())
    result.unlink()
    if record["status"] == "ok":
        record["key"] = job.key
        path.write_text(json.dumps(record))
    else:
        record["error"] = f"{record.get('error')} (log: {log})"
    return record


def plan(methods: list[str], sections: list[Section], seeds: list[int], quick: bool, cache: Path = CACHE / "runs",
         skip: frozenset[tuple[str, str]] = frozenset()):
    """Jobs to run, plus the methods that cannot run here and the (method, section) pairs that do not apply.

    Jobs come seed by seed, so that an interrupted benchmark has whole seeds to report, and within
    a seed senca first. ``(method, section)`` pairs in ``skip`` are not planned (reused entries).
    """
    from benchmarks.methods import METHODS

    jobs, not_run, not_applicable = [], {}, {}
    for name in methods:
        method = METHODS[name]
        reason = method.unavailable()
        if reason:
            not_run[name] = reason
            logger.warning("%s: not run, %s", name, reason)
            continue
        for section in sections:
            if (name, section.name) in skip:
                continue
            if method.needs_image and not section.image:
                not_applicable.setdefault(name, []).append(section.name)
                continue
            jobs += [Job(name, section, seed, quick, run_key(method, section, seed, quick), cache) for seed in seeds]
    return sorted(jobs, key=lambda job: (seeds.index(job.seed), job.method != "senca")), not_run, not_applicable


def run_jobs(jobs: list[Job], data_root: Path, n_jobs: int, force: bool, timeout: float | None) -> list[dict]:
    """Records of every job: from the cache when there (unless ``force``), else run in children."""
    from tqdm.auto import tqdm

    records, todo = [], []
    for job in jobs:
        if job.cache_path.exists() and not force:
            records.append(json.loads(job.cache_path.read_text()))
        else:
            todo.append(job)
    logger.info("%d run(s) cached, %d to run with %d job(s) in parallel", len(records), len(todo), n_jobs)
    threads = max((os.cpu_count() or 1) // n_jobs, 1) if n_jobs > 1 else None
    with ThreadPoolExecutor(max_workers=n_jobs) as pool, tqdm(total=len(todo), desc="benchmark runs") as bar:
        futures = {pool.submit(execute, job, data_root, threads, timeout): job for job in todo}
        for future in as_completed(futures):
            job, record = futures[future], future.result()
            records.append(record)
            bar.update()
            if record["status"] == "ok":
                logger.info("%s %s seed %d: ARI %.3f, NMI %.3f, %.1f s, %.0f MB", job.method, job.section.name,
                            job.seed, record["ari"], record["nmi"], record["seconds"], record["peak_mb"])
            else:
                logger.error("%s %s seed %d failed: %s", job.method, job.section.name, job.seed, record["error"])
    return records


def draw_figures(records: list[dict], sections: list[Section], seed: int, out: Path, data_root: Path) -> list[str]:
    """Region-map grid of every section and ablation grid of A1, from the runs of ``seed``."""
    from benchmarks.figures import SectionMaps, draw_grid
    from benchmarks.methods import ABLATIONS, REFERENCE
    from benchmarks.protocol import LABEL_KEY, load_section

    by_section: dict[str, dict[str, dict]] = {}
    for record in records:
        if record["status"] == "ok" and record["seed"] == seed:
            by_section.setdefault(record["section"], {})[record["method"]] = record
    maps = []
    for section in sections:
        if section.name not in by_section:
            continue
        adata = load_section(section, data_root)
        runs = by_section[section.name]
        library = next(iter(adata.uns.get("spatial", {}).values()), {})
        image = None
        if "hires" in library.get("images", {}):
            image = (library["images"]["hires"], library["scalefactors"]["tissue_hires_scalef"])
        maps.append(SectionMaps(
            section.name, adata.obsm["spatial"], adata.obs[LABEL_KEY].astype(object),
            regions={m: pd.Series(r["regions"], index=r["spots"]) for m, r in runs.items()},
            ari={m: r["ari"] for m, r in runs.items()}, image=image,
            group="HER2ST" if section.dataset == "her2st" else f"DLPFC {section.name}"))
    names = []
    present = {m for runs in by_section.values() for m in runs}
    if maps:
        columns = [m for m in REGION_COLUMNS if m in present]
        draw_grid(maps, columns, out / "regions.png")
        names.append("regions.png")
    ablation_rows = [m for m in maps if m.name == "A1"]
    ablations = [m for m in (REFERENCE, *ABLATIONS) if m in present]
    if ablation_rows and len(ablations) > 1:
        draw_grid(ablation_rows, ablations, out / "ablation_A1.png", panel_in=2.6, with_image=True)
        names.append("ablation_A1.png")
    return names


def reused_results(previous: Path, methods: list[str], sections: list[Section]) -> dict:
    """The entries of ``methods`` on ``sections`` in a previous ``results.json`` (schema of :func:`aggregate`)."""
    if not previous.is_file():
        raise SystemExit(f"--reuse: {previous} not found (expected a results.json written by this script)")
    data = json.loads(previous.read_text())
    names = {(s.dataset, s.name) for s in sections}
    return {dataset: {m: {sec: v for sec, v in by_method.get(m, {}).items() if (dataset, sec) in names}
                      for m in methods if by_method.get(m)}
            for dataset, by_method in data.items()}


def merge_results(results: dict, reused: dict) -> dict:
    """``results`` with the reused entries added (a method run now keeps its own)."""
    for dataset, by_method in reused.items():
        for method, by_section in by_method.items():
            for section, values in by_section.items():
                results.setdefault(dataset, {}).setdefault(method, {}).setdefault(section, values)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.methods import METHODS

    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fast check: seed 0 only and a tenth of every method's training epochs "
                             "(outputs to benchmarks/cache/check/ unless --out)")
    parser.add_argument("--sections", nargs="+", metavar="SECTION", choices=[s.name for s in SECTIONS],
                        help=f"sections to run (default: all {len(SECTIONS)})")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", choices=list(METHODS),
                        help=f"methods to run (default: all): {', '.join(METHODS)}")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel (default 1; each gets cores/jobs threads)")
    parser.add_argument("--force", action="store_true", help="ignore cached runs and run everything again")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds after which one run is stopped and counted as failed")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json, RESULTS.md and the figures (default: benchmarks/ for the "
                             "full benchmark, benchmarks/cache/check/ for --quick or a subset)")
    parser.add_argument("--cache", type=Path, default=CACHE / "runs",
                        help="folder of the cached runs (default benchmarks/cache/runs)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help=f"the shared data folder (default {DATA_ROOT})")
    parser.add_argument("--reuse", nargs="+", metavar="METHOD", default=[], choices=list(METHODS),
                        help="copy these methods' per-section results from --previous where it has them and run "
                             "only the other sections (for peers that take hours here; RESULTS.md lists what "
                             "was copied)")
    parser.add_argument("--previous", type=Path, default=HERE / "results.json",
                        help="results.json that --reuse copies from (default benchmarks/results.json)")
    parser.add_argument("--one", nargs=3, metavar=("METHOD", "SECTION", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point: run what is not cached, then write results.json, RESULTS.md and the figures."""
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from benchmarks.methods import METHODS, REFERENCE
    from benchmarks.protocol import section_paths
    from benchmarks.report import ReportContext, aggregate, render_markdown, section_info, write_results_json

    sections = [s for s in SECTIONS if not args.sections or s.name in args.sections]
    methods = [m for m in METHODS if m in args.methods] if args.methods else list(METHODS)
    seeds = args.seeds or ([0] if args.quick else list(DEFAULT_SEEDS))
    missing = [p for s in sections for p in section_paths(s, args.data_root) if not p.exists()]
    if missing:
        logger.error("data not found: %s (expected the shared data folder, see --data-root)",
                     ", ".join(map(str, missing)))
        return 2
    full = not args.quick and not args.sections and not args.methods and not args.seeds
    out = args.out or (HERE if full else CACHE / "check")
    out.mkdir(parents=True, exist_ok=True)

    reused = reused_results(args.previous, args.reuse, sections) if args.reuse else {}
    reused_pairs = frozenset((m, sec) for by_method in reused.values() for m, by_section in by_method.items()
                             for sec in by_section)
    jobs, not_run, not_applicable = plan(methods, sections, seeds, args.quick, args.cache, reused_pairs)
    records = run_jobs(jobs, args.data_root, args.jobs, args.force, args.timeout)
    results = merge_results(aggregate(records), reused)
    write_results_json(results, out / "results.json")
    figures = draw_figures(records, sections, min(seeds), out, args.data_root)
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in given)
    params = {}
    for name in methods:
        if name not in not_run:
            params[name] = METHODS[name].params(args.quick)
            if METHODS[name].kind == "ablation":  # the rest is the reference's settings
                params[name] = {k: v for k, v in params[name].items() if k != "settings"}
                params[name]["settings"] = f"as {REFERENCE}"
    ctx = ReportContext(command=command, quick=args.quick, seeds=seeds, methods=methods,
                        sections=[s.name for s in sections], reference=REFERENCE, params=params,
                        not_run=not_run, not_applicable=not_applicable,
                        failed=[r for r in records if r["status"] != "ok"], figures=figures,
                        reused={m: sorted({sec for by_method in reused.values() for sec in by_method.get(m, {})})
                                for m in args.reuse},
                        section_info=section_info(records))
    (out / "RESULTS.md").write_text(render_markdown(results, ctx))
    logger.info("wrote %s, %s and %d figure(s)", out / "results.json", out / "RESULTS.md", len(figures))
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
