"""Shared fixtures: the real data beside the repository, skipping with its path where absent."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HER2ST = DATA / "her2st"
DLPFC = DATA / "dlpfc" / "151510"
A1_IMAGE = HER2ST / "ST-imgs" / "A" / "A1" / "A1_HE_display_2000px.png"
A1_SCALE = 0.28761
C2_IMAGE = HER2ST / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg"
LABELLED_HER2ST = ["A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"]


def require(path: Path) -> Path:
    """Skip the test, naming the path, when the real data is absent."""
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    return path


@pytest.fixture(autouse=True)
def _senca_logs(caplog):
    caplog.set_level(logging.INFO, logger="senca")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module of tiny-tensor tests: many times faster on a
    shared 2-core machine; the previous setting is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
