"""A verification property: an input box and groups of linear output rows; in each group some row stays positive.

A VNN-LIB unsafe set is a disjunction of cases, each a conjunction of output constraints. A case
is unreachable exactly when, at every input, at least one of its constraints fails, i.e. one of its
rows ``c . f(x) + d`` is positive. So each case is a group of rows, and the property holds when
every group's largest row (its margin) is positive everywhere. The usual robustness property has
one row per group (the default, ``groups=None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..nets.spec import NetSpec
from ..population import forward


@dataclass(frozen=True)
class Property:
    """For every x in [lower, upper] and every group g: max over g's rows of ``C f(x) + d`` is > 0.

    Robustness of label y is the rows ``z_y - z_j`` (j != y), one per group; a VNN-LIB unsafe case
    with several output constraints is one group of several rows.
    """

    lower: torch.Tensor  # [*input_shape]
    upper: torch.Tensor
    C: torch.Tensor  # [K, classes]
    d: torch.Tensor  # [K]
    groups: torch.Tensor | None = None  # [K] group of each row, numbered 0..G-1; None: every row its own group

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape:
            raise ValueError(f"property box: lower {tuple(self.lower.shape)} and upper "
                             f"{tuple(self.upper.shape)} differ in shape")
        if bool((self.lower > self.upper).any()):
            raise ValueError("property box: lower exceeds upper somewhere")
        if self.C.dim() != 2 or self.d.shape != (self.C.shape[0],):
            raise ValueError(f"property rows: C must be [K, classes] and d [K], got {tuple(self.C.shape)} "
                             f"and {tuple(self.d.shape)}")
        if self.groups is not None and (self.groups.shape != self.d.shape or self.groups.dtype != torch.int64
                                        or set(self.groups.tolist()) != set(range(int(self.groups.max()) + 1))):
            raise ValueError("property groups: one int64 group number per row, numbered 0..G-1")

    @property
    def num_groups(self) -> int:
        return self.C.shape[0] if self.groups is None else int(self.groups.max()) + 1

    def group_rows(self, group: int) -> list[int]:
        """The rows of one group."""
        if self.groups is None:
            return [group]
        return (self.groups == group).nonzero().view(-1).tolist()

    def margins(self, rows: torch.Tensor) -> torch.Tensor:
        """Each group's largest row, [..., K] -> [..., G]: a group is safe where its margin is positive."""
        if self.groups is None:
            return rows
        index = self.groups.to(rows.device).expand_as(rows)
        out = torch.full((*rows.shape[:-1], self.num_groups), -torch.inf, dtype=rows.dtype, device=rows.device)
        return out.scatter_reduce(-1, index, rows, "amax")

    def worst(self, rows: torch.Tensor) -> torch.Tensor:
        """The smallest group margin, [..., K] -> [...]: a point violates the property where it is <= 0."""
        return self.margins(rows).min(-1).values

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
