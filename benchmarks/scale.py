"""Wall time and memory of every phase of a senca run against the number of spots.

    python benchmarks/scale.py                                    # 5k, 20k, 100k, 1M; 20k with an image
    python benchmarks/scale.py --sizes 5000 20000 --epochs 20     # a quick check

Each size is simulated (``senca.simulation.simulate_tissue`` on a square grid of contiguous
bins, Visium HD-like; expression alone, and with its H&E-like image for the sizes in
``--image-sizes``) and run through ``senca.pipeline.run_section`` and
``senca.outputs.write_outputs`` at the default settings (``--epochs`` shortens the training
schedule, as ``senca run --epochs`` does), each in a fresh child process, one at a time. Per
phase: wall seconds and the peak resident memory during the phase (sampled every 20 ms), and
the process's peak (``ru_maxrss``); the CPU seconds of the process in each phase (all its
threads); the 1-minute load average of the machine at the start, the end and on average
(sampled every 5 s), since wall times taken while other jobs hold the cores are upper bounds;
the model and clustering settings the run used; and the run's log. The log-log slope of wall
time, CPU time and memory against spots from 20k up (the growth exponent: 1 is linear), overall
and per phase, goes to ``benchmarks/scale.json`` and ``benchmarks/SCALE.md``. With ``--merge``
the runs are added to those already in ``--out`` (a run of the same size and image replaces the
old one), so sizes can be measured one at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = (5_000, 20_000, 100_000, 1_000_000)
IMAGE_SIZES = (20_000,)
PHASES = ("simulate", "preprocess", "patches", "train", "cluster", "markers", "umap", "plots", "write")
SLOPE_FROM = 20_000
_PAGE = resource.getpagesize()


class _Sampler(threading.Thread):
    """Every ``interval`` seconds: ``(time, resident MB, process CPU seconds)`` of this process;
    every ``load_interval`` seconds the machine's 1-minute load average."""

    def __init__(self, interval: float = 0.02, load_interval: float = 5.0):
        super().__init__(daemon=True)
        self.interval, self.load_interval = interval, load_interval
        self.samples: list[tuple[float, float, float]] = []
        self.loads: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_load = 0.0
        with open("/proc/self/statm") as statm:
            while not self._stop_event.is_set():
                statm.seek(0)
                now = time.perf_counter()
                self.samples.append((now, int(statm.read().split()[1]) * _PAGE / 2**20, time.process_time()))
                if now >= next_load:
                    self.loads.append(os.getloadavg()[0])
                    next_load = now + self.load_interval
                time.sleep(self.interval)

    def stop(self) -> list[tuple[float, float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def _phase_stats(samples: list[tuple[float, float, float]], bounds: dict[str, tuple[float, float]]) -> tuple[dict, dict]:
    """Peak resident MB and CPU seconds of each phase, from the samples within its bounds."""
    times = np.array([t for t, _, _ in samples])
    rss = np.array([m for _, m, _ in samples])
    cpu = np.array([c for _, _, c in samples])
    peaks, cpu_seconds = {}, {}
    for phase, (start, end) in bounds.items():
        inside = (times >= start) & (times <= end)
        # A phase shorter than the sampling interval: the sample just after it.
        after = np.searchsorted(times, end).clip(max=len(rss) - 1)
        peaks[phase] = round(float(rss[inside].max() if inside.any() else rss[after]), 1)
        cpu_seconds[phase] = round(float(np.interp(end, times, cpu) - np.interp(start, times, cpu)), 2)
    return peaks, cpu_seconds


def _settings_used(settings) -> dict:
    """The defaults that decide the cost of a run, as it used them."""
    model, clustering = settings.model, settings.clustering
    names = ("hidden_dim", "latent_dim", "gt_layers", "epochs_warmup", "epochs_shared", "epochs_regions",
             "epochs_image", "batch_size", "full_batch_max_spots", "num_threads")
    return {**{name: getattr(model, name) for name in names}, "restarts": clustering.restarts,
            "restart_jobs": clustering.restart_jobs, "n_top_genes": settings.preprocessing.n_top_genes,
            "n_comps": settings.preprocessing.n_comps, "patch_px": settings.image.patch_px}


class _LogLines(logging.Handler):
    """The run's log records, as ``"seconds since start  logger: message"`` lines."""

    def __init__(self, start: float):
        super().__init__(logging.INFO)
        self.start, self.lines = start, []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{time.perf_counter() - self.start:8.1f}  {record.name}: {record.getMessage()}")
        print(self.lines[-1], file=sys.stderr, flush=True)  # the parent shows it as it comes: runs take hours


def run_one(n_spots: int, image: bool, epochs: int | None, seed: int) -> dict:
    """Simulate one section and run senca on it, in this process; every phase timed."""
    import tempfile

    from senca.cli.commands import scale_epochs
    from senca.outputs import write_outputs
    from senca.pipeline import run_section
    from senca.settings import RunSettings
    from senca.simulation import simulate_tissue

    sampler = _Sampler()
    sampler.start()
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    log = _LogLines(start)
    senca_logger = logging.getLogger("senca")
    senca_logger.addHandler(log)
    senca_logger.setLevel(logging.INFO)
    adata = simulate_tissue(n_spots=n_spots, grid="square", seed=seed, image=image)
    simulated = time.perf_counter()
    settings = RunSettings()
    settings.seed = seed
    if epochs is not None:
        scale_epochs(settings, epochs)
    if image:  # patches at the simulated image's own resolution, as `senca demo` does
        settings.image.patch_px = 32
    result = run_section(adata, settings, progress=False)
    finished = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="senca-scale-") as tmp:
        settings.input.path = "simulated"
        write_outputs(result, settings, Path(tmp) / "out", title=f"{n_spots} simulated spots")
        written = time.perf_counter()
        metrics = json.loads((Path(tmp) / "out" / "metrics.json").read_text())
    samples = sampler.stop()
    senca_logger.removeHandler(log)

    seconds = {"simulate": simulated - start}
    ordered = [("preprocess", "preprocess_s"), ("patches", "patches_s"), ("train", "training_s"), ("cluster", "clustering_s"),
               ("markers", "markers_s"), ("umap", "umap_s"), ("plots", "plots_s")]
    for phase, key in ordered:
        if key in metrics["seconds"]:
            seconds[phase] = metrics["seconds"][key]
    # Phase boundaries from the durations, in the order the pipeline runs them.
    bounds, clock = {"simulate": (start, simulated)}, simulated
    for phase, _ in ordered:
        if phase in seconds:
            if phase == "markers":
                clock = finished
            bounds[phase] = (clock, clock + seconds[phase])
            clock += seconds[phase]
    seconds["write"] = (written - finished) - sum(seconds.get(p, 0.0) for p in ("markers", "umap", "plots"))
    bounds["write"] = (clock, written)
    peaks, cpu_seconds = _phase_stats(samples, bounds)
    return {
        "n_spots": n_spots,
        "image": image,
        "epochs": epochs,
        # restart_jobs "auto" trains one restart after another when called from a script, as here.
        "settings": {**_settings_used(settings), "restart_jobs_used": metrics.get("restart_jobs")},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "senca_seconds": round(written - simulated, 2),
        "cpu_seconds": cpu_seconds,
        "senca_cpu_seconds": round(sum(v for k, v in cpu_seconds.items() if k != "simulate"), 2),
        "phase_peak_mb": peaks,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2),
                         "mean": round(float(np.mean(sampler.loads)), 2)},
        "n_regions": metrics["n_regions"],
        "ari": metrics.get("ari"),
        "log": log.lines,
    }


def _child(n_spots: int, image: bool, epochs: int | None, seed: int, timeout: float) -> dict:
    """One run in a fresh process; its log goes on to this process's stderr as it comes."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_spots), str(int(image)), str(seed)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    failed = {"n_spots": n_spots, "image": image, "epochs": epochs}
    tail: list[str] = []
    out: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        def relay() -> None:
            for line in proc.stderr:
                sys.stderr.write(line)
                tail[:] = (tail + [line.rstrip()])[-3:]

        readers = [threading.Thread(target=relay, daemon=True),
                   threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)]
        for reader in readers:
            reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {**failed, "error": f"timed out after {timeout:.0f} s"}
        for reader in readers:
            reader.join()
    if proc.returncode != 0:
        return {**failed, "error": f"exit {proc.returncode}: {' | '.join(tail or [line.rstrip() for line in out[-3:]])}"}
    return json.loads(out[-1])


def _slope(sizes: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(spots); ``None`` with fewer than two positive values."""
    pairs = [(n, v) for n, v in zip(sizes, values) if v is not None and v > 0]
    if len(pairs) < 2:
        return None
    return round(float(np.polyfit(np.log([n for n, _ in pairs]), np.log([v for _, v in pairs]), 1)[0]), 3)


def growth_exponents(runs: list[dict], start: int = SLOPE_FROM) -> dict:
    """Slope of log(wall time), log(CPU time) and log(peak memory) against log(spots), expression-only
    runs from ``start`` up: of the whole run (simulation excluded) and of each phase."""
    ok = sorted((r for r in runs if not r["image"] and "error" not in r and r["n_spots"] >= start), key=lambda r: r["n_spots"])
    sizes = [r["n_spots"] for r in ok]
    phases = [p for p in PHASES if any(p in r["seconds"] for r in ok)]
    return {
        "sizes": sizes,
        "time": _slope(sizes, [r["senca_seconds"] for r in ok]),
        "cpu_time": _slope(sizes, [r.get("senca_cpu_seconds") for r in ok]),
        "memory": _slope(sizes, [r["peak_mb"] for r in ok]),
        "phase_time": {p: _slope(sizes, [r["seconds"].get(p) for r in ok]) for p in phases},
        "phase_cpu_time": {p: _slope(sizes, [r.get("cpu_seconds", {}).get(p) for r in ok]) for p in phases},
        "phase_memory": {p: _slope(sizes, [r["phase_peak_mb"].get(p) for r in ok]) for p in phases},
    }


def _cell(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _markdown(report: dict) -> str:
    lines = ["# senca at scale", "",
             f"`{report['command']}` on {report['machine']}; settings: defaults"
             + (f", `--epochs {report['epochs']}`" if report["epochs"] is not None else "") + ".",
             "Simulated square-grid sections (`senca.simulation.simulate_tissue(grid='square')`); seconds per phase, "
             "peak resident memory of the run's process (MB), CPU seconds of the process (all threads), and the "
             "machine's 1-minute load average during the run (mean, and at start / end): wall times taken while "
             "other jobs hold the cores are upper bounds.", ""]
    header = "| spots | image | " + " | ".join(PHASES) + " | senca total s | CPU s | peak MB | load | ARI |"
    lines += [header, "|" + "---|" * (len(PHASES) + 7)]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | " + " | ".join("" for _ in PHASES)
                         + f" | failed: {r['error']} | | | | |")
            continue
        cells = [_cell(r["seconds"].get(p)) for p in PHASES]
        load = r.get("load_average")
        load = f"{load['mean']:.1f} ({load['start']:.1f} / {load['end']:.1f})" if load else ""
        ari = "" if r.get("ari") is None else f"{r['ari']:.3f}"
        lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | " + " | ".join(cells)
                     + f" | {r['senca_seconds']:.1f} | {_cell(r.get('senca_cpu_seconds'))} | {r['peak_mb']:.0f} | {load} | {ari} |")
    lines += ["", "Peak resident memory during each phase (MB):", "",
              "| spots | image | " + " | ".join(PHASES) + " |", "|" + "---|" * (len(PHASES) + 2)]
    for r in report["runs"]:
        if "error" not in r:
            lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | "
                         + " | ".join(_cell(r["phase_peak_mb"].get(p), 0) for p in PHASES) + " |")
    lines += ["", "CPU seconds of each phase (all threads of the process):", "",
              "| spots | image | " + " | ".join(PHASES) + " |", "|" + "---|" * (len(PHASES) + 2)]
    for r in report["runs"]:
        if "error" not in r and "cpu_seconds" in r:
            lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | "
                         + " | ".join(_cell(r["cpu_seconds"].get(p)) for p in PHASES) + " |")
    growth = report["growth_exponent"]
    lines += ["", f"Growth exponent (log-log least-squares slope against spots, expression only, sizes "
              f"{', '.join(f'{n:,}' for n in growth['sizes'])}; 1 = linear; the totals exclude the simulation): "
              f"wall time {growth['time']}, CPU time {growth.get('cpu_time')}, peak memory {growth['memory']}.", ""]
    if growth.get("phase_time"):
        phases = list(growth["phase_time"])
        lines += ["| exponent | " + " | ".join(phases) + " |", "|" + "---|" * (len(phases) + 1)]
        for key, name in (("phase_time", "wall time"), ("phase_cpu_time", "CPU time"), ("phase_memory", "peak memory")):
            lines.append(f"| {name} | " + " | ".join(_cell(growth[key].get(p), 2) for p in phases) + " |")
    settings = next((r["settings"] for r in report["runs"] if "settings" in r), None)
    if settings:
        lines += ["", "Settings of the runs: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="spots per simulated section")
    parser.add_argument("--image-sizes", nargs="*", type=int, default=list(IMAGE_SIZES),
                        help="sizes also run with the H&E-like image (only those also in --sizes)")
    parser.add_argument("--epochs", type=int, default=None, help="total training epochs (default: the model's schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=24 * 3600, help="seconds per run")
    parser.add_argument("--out", type=Path, default=HERE / "scale.json")
    parser.add_argument("--md", type=Path, default=HERE / "SCALE.md")
    parser.add_argument("--merge", action="store_true", help="add the runs to those in --out instead of replacing them")
    parser.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        n_spots, image, seed = args.child
        print(json.dumps(run_one(n_spots, bool(image), args.epochs, seed)))
        return 0
    runs = []
    for n in sorted(args.sizes):
        for image in (False, True) if n in args.image_sizes else (False,):
            print(f"{n:,} spots{' with image' if image else ''} ...", file=sys.stderr, flush=True)
            runs.append(_child(n, image, args.epochs, args.seed, args.timeout))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    commands = ["python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])]
    if args.merge and args.out.is_file():
        previous = json.loads(args.out.read_text())
        new = {(r["n_spots"], r["image"]) for r in runs}
        runs = sorted([r for r in previous["runs"] if (r["n_spots"], r["image"]) not in new] + runs,
                      key=lambda r: (r["n_spots"], r["image"]))
        commands = previous.get("commands", [previous["command"]]) + commands
    report = {
        "command": " ; ".join(commands),
        "commands": commands,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
        "epochs": args.epochs,
        "runs": runs,
        "growth_exponent": growth_exponents(runs),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.md.write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
