"""senca: tissue regions from spatial transcriptomics fused with H&E (SENCA-st)."""

import logging

from senca.errors import SencaInputError

__version__ = "0.1.0"

logging.getLogger("senca").addHandler(logging.NullHandler())

__all__ = ["SencaInputError", "__version__"]
