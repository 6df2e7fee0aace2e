"""Wall time and memory of every phase of a senca run against the number of spots.

    python benchmarks/scale.py                                    # 5k, 20k, 100k, 1M; 20k with an image
    python benchmarks/scale.py --sizes 5000 20000 --epochs 20     # a quick check

Each size is simulated (``senca.simulation.simulate_tissue`` on a square grid of contiguous
bins, Visium HD-like; expression alone, and with its H&E-like image for the sizes in
``--image-sizes``) and run through ``senca.pipeline.run_section`` and
``senca.outputs.write_outputs`` at the default settings (``--epochs`` shortens the training
schedule, as ``senca run --epochs`` does), each in a fresh child process, one at a time. Per
phase: wall seconds and the peak resident memory during the phase (sampled every 20 ms), and
the process's peak (``ru_maxrss``). The log-log slope of time and memory against spots from
20k up (the growth exponent: 1 is linear) goes to ``benchmarks/scale.json`` and
``benchmarks/SCALE.md``.
"""

from __future__ import annotations

import argparse
import json
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


class _RssSampler(threading.Thread):
    """Resident memory of this process every ``interval`` seconds, as ``(time, MB)``."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.samples, self._stop_event = interval, [], threading.Event()

    def run(self) -> None:
        with open("/proc/self/statm") as statm:
            while not self._stop_event.is_set():
                statm.seek(0)
                self.samples.append((time.perf_counter(), int(statm.read().split()[1]) * _PAGE / 2**20))
                time.sleep(self.interval)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_event.set()
        self.join()
        return self.samples


def _phase_peaks(samples: list[tuple[float, float]], bounds: dict[str, tuple[float, float]]) -> dict[str, float]:
    times, rss = np.array([t for t, _ in samples]), np.array([m for _, m in samples])
    peaks = {}
    for phase, (start, end) in bounds.items():
        inside = (times >= start) & (times <= end)
        # A phase shorter than the sampling interval: the sample just after it.
        peaks[phase] = round(float(rss[inside].max() if inside.any() else rss[np.searchsorted(times, end).clip(max=len(rss) - 1)]), 1)
    return peaks


def run_one(n_spots: int, image: bool, epochs: int | None, seed: int) -> dict:
    """Simulate one section and run senca on it, in this process; every phase timed."""
    import tempfile

    from senca.cli.commands import scale_epochs
    from senca.outputs import write_outputs
    from senca.pipeline import run_section
    from senca.settings import RunSettings
    from senca.simulation import simulate_tissue

    sampler = _RssSampler()
    sampler.start()
    start = time.perf_counter()
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

    seconds = {"simulate": simulated - start}
    ordered = [("preprocess", "preprocess_s"), ("patches", "patches_s"), ("train", "train_s"), ("cluster", "cluster_s"),
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
    return {
        "n_spots": n_spots,
        "image": image,
        "epochs": epochs,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "senca_seconds": round(written - simulated, 2),
        "phase_peak_mb": _phase_peaks(samples, bounds),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "n_regions": metrics["n_regions"],
        "ari": metrics.get("ari"),
    }


def _child(n_spots: int, image: bool, epochs: int | None, seed: int, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n_spots), str(int(image)), str(seed)]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"n_spots": n_spots, "image": image, "epochs": epochs, "error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"n_spots": n_spots, "image": image, "epochs": epochs, "error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponents(runs: list[dict], start: int = SLOPE_FROM) -> dict[str, float | None]:
    """Least-squares slope of log(time) and log(peak memory) against log(spots), expression-only runs from ``start`` up."""
    ok = sorted((r for r in runs if not r["image"] and "error" not in r and r["n_spots"] >= start), key=lambda r: r["n_spots"])
    if len(ok) < 2:
        return {"time": None, "memory": None, "sizes": [r["n_spots"] for r in ok]}
    log_n = np.log([r["n_spots"] for r in ok])
    slope = lambda values: round(float(np.polyfit(log_n, np.log(values), 1)[0]), 3)  # noqa: E731
    return {"time": slope([r["senca_seconds"] for r in ok]), "memory": slope([r["peak_mb"] for r in ok]),
            "sizes": [r["n_spots"] for r in ok]}


def _markdown(report: dict) -> str:
    lines = ["# senca at scale", "",
             f"`{report['command']}` on {report['machine']}; settings: defaults"
             + (f", `--epochs {report['epochs']}`" if report["epochs"] is not None else "") + ".",
             "Simulated square-grid sections (`senca.simulation.simulate_tissue(grid='square')`); seconds per phase, "
             "peak resident memory of the run's process (MB).", ""]
    header = "| spots | image | " + " | ".join(PHASES) + " | senca total s | peak MB | ARI |"
    lines += [header, "|" + "---|" * (len(PHASES) + 5)]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | " + " | ".join("" for _ in PHASES)
                         + f" | failed: {r['error']} | | |")
            continue
        cells = [f"{r['seconds'][p]:.1f}" if p in r["seconds"] else "" for p in PHASES]
        ari = "" if r.get("ari") is None else f"{r['ari']:.3f}"
        lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | " + " | ".join(cells)
                     + f" | {r['senca_seconds']:.1f} | {r['peak_mb']:.0f} | {ari} |")
    lines += ["", "Peak resident memory during each phase (MB):", "",
              "| spots | image | " + " | ".join(PHASES) + " |", "|" + "---|" * (len(PHASES) + 2)]
    for r in report["runs"]:
        if "error" not in r:
            lines.append(f"| {r['n_spots']:,} | {'yes' if r['image'] else 'no'} | "
                         + " | ".join(f"{r['phase_peak_mb'].get(p, ''):.0f}" if p in r["phase_peak_mb"] else "" for p in PHASES) + " |")
    growth = report["growth_exponent"]
    lines += ["", f"Growth exponent (log-log slope against spots, expression only, sizes {growth['sizes']}): "
              f"time {growth['time']}, memory {growth['memory']} (1 = linear; `senca total s` excludes the simulation)."]
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
    report = {
        "command": "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
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
