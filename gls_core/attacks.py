"""PGD (Madry et al., 2018) in L_inf for one network given as (spec, theta).

The attack lives in data space [0, 1], like the bounds: the region is the eps-ball around ``x``
intersected with [0, 1], so an attack point and a certificate always talk about the same set.
Everything is batched over the inputs (PGD adversarial training calls it every step); restarts
run one after the other so that restart 0 is bit-identical whatever ``restarts`` is, which makes
"more restarts never weaken the attack" hold exactly and results reproducible for a seeded generator.

Correctness is strict everywhere in this package: an input counts as correctly classified only if
its target logit exceeds every other logit (a tie is an error), the same condition as a certificate
(every upper bound of y_i - y_t below 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InvalidInput
from .nets.forward import forward
from .nets.spec import NetSpec
from .validation import check_count, check_eps, check_inputs, check_labels, check_params

AttackLoss = Literal["ce", "margin"]
ATTACK_LOSSES: tuple[str, ...] = ("ce", "margin")


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{i != y} z_i - z_y per input, [B, classes] -> [B]; negative exactly when correctly classified."""
    target = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[-1]).bool(), -torch.inf)
    return others.max(dim=-1).values - target


def _loss_values(logits: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return logit_margin(logits, y)


def predict_logits(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Logits [B, classes] of the single network theta [D] (or [1, D])."""
    return forward(spec, theta, x)[0]


def attack_loss(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                loss: AttackLoss = "ce") -> torch.Tensor:
    """The per-input loss PGD maximises, [B] (no gradients): for comparing attack points."""
    _check_loss(loss)
    with torch.no_grad():
        return _loss_values(predict_logits(spec, theta.detach(), x), y, loss)


@dataclass
class _Best:
    """Per input: the strongest point seen, its loss, and whether it is misclassified."""

    point: torch.Tensor
    loss: torch.Tensor
    fooled: torch.Tensor

    def update(self, point: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor,
               index: torch.Tensor | None = None) -> None:
        """Keep the candidate where it is better: misclassified beats correct, then higher loss wins.

        ``index`` says which inputs the candidates belong to (a later restart attacks a subset).
        """
        old_loss = self.loss if index is None else self.loss[index]
        old_fooled = self.fooled if index is None else self.fooled[index]
        better = (fooled & ~old_fooled) | ((fooled == old_fooled) & (loss > old_loss))
        if index is None:  # every PGD step: no host sync, so it stays cheap on a GPU
            self.point = torch.where(better.view(-1, *([1] * (point.dim() - 1))), point, self.point)
            self.loss = torch.where(better, loss, self.loss)
            self.fooled = torch.where(better, fooled, self.fooled)
            return
        rows = better.nonzero().squeeze(-1)
        target = index[rows]
        self.point[target] = point[rows]
        self.loss[target] = loss[rows]
        self.fooled[target] = fooled[rows]


def _check_loss(loss: str) -> None:
    if loss not in ATTACK_LOSSES:
        raise InvalidInput("loss", f"must be one of {', '.join(ATTACK_LOSSES)}, got {loss!r}", loss)


def _per_input(value: float | torch.Tensor, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar or [B] value as [B, 1, ..., 1] broadcastable against inputs like ``like``."""
    tensor = check_eps(value, batch, name)
    return tensor.to(like.dtype).to(like.device).expand(batch).reshape(batch, *([1] * (like.dim() - 1)))


def projected_ascent(objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], start: torch.Tensor,
         lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor, steps: int,
         should_stop: Callable[[], bool] | None = None) -> _Best:
    """One PGD run from ``start`` maximising ``objective``'s loss; the best iterate per input (the start counts).

    ``objective`` maps points to (loss, fooled) per input; a fooled point beats any other.
    ``should_stop`` (e.g. a verifier's deadline) is polled before each step after the first evaluation:
    when it says so, the best point so far is returned without taking the step.
    """
    point = start.clone()
    best: _Best | None = None
    for iteration in range(steps + 1):
        if iteration and should_stop is not None and should_stop():
            break
        point.requires_grad_(iteration < steps)
        loss, fooled = objective(point)
        if best is None:
            best = _Best(point.detach().clone(), loss.detach().clone(), fooled.clone())
        else:
            best.update(point.detach(), loss.detach(), fooled)
        if iteration == steps:
            break
        (grad,) = torch.autograd.grad(loss.sum(), point)
        with torch.no_grad():
            point = torch.minimum(torch.maximum(point + step * grad.sign(), lower), upper)
    assert best is not None
    return best


def pgd_attack(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor, *,
               steps: int = 40, step_size: float | torch.Tensor | None = None, restarts: int = 1,
               generator: torch.Generator | None = None, loss: AttackLoss = "ce") -> torch.Tensor:
    """Adversarial inputs [B, ...] in the eps-ball around x intersected with [0, 1].

    Each restart starts uniformly in the region (drawn from ``generator``: deterministic when it
    is seeded) and takes ``steps`` signed-gradient steps of ``step_size`` (default 2.5 eps / steps,
    Madry et al.'s choice, so a run can cross the ball and come back), projecting after each.
    Per input the strongest point over all iterates and restarts is returned: a misclassified
    point beats a correctly classified one, otherwise the higher ``loss`` ("ce" or "margin",
    max_{i != y} z_i - z_y) wins. Restarts after the first only attack inputs not yet
    misclassified. ``eps`` and ``step_size`` are scalars or per-input [B].

    theta is detached (no gradient reaches it) and the caller's grad mode is left as it was.
    """
    _check_loss(loss)
    check_count(steps, "steps", 0)
    check_count(restarts, "restarts", 1)
    check_inputs(spec, x)
    batch = x.shape[0]
    check_labels(y, batch, spec.num_outputs)
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone()  # a normal tensor even when the caller is in inference mode
        params = check_params(spec, theta.detach().clone(), "theta", single=True).to(device=x.device, dtype=x.dtype)
        radius = _per_input(eps, batch, x, "eps")
        step = 2.5 * radius / max(steps, 1) if step_size is None else _per_input(step_size, batch, x, "step_size")
        lower, upper = (x - radius).clamp(0, 1), (x + radius).clamp(0, 1)
        best = _attack(params, spec, x, y, lower, upper, step, steps, restarts, generator, loss)
    return best.point.detach()


def _attack(params: torch.Tensor, spec: NetSpec, x: torch.Tensor, y: torch.Tensor, lower: torch.Tensor,
            upper: torch.Tensor, step: torch.Tensor, steps: int, restarts: int,
            generator: torch.Generator | None, loss: str) -> _Best:
    best: _Best | None = None
    index = torch.arange(x.shape[0], device=x.device)
    for _ in range(restarts):
        if best is not None:
            index = (~best.fooled).nonzero().squeeze(-1)
            if index.numel() == 0:
                break
        lo, hi, labels = lower[index], upper[index], y[index]

        def objective(point: torch.Tensor, labels: torch.Tensor = labels) -> tuple[torch.Tensor, torch.Tensor]:
            logits = predict_logits(spec, params, point)
            return _loss_values(logits, labels, loss), logit_margin(logits.detach(), labels) >= 0

        noise = torch.rand(lo.shape, generator=generator, dtype=lo.dtype, device=lo.device)
        run = projected_ascent(objective, lo + (hi - lo) * noise, lo, hi, step[index], steps)
        if best is None:
            best = run
        else:
            best.update(run.point, run.loss, run.fooled, index)
    assert best is not None
    return best
