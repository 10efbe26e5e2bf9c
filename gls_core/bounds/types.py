"""Immutable value types shared by the relaxations."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Box:
    """Elementwise bounds ``lower <= v <= upper`` of equal shape."""

    lower: torch.Tensor
    upper: torch.Tensor

    # Halved by multiplying by 0.5, the same correctly rounded value as dividing by 2 (0.5 is exact), at the
    # cost of a multiplication: torch's division is several times slower on CPUs, and IBP computes these per layer.
    @property
    def center(self) -> torch.Tensor:
        return (self.upper + self.lower) * 0.5

    @property
    def radius(self) -> torch.Tensor:
        return (self.upper - self.lower) * 0.5

    def intersect(self, other: Box) -> Box:
        return Box(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))


@dataclass(frozen=True)
class ReluRelaxation:
    """Linear bounds ``ls*v + lo <= ReLU(v) <= us*v + uo`` per neuron.

    Slopes and offsets are broadcastable to [P, B, *shape] (per-row lower slopes are a
    :class:`RowwiseRelaxation`); an offset of ``None`` means zero and saves a pass.
    A relaxation is data: the back-substitution never asks which method produced it.
    """

    lower_slope: torch.Tensor
    lower_offset: torch.Tensor | None
    upper_slope: torch.Tensor
    upper_offset: torch.Tensor | None


@dataclass(frozen=True)
class RowwiseRelaxation(ReluRelaxation):
    """A relaxation whose lower slopes differ per specification row (alpha-CROWN's optimised slopes).

    ``lower_slope`` is [P, B, R, 1, *shape], already laid out as the rows see it; the other fields
    are per neuron as in :class:`ReluRelaxation`. ``input_term`` ([P, B, R, 1, *shape] or None) is
    added to the rows' coefficients on the ReLU's input: beta-CROWN's Lagrangian terms -beta * s for
    split neurons (s = +1 active, -1 inactive), sound on the subdomain for any beta >= 0.
    """

    input_term: torch.Tensor | None = None
