"""Built-in simulated tissue (counts + H&E-like image + truth) for ``senca demo`` and tests."""

from senca.simulation.simulate import (
    EXPRESSION_CONFOUNDED,
    IMAGE_CONFOUNDED,
    REGIONS,
    simulate_tissue,
)

__all__ = ["simulate_tissue", "REGIONS", "IMAGE_CONFOUNDED", "EXPRESSION_CONFOUNDED"]
