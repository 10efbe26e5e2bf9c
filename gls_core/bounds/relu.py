"""ReLU relaxations from pre-activation bounds (Fig. 2 of the paper).

- IBP/HBox box: unstable neurons get the constant bounds 0 <= ReLU(v) <= u.
- DeepPoly/CROWN (Singh et al., 2019; Zhang et al., 2018): upper line (v - l) u / (u - l), lower
  slope 1[|u| > |l|] (the area-minimising choice).
- alpha-CROWN (Xu et al., 2021): lower slope alpha in [0, 1], built in ``alpha_crown.py``.
Stable neurons are exact in all of them: slope 1 when l >= 0, slope 0 when u <= 0.
"""

from __future__ import annotations

import torch

from .types import Box, ReluRelaxation


def indicators(bounds: Box) -> tuple[torch.Tensor, torch.Tensor]:
    """(active: l >= 0, unstable: l < 0 < u) as 0/1 floats, from sign and clamp only.

    Float arithmetic, not boolean masks and ``torch.where``: on some CPUs (seen on the project's 2-core
    machines) torch's operations on bool tensors run 10-30x slower than float ones of the same size,
    and these maps are the largest the walk builds. The values are exactly those of the comparisons.
    """
    negative_lower = torch.sign(-bounds.lower).clamp_(min=0)  # 1 where l < 0
    positive_upper = torch.sign(bounds.upper).clamp_(min=0)  # 1 where u > 0
    return 1 - negative_lower, negative_lower * positive_upper


def _upper_line(bounds: Box, active: torch.Tensor, unstable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope u / (u - l) and offset -slope l on unstable neurons; slope 1 (active) or 0, offset 0, elsewhere."""
    lower, upper = bounds.lower, bounds.upper
    width = torch.addcmul(1 - unstable, unstable, upper - lower)  # u - l where unstable, else 1
    slope = torch.addcmul(active, unstable, upper / width)
    offset = -(slope * lower) * unstable
    return slope, offset


def deeppoly_lower_slope(bounds: Box) -> torch.Tensor:
    """DeepPoly's lower slope: 1 for active, 0 for inactive, 1[u > -l] for unstable neurons."""
    active, unstable = indicators(bounds)
    return _lower_slope(bounds, active, unstable)


def _lower_slope(bounds: Box, active: torch.Tensor, unstable: torch.Tensor) -> torch.Tensor:
    # u > -l exactly when the float sum u + l is positive (a sum of two floats is zero only when they cancel)
    return torch.addcmul(active, unstable, torch.sign(bounds.upper + bounds.lower).clamp_(min=0))


def deeppoly_relaxation(bounds: Box) -> ReluRelaxation:
    active, unstable = indicators(bounds)
    upper_slope, upper_offset = _upper_line(bounds, active, unstable)
    return ReluRelaxation(_lower_slope(bounds, active, unstable), None, upper_slope, upper_offset)


def box_relaxation(bounds: Box) -> ReluRelaxation:
    """HBox: stable neurons exact, unstable ones boxed in [0, u] (the IBP relaxation)."""
    active, unstable = indicators(bounds)
    return ReluRelaxation(active, None, active, bounds.upper * unstable)
