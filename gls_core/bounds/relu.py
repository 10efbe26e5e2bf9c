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


def _stability(bounds: Box) -> tuple[torch.Tensor, torch.Tensor]:
    active = bounds.lower >= 0
    unstable = (bounds.lower < 0) & (bounds.upper > 0)
    return active, unstable


def _upper_line(bounds: Box, active: torch.Tensor, unstable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lower, upper = bounds.lower, bounds.upper
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / width, active.to(upper.dtype))
    offset = torch.where(unstable, -slope * lower, torch.zeros_like(upper))
    return slope, offset


def deeppoly_lower_slope(bounds: Box) -> torch.Tensor:
    """DeepPoly's lower slope: 1 for active, 0 for inactive, 1[u > -l] for unstable neurons."""
    active, unstable = _stability(bounds)
    return (active | (unstable & (bounds.upper > -bounds.lower))).to(bounds.upper.dtype)


def deeppoly_relaxation(bounds: Box) -> ReluRelaxation:
    active, unstable = _stability(bounds)
    upper_slope, upper_offset = _upper_line(bounds, active, unstable)
    return ReluRelaxation(deeppoly_lower_slope(bounds), None, upper_slope, upper_offset)


def box_relaxation(bounds: Box) -> ReluRelaxation:
    """HBox: stable neurons exact, unstable ones boxed in [0, u] (the IBP relaxation)."""
    active, unstable = _stability(bounds)
    slope = active.to(bounds.upper.dtype)
    offset = torch.where(unstable, bounds.upper, torch.zeros_like(bounds.upper))
    return ReluRelaxation(slope, None, slope, offset)
