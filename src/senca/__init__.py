"""senca: tissue regions from spatial transcriptomics fused with H&E (SENCA-st).

Modules follow scanpy: ``senca.io`` (readers), ``senca.pp`` (preprocessing), ``senca.tl``
(clustering, scores, markers), ``senca.pl`` (plots); the model follows scvi-tools:
``senca.SENCA(adata, ...)``, ``.train()``, ``.get_latent_representation()``.
``senca.find_regions(adata)`` does in one call what ``senca run`` does.
"""

import importlib
import logging

from senca.errors import SencaInputError

__version__ = "0.1.0"

logging.getLogger("senca").addHandler(logging.NullHandler())

# Loaded on first use, so that `senca --help` does not wait for torch and scanpy.
_LAZY = {
    "io": "senca.io",
    "pp": "senca.preprocessing",
    "tl": "senca.tl",
    "pl": "senca.plotting",
    "graph": "senca.graph",
    "image": "senca.image",
    "simulation": "senca.simulation",
}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in ("SENCA", "SencaConfig"):
        return getattr(importlib.import_module("senca.model"), name)
    if name == "find_regions":
        return importlib.import_module("senca.pipeline").find_regions
    raise AttributeError(f"module 'senca' has no attribute {name!r}")


__all__ = ["SENCA", "SencaConfig", "SencaInputError", "__version__", "find_regions", "io", "pl", "pp", "tl"]
