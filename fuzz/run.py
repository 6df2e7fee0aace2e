"""Long fuzz run over every target of ``fuzz/targets.py``, each in its own process.

    PYTHONPATH=src python fuzz/run.py --examples 2000 --seconds 120 [--results fuzz/RESULTS.md]

Per target, batches of hypothesis examples (fresh seeds) run until ``--examples`` or
``--seconds`` is reached. Every outcome is counted: read (agrees with the oracle), refused
(``SencaInputError`` where the oracle refuses too), oracle mismatches, other exceptions, and
signal deaths of the target's process (a segmentation fault in a C extension kills the process,
so each target runs in a child and its exit status is checked).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_target(name: str, examples: int, seconds: float, seed: int, out: Path) -> None:
    """In the child: run one target, write its counts to ``out`` after every batch."""
    import logging
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    sys.path.insert(0, str(HERE))
    from targets import TARGETS, Mismatch

    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    strategy, check = TARGETS[name]
    counts: collections.Counter = collections.Counter()
    samples: dict[str, list[str]] = collections.defaultdict(list)
    start = time.monotonic()
    batch = 50
    while counts["examples"] < examples and time.monotonic() - start < seconds:

        @hypothesis_seed(seed)
        @settings(max_examples=batch, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(spec):
            if counts["examples"] >= examples or time.monotonic() - start >= seconds:
                return
            counts["examples"] += 1
            try:
                counts[check(spec)] += 1
            except Mismatch as err:
                counts["oracle mismatches"] += 1
                if len(samples["oracle mismatches"]) < 5:
                    samples["oracle mismatches"].append(f"{err} <- {spec!r}"[:600])
            except Exception as err:  # noqa: BLE001 - counting is the point
                counts["other exceptions"] += 1
                if len(samples["other exceptions"]) < 5:
                    samples["other exceptions"].append(
                        f"{type(err).__name__}: {err} <- {spec!r}\n{traceback.format_exc(limit=-3)}"[:1500])

        one()
        seed += 1
        out.write_text(json.dumps({"counts": counts, "samples": samples, "seconds": time.monotonic() - start}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per target at most (default 2000)")
    parser.add_argument("--seconds", type=float, default=120, help="seconds per target at most (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="first hypothesis seed (default 0)")
    parser.add_argument("--targets", nargs="*", default=None, help="targets to run (default all)")
    parser.add_argument("--results", type=Path, default=None, help="write the table as markdown to this file")
    parser.add_argument("--child", nargs=2, metavar=("TARGET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_target(args.child[0], args.examples, args.seconds, args.seed, Path(args.child[1]))
        return 0

    sys.path.insert(0, str(HERE))
    from targets import TARGETS

    rows, details = [], []
    for name in args.targets or list(TARGETS):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            started = time.monotonic()
            child = subprocess.run([sys.executable, __file__, "--examples", str(args.examples), "--seconds",
                                    str(args.seconds), "--seed", str(args.seed), "--child", name, str(out)],
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                                   timeout=args.seconds * 3 + 300)
            result = json.loads(out.read_text()) if out.exists() else {"counts": {}, "samples": {}}
        counts = result["counts"]
        death = -child.returncode if child.returncode < 0 else 0
        rows.append((name, counts.get("examples", 0), counts.get("read", 0), counts.get("refused", 0),
                     counts.get("other exceptions", 0), 1 if death else 0, counts.get("oracle mismatches", 0),
                     round(time.monotonic() - started)))
        if child.returncode:
            details.append(f"{name}: process ended with {child.returncode}\n{child.stderr[-2000:]}")
        for kind, texts in result["samples"].items():
            details += [f"{name}, {kind}: {t}" for t in texts]
        print(f"{name}: {dict(counts)} exit {child.returncode}", flush=True)

    header = ("| target | examples | read (= oracle) | refused (SencaInputError, oracle refuses too) | other exceptions "
              "| signal deaths | oracle mismatches | wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
    table = header + "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
    print(table)
    for line in details:
        print(line)
    if args.results:
        command = "PYTHONPATH=src python fuzz/run.py " + " ".join(sys.argv[1:])
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        args.results.write_text(
            f"# Fuzz run results\n\n`{command}` ({stamp}, one process per target, one thread).\n\n{table}\n"
            + ("Details:\n\n" + "\n\n".join(f"```\n{d}\n```" for d in details) + "\n" if details else "No failures.\n"))
    return 1 if any(row[4] or row[5] or row[6] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
