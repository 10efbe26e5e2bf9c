"""Population-batched convex relaxations: IBP, HBox, CROWN-IBP, DeepPoly/CROWN, alpha-CROWN."""

from .api import METHODS, NotDifferentiableError, compute_bounds, margin_spec
from .types import Box, ReluRelaxation

__all__ = ["METHODS", "Box", "NotDifferentiableError", "ReluRelaxation", "compute_bounds", "margin_spec"]
