"""Training time with 1 and 2 intra-op threads (``SencaConfig.num_threads``), to choose the default.

    python benchmarks/threads.py --threads 1 2 --repeats 3

A simulated section (expression only, full batch) is preprocessed once; then SENCA trains on
it for ``--epochs`` epochs with each thread count in turn, ``--repeats`` rounds (alternating,
so that a change in the machine's load hits every count alike). The load average before each
run is recorded: a timing taken while other processes hold the cores says little about a
quiet machine. Writes ``benchmarks/threads.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "threads.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-spots", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    from senca.graph import spatial_graph
    from senca.model import SENCA, SencaConfig
    from senca.preprocessing import preprocess
    from senca.simulation import simulate_tissue

    adata = preprocess(simulate_tissue(n_spots=args.n_spots, seed=0, image=False))
    spatial_graph(adata)
    stages = dict(epochs_warmup=args.epochs // 4, epochs_shared=args.epochs - args.epochs // 4 - args.epochs // 10,
                  epochs_regions=args.epochs // 10)
    rows = []
    for repeat in range(args.repeats):
        for threads in args.threads:
            load = os.getloadavg()[0]
            model = SENCA(adata, SencaConfig(num_threads=threads, use_image=False, n_clusters=6, **stages), device="cpu")
            start = time.perf_counter()
            model.train(progress_bar=False)
            rows.append((repeat, threads, time.perf_counter() - start, load))
            print(f"repeat {repeat}: {threads} thread(s) {rows[-1][2]:.1f} s (load {load:.1f})", file=sys.stderr, flush=True)
    lines = [f"# Training threads\n\n`python benchmarks/threads.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"on {os.cpu_count()} cores: {args.n_spots} simulated spots, expression only, {args.epochs} epochs.\n",
             "| threads | median s | runs (s) | load average before each run |", "|---|---|---|---|"]
    for threads in args.threads:
        mine = [r for r in rows if r[1] == threads]
        lines.append(f"| {threads} | {np.median([r[2] for r in mine]):.1f} | {', '.join(f'{r[2]:.1f}' for r in mine)} | "
                     f"{', '.join(f'{r[3]:.1f}' for r in mine)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
