"""A verification property: an input box and linear output rows that must all stay positive."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nets.spec import NetSpec
from ..population import forward


@dataclass(frozen=True)
class Property:
    """For every x in [lower, upper]: every row of ``C f(x) + d`` is > 0.

    Robustness of label y is the rows ``z_y - z_j`` (j != y); a VNN-LIB property whose unsafe
    set is a disjunction of single output constraints maps to one row per disjunct.
    """

    lower: torch.Tensor  # [*input_shape]
    upper: torch.Tensor
    C: torch.Tensor  # [K, classes]
    d: torch.Tensor  # [K]

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ValueError(f"property box: lower {tuple(self.lower.shape)} and upper "
                             f"{tuple(self.upper.shape)} differ in shape")
        if bool((self.lower > self.upper).any()):
            raise ValueError("property box: lower exceeds upper somewhere")
        if self.C.dim() != 2 or self.d.shape != (self.C.shape[0],):
            raise ValueError(f"property rows: C must be [K, classes] and d [K], got {tuple(self.C.shape)} "
                             f"and {tuple(self.d.shape)}")

    def rows(self, spec: NetSpec, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``C f(x) + d`` for points x [N, *input_shape]: [N, K] (a plain forward pass)."""
        logits = forward(spec, theta.view(1, -1).to(x.dtype), x)[0]
        return logits @ self.C.to(x.dtype).T + self.d.to(x.dtype)

    def contains(self, x: torch.Tensor) -> bool:
        return bool(((x >= self.lower) & (x <= self.upper)).all())


def robustness(spec: NetSpec, x: torch.Tensor, y: int, eps: float) -> Property:
    """Label ``y`` is kept on the L_inf ball of radius eps around x, intersected with [0, 1]."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    classes = spec.num_outputs
    if not 0 <= y < classes:
        raise ValueError(f"label {y} is outside [0, {classes})")
    others = [j for j in range(classes) if j != y]
    C = torch.zeros(len(others), classes, dtype=x.dtype)
    C[:, y] = 1.0
    C[torch.arange(len(others)), others] = -1.0
    return Property((x - eps).clamp(0, 1), (x + eps).clamp(0, 1), C, torch.zeros(len(others), dtype=x.dtype))
