"""Property-based fuzzing of every reader, the h5ad validator and the command line (a few examples each).

The targets and their independent oracles live in ``fuzz/targets.py``; ``fuzz/run.py`` runs
the same targets for longer. Derandomised, so CI sees the same examples on every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
from targets import TARGETS  # noqa: E402

EXAMPLES = {"her2st_tsv": 40, "visium_h5_positions_scalefactors": 30, "h5ad_validator": 40, "images": 40, "cli": 25}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_reader_agrees_with_oracle_or_refuses_cleanly(name):
    strategy, check = TARGETS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(strategy)
    def run(spec):
        assert check(spec) in ("read", "refused")

    run()
