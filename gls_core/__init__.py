"""GLS core: networks as specs with flat weights, population-batched relaxations and losses.

Importable with no service running; nothing here imports from ``services``.
"""

from .bounds import METHODS, Box, NotDifferentiableError, compute_bounds, margin_spec
from .errors import InvalidInput
from .losses import certified, robust_loss, standard_loss
from .nets import NetSpec, from_sequential, kaiming_uniform, network, to_sequential
from .population import forward

__all__ = [
    "METHODS", "Box", "InvalidInput", "NetSpec", "NotDifferentiableError", "certified", "compute_bounds", "forward",
    "from_sequential", "kaiming_uniform", "margin_spec", "network", "robust_loss", "standard_loss", "to_sequential",
]
