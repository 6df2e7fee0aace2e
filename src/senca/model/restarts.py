"""One training restart of SENCA: trained here or in a restart process, saved to a folder and back.

The restart processes of :func:`senca.pipeline.run_section` fork from a server that imports
this module (through ``senca._process.WORKER_MODULES``): it needs the model and nothing of the
pipeline above it (scanpy, the plots), which would make every run wait about a second longer
for the server.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
from anndata import AnnData
from tqdm.auto import tqdm

from senca._process import die_with_parent
from senca.model._config import SencaConfig
from senca.model._senca import SENCA

__all__ = ["init_restart_worker", "load_restart", "save_restart", "train_restart", "train_restart_in_worker"]

_EMBEDDING_FILE = "embedding.npy"


def train_restart(adata: AnnData, config: SencaConfig, patches, image_features, device: str, progress: bool) -> SENCA:
    """A model trained on ``adata`` with ``config`` (its seed included)."""
    model = SENCA(adata, config=config, patches=patches, image_features=image_features, device=device)
    model.train(progress_bar=progress)
    return model


def save_restart(model: SENCA, folder: Path) -> None:
    """Write the model and its embedding to ``folder``."""
    model.save(folder)
    np.save(folder / _EMBEDDING_FILE, model.get_latent_representation())


def load_restart(folder: Path, adata: AnnData, image_features, device: str) -> tuple[SENCA, np.ndarray]:
    """``(model, embedding)`` written by :func:`save_restart`."""
    # The saved model keeps the image features, so the ResNet need not run again.
    return SENCA.load(folder, adata, image_features=image_features, device=device), np.load(folder / _EMBEDDING_FILE)


def init_restart_worker(parent: int, via_server: bool) -> None:
    """Restart process initializer: die with ``parent``; a thread lock for tqdm.

    tqdm otherwise makes a multiprocessing lock, a named semaphore in a forked-from-server
    process, which a worker terminated mid-training would leave for the resource tracker to
    warn about; the workers show no progress bars.
    """
    die_with_parent(parent, via_server=via_server)
    tqdm.set_lock(threading.RLock())


def train_restart_in_worker(inputs: str, config: SencaConfig, folder: str) -> None:
    """One restart in a child process: read the pickled ``(adata, patches, image_features)``,
    train, save the model and embedding to ``folder``."""
    with open(inputs, "rb") as f:
        adata, patches, image_features = pickle.load(f)
    save_restart(train_restart(adata, config, patches, image_features, "cpu", progress=False), Path(folder))
