"""Population-batched convex relaxations: IBP, HBox, CROWN-IBP, DeepPoly/CROWN, alpha-CROWN."""

from .api import NotDifferentiableError, compute_bounds, margin_spec
from .kernels import KernelPlan, follow_plan, record_plan, using_plan
from .types import Box, ReluRelaxation

__all__ = ["Box", "KernelPlan", "NotDifferentiableError", "ReluRelaxation", "compute_bounds",
           "follow_plan", "margin_spec", "record_plan", "using_plan"]
