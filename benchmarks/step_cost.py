"""Seconds per training step on a real section, by model width and intra-op threads.

    python benchmarks/step_cost.py --section 151510 --hidden 64 128 --threads 1 2

Preprocesses the section as ``senca run`` does, builds the model (transcriptomics only) and
times ``--steps`` optimisation steps of the warm-up stage (graph transformer and decoder) and
of the shared stage (plus the shared encoder), full batch, after two untimed steps. The load
average before each measurement is printed beside it: on a busy machine the numbers are upper
bounds. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.protocol import get_section, load_section  # noqa: E402
from senca.model import SENCA  # noqa: E402
from senca.pipeline import _prepare  # noqa: E402
from senca.settings import RunSettings  # noqa: E402
from senca.training.losses import reconstruction_loss  # noqa: E402
from senca.training.optim import AdamW  # noqa: E402


def step_seconds(model: SENCA, stage: str, steps: int) -> float:
    """Mean seconds of one optimisation step of ``stage`` (``"warmup"`` or ``"shared"``)."""
    module, data = model.module, model.data
    optimizer = AdamW(module.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        if stage == "warmup":
            return reconstruction_loss(module.gene_decoder(module.encode_gene(data.x, data.edge_index)), data.target)
        out = module(data.x, data.edge_index, None)
        return (reconstruction_loss(module.gene_decoder(out["z_g"]), data.target)
                + reconstruction_loss(module.fused_decoder(out["embedding"]), data.target))

    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="151510")
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = RunSettings()
    adata, _ = _prepare(load_section(get_section(args.section)), settings)
    rows = []
    for hidden in args.hidden:
        for threads in args.threads:
            torch.set_num_threads(threads)
            model = SENCA(adata, config=settings.model.replace(use_image=False, n_clusters=7, hidden_dim=hidden),
                          device="cpu")
            load = os.getloadavg()[0]
            rows.append((hidden, threads, step_seconds(model, "warmup", args.steps),
                         step_seconds(model, "shared", args.steps), load))
    print(f"`python benchmarks/step_cost.py --section {args.section} --hidden {' '.join(map(str, args.hidden))} "
          f"--threads {' '.join(map(str, args.threads))}`: {adata.n_obs} spots, "
          f"{model.data.edge_index.shape[1]} edges, {model.data.x.shape[1]} inputs, full batch.\n")
    print("| hidden | threads | warm-up s/step | shared s/step | load average before |")
    print("|---:|---:|---:|---:|---:|")
    for hidden, threads, warmup, shared, load in rows:
        print(f"| {hidden} | {threads} | {warmup:.3f} | {shared:.3f} | {load:.1f} |")


if __name__ == "__main__":
    main()
