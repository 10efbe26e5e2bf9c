"""The training loss of many weight vectors on one batch: what a bound worker evaluates.

``points`` is an N x D block of parameter vectors (a PGPE population, the RGS gradient points or
the single GRAD centre). Losses are the batch mean per point; gradients are per point. All points
are bounded in one population-batched call, never member by member.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .. import relaxations
from ..attacks import pgd_attack
from ..bounds.api import compute_bounds, margin_spec
from ..losses import robust_loss, standard_loss
from ..nets.forward import forward
from ..nets.spec import NetSpec
from .noise import generator

LossKind = Literal["standard", "adversarial", "certified"]


@dataclass(frozen=True)
class Objective:
    """Which loss: cross-entropy, PGD adversarial cross-entropy, or a relaxation's robust loss."""

    kind: LossKind
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the relaxation's (its record in gls_core.relaxations)
    pgd_steps: int = 8
    pgd_step_size: float = 0.25  # fraction of eps
    pgd_restarts: int = 1

    def __post_init__(self) -> None:
        if (self.kind == "certified") != (self.method is not None):
            raise ValueError("a certified objective needs a relaxation method, and only it takes one")

    @property
    def differentiable(self) -> bool:
        return self.kind != "certified" or self.method in relaxations.differentiable()

    def _per_point(self, spec: NetSpec, points: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                   seed: int, step: int) -> torch.Tensor:
        """Batch-mean loss of each point, [N]; differentiable in ``points`` when the loss is."""
        if self.kind == "standard" or eps == 0:
            return standard_loss(forward(spec, points, x), y).mean(dim=1)
        if self.kind == "adversarial":
            losses = []
            for index in range(points.shape[0]):
                attack = generator(seed, "attack", step, index)
                x_adv = pgd_attack(spec, points[index], x, y, eps, steps=self.pgd_steps,
                                   step_size=self.pgd_step_size * eps, restarts=self.pgd_restarts, generator=attack)
                losses.append(standard_loss(forward(spec, points[index:index + 1], x_adv), y).mean(dim=1))
            return torch.cat(losses)
        assert self.method is not None
        _, upper = compute_bounds(spec, x, eps, self.method, C=margin_spec(y, spec.num_outputs), params=points,
                                  sides="upper", **self.options)
        return robust_loss(upper).mean(dim=1)

    def losses(self, spec: NetSpec, points: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
               seed: int = 0, step: int = 0) -> torch.Tensor:
        """Loss of each point without gradients (PGPE fitness), [N]."""
        with torch.no_grad():
            return self._per_point(spec, points.detach(), x, y, eps, seed, step)

    def losses_and_grads(self, spec: NetSpec, points: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
                         seed: int = 0, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [N] and its gradient in each point [N, D] (GRAD, PGD, RGS)."""
        if not self.differentiable:
            raise ValueError(f"{self.method} has no weight gradients; evaluate it with losses() (PGPE)")
        leaf = points.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            losses = self._per_point(spec, leaf, x, y, eps, seed, step)
            (grads,) = torch.autograd.grad(losses.sum(), leaf)
        return losses.detach(), grads
