"""alpha-CROWN (Xu et al., 2021): DeepPoly with the unstable ReLUs' lower slopes optimised.

Slopes are per member, input, output row and neuron, initialised at a constant or at DeepPoly's
slopes, and moved by projected signed-gradient steps on
the bound. The tightest bound seen is returned, so it is never looser than its start.
Evaluated without gradients in the network weights: it serves PGPE, which needs none. Its options,
their defaults and ranges are its record's (``AlphaCrownOptions`` in :mod:`gls_core.relaxations`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch

from ..nets.spec import NetSpec
from .backsub import Sides
from .layerwise import Walk, backsub_intersect_bounds, final_bounds, walk
from .relu import deeppoly_lower_slope, deeppoly_relaxation, indicators
from .slope_gradients import bounds_and_slope_gradients
from .types import Box, RowwiseRelaxation


def _alpha_relaxation(bounds: Box, alpha: torch.Tensor, input_term: torch.Tensor | None = None) -> RowwiseRelaxation:
    """DeepPoly's upper line; lower slope alpha on unstable neurons. alpha is [P, B, R, 1, *shape]."""
    base = deeppoly_relaxation(bounds)
    lower, upper = bounds.lower.unsqueeze(2).unsqueeze(3), bounds.upper.unsqueeze(2).unsqueeze(3)
    unstable = (lower < 0) & (upper > 0)
    slope = torch.where(unstable, alpha, (lower >= 0).to(alpha.dtype))
    return RowwiseRelaxation(slope, None, base.upper_slope, base.upper_offset, input_term)


def alpha_crown_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None, *,
                       steps: int, step_size: float, init: float | Literal["deeppoly"], sides: Sides = "both",
                       should_stop: Callable[[], bool] | None = None) -> Box:
    """alpha-CROWN bounds with checked options (``compute_bounds`` checks them); ``should_stop`` is polled before
    each slope step (any slopes give sound bounds, so stopping early only loosens them: a server uses it to stop
    work whose caller has gone)."""
    params = params.detach()
    with torch.no_grad():
        state = walk(spec, params, input_box, deeppoly_relaxation, backsub_intersect_bounds)
    return optimise_slopes(spec, params, state, C, steps, step_size, init, sides, should_stop)


def optimise_slopes(spec: NetSpec, params: torch.Tensor, state: Walk, C: torch.Tensor | None, steps: int,
                    step_size: float, init: float | Literal["deeppoly"], sides: Sides = "both",
                    should_stop: Callable[[], bool] | None = None, splits: Mapping[int, torch.Tensor] | None = None,
                    beta_step_size: float = 0.05, closed_form: bool = True) -> Box:
    """alpha-CROWN's slope optimisation over a finished walk (whose bounds may carry branch-and-bound splits).

    With ``splits`` (ReLU layer index -> [B, *shape] in {-1, 0, 1}, the walk's subdomains) the split
    constraints also enter the bound as beta-CROWN's Lagrangian terms, one multiplier beta >= 0 per
    row and split neuron, optimised with the slopes (projected signed-gradient steps of ``beta_step_size``).
    The gradients of the slopes and of the split terms come in closed form (:mod:`.slope_gradients`,
    ``closed_form``); ``closed_form=False`` takes them by autograd through the walk (the same values, a graph
    of every step).
    """
    if closed_form:
        return _optimise_closed_form(spec, params, state, C, steps, step_size, init, sides, should_stop,
                                     _split_signs(state, splits), beta_step_size)
    start_value = 0.0 if init == "deeppoly" else float(init)
    rows = (2 if sides == "both" else 1) * (C.shape[1] if C is not None else spec.num_outputs)
    alphas: dict[int, torch.Tensor] = {}
    for index, bounds in state.pre_relu.items():
        shape = (*bounds.lower.shape[:2], rows, 1, *bounds.lower.shape[2:])
        if init == "deeppoly":
            start = deeppoly_lower_slope(bounds).unsqueeze(2).unsqueeze(3).expand(shape)
        else:
            start = torch.full(shape, start_value, dtype=bounds.lower.dtype, device=bounds.lower.device)
        alphas[index] = start.contiguous()
    signs = _split_signs(state, splits)
    betas = {index: torch.zeros_like(alphas[index]) for index in signs}
    best: Box | None = None
    for optimising in _evaluations(steps if alphas else 0, should_stop):
        grads: tuple[torch.Tensor | None, ...] = ()
        with torch.set_grad_enabled(optimising):
            for tensor in (*alphas.values(), *betas.values()):
                tensor.requires_grad_(optimising)
            relaxations = {i: _alpha_relaxation(state.pre_relu[i], a, -betas[i] * signs[i] if i in betas else None)
                           for i, a in alphas.items()}
            bounds = final_bounds(spec, params, state, C, relaxations, sides)
            if optimising:
                grads = _autograd_gradients(bounds, sides, [*alphas.values(), *betas.values()])
        lower, upper = bounds.lower.detach(), bounds.upper.detach()
        best = Box(lower, upper) if best is None else Box(torch.maximum(best.lower, lower),
                                                          torch.minimum(best.upper, upper))
        if optimising:
            alpha_grads, beta_grads = grads[:len(alphas)], grads[len(alphas):]
            alphas = {i: a.detach() if g is None else (a.detach() + step_size * g.sign()).clamp(0, 1)
                      for (i, a), g in zip(alphas.items(), alpha_grads)}
            betas = {i: b.detach() if g is None else (b.detach() + beta_step_size * g.sign()).clamp(min=0)
                     for (i, b), g in zip(betas.items(), beta_grads)}
    assert best is not None
    return best


def _evaluations(steps: int, should_stop: Callable[[], bool] | None) -> Iterator[bool]:
    """One item per evaluation of the bound (True: a slope step follows), the last one without a step; polls
    ``should_stop`` before each step and makes the next evaluation the last when it says so. No ReLU
    (``steps`` 0): DeepPoly is exact and one evaluation is all."""
    for _ in range(steps):
        if should_stop is not None and should_stop():
            break
        yield True
    yield False


def _split_signs(state: Walk, splits: Mapping[int, torch.Tensor] | None) -> dict[int, torch.Tensor]:
    """Per ReLU layer with a split neuron: +1 (active) / -1 (inactive) / 0 per subdomain, [1, B, 1, 1, *shape]."""
    signs: dict[int, torch.Tensor] = {}
    for index, bounds in state.pre_relu.items():
        split = None if splits is None else splits.get(index)
        if split is not None and bool((split != 0).any()):
            signs[index] = split.to(bounds.lower.dtype).unsqueeze(0).unsqueeze(2).unsqueeze(3)
    return signs


def _optimise_closed_form(spec: NetSpec, params: torch.Tensor, state: Walk, C: torch.Tensor | None, steps: int,
                          step_size: float, init: float | Literal["deeppoly"], sides: Sides,
                          should_stop: Callable[[], bool] | None, signs: Mapping[int, torch.Tensor],
                          beta_step_size: float) -> Box:
    """The slope (and split-term) optimisation with closed-form gradients.

    Each slope tensor holds the fixed slopes of stable neurons too (1 active, 0 inactive) and only
    unstable entries move, so a relaxation is the tensor as it stands; tensors are kept with the
    members innermost, the layout the native kernels read, so no step copies them. A split neuron's
    term is ``-beta s`` on its input; d(bound)/d(beta) = -s mu, zero where nothing is split.
    """
    rows = (2 if sides == "both" else 1) * (C.shape[1] if C is not None else spec.num_outputs)
    alphas: dict[int, torch.Tensor] = {}
    moves: dict[int, torch.Tensor] = {}
    upper: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for index, bounds in state.pre_relu.items():
        shape = (*bounds.lower.shape[:2], rows, 1, *bounds.lower.shape[2:])
        active, unstable = (t.unsqueeze(2).unsqueeze(3) for t in indicators(bounds))  # 0/1 floats
        if init == "deeppoly":
            start = deeppoly_lower_slope(bounds).unsqueeze(2).unsqueeze(3).expand(shape)
        else:
            start = torch.add(active, unstable, alpha=float(init)).expand(shape)  # init where unstable, else 0/1
        alphas[index] = _members_last(start)
        moves[index] = unstable * step_size
        base = deeppoly_relaxation(bounds)
        upper[index] = base.upper_slope, base.upper_offset
    betas = {index: torch.zeros_like(alphas[index]) for index in signs}
    best: Box | None = None
    for optimising in _evaluations(steps if alphas else 0, should_stop):
        relaxations = {i: RowwiseRelaxation(a, None, *upper[i], -betas[i] * signs[i] if i in betas else None)
                       for i, a in alphas.items()}
        if optimising:
            bounds, grads, term_grads = bounds_and_slope_gradients(spec, params, state, C, relaxations, sides)
            alphas = {i: torch.addcmul(a, grads[i].sign_(), moves[i]).clamp_(0, 1) for i, a in alphas.items()}
            betas = {i: (b - beta_step_size * (term_grads[i] * signs[i]).sign_()).clamp_(min=0)
                     for i, b in betas.items()}
        else:  # the last evaluation needs no gradients (and runs on the native kernels)
            bounds = final_bounds(spec, params, state, C, relaxations, sides)
        best = bounds if best is None else Box(torch.maximum(best.lower, bounds.lower),
                                               torch.minimum(best.upper, bounds.upper))
    assert best is not None
    return best


def _autograd_gradients(bounds: Box, sides: Sides, tensors: list[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """d(sum of lower bounds - sum of upper bounds)/d(tensors) by autograd through the walk."""
    objective = torch.zeros((), dtype=bounds.upper.dtype, device=bounds.upper.device)
    if sides != "upper":
        objective = objective + bounds.lower.sum()
    if sides != "lower":
        objective = objective - bounds.upper.sum()
    return torch.autograd.grad(objective, tensors, allow_unused=True)


def _members_last(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` ([P, ...]) laid out with the members innermost, as a [P, ...] view: the native kernels read
    per-row slopes in that layout, and elementwise updates keep it, so no step copies them again."""
    return t.movedim(0, -1).contiguous().movedim(-1, 0)
