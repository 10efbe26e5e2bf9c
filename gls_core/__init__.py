"""GLS core: networks as specs with flat weights, population-batched relaxations and losses.

Importable with no service running; nothing here imports from ``services``. Its names are imported
when first used (:mod:`gls_core.lazy`): importing a part of the package, such as the config or
the command line, does not import torch.
"""

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:  # what the names are; at run time each is imported when first used
    from .bounds import Box, NotDifferentiableError, compute_bounds, margin_spec
    from .errors import InvalidInput
    from .losses import certified, robust_loss, standard_loss
    from .nets import NetSpec, from_sequential, kaiming_uniform, network, to_sequential
    from .nets.forward import forward
    from .relaxations import Relaxation

__all__ = [
    "Box", "InvalidInput", "NetSpec", "NotDifferentiableError", "Relaxation", "certified", "compute_bounds", "forward",
    "from_sequential", "kaiming_uniform", "margin_spec", "network", "robust_loss", "standard_loss", "to_sequential",
]
__getattr__, __dir__ = lazy_exports(__name__, __file__)
