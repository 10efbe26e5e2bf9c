"""Which unstable ReLU to split in each subdomain.

``widest``: the neuron whose DeepPoly upper line is farthest from the ReLU, -l u / (u - l) (the
triangle's height, the looseness a split removes), over all layers.
``widest-early``: the same score, scaled down by layer depth, so that splits high in the network,
which tighten every layer above them, go first.
``babsr``: the neuron whose upper-line intercept costs the final bound most (Bunel et al., 2020):
|nu_j| * b_j, with nu_j the coefficient that back-substituting the open property rows gives the
ReLU's output and b_j = -l u / (u - l) the intercept a split removes. One backward pass over a
batch of subdomains gives every nu (autograd through the final back-substitution).
``fsb``: filtered smart branching (De Palma et al., 2021): the ``FSB_CANDIDATES`` best neurons by
the babsr score (and by triangle height) are each tried: both children are bounded by the final
back-substitution with that one neuron made exact (the intermediate bounds kept), all candidates
of all subdomains in one batch, and the split whose worse child has the highest bound is taken.

Branching only chooses; soundness never depends on it (every child is bounded in full afterwards).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..bounds.layerwise import Walk, final_bounds
from ..bounds.region import network_input
from ..bounds.relu import deeppoly_relaxation
from ..bounds.types import Box, ReluRelaxation
from ..nets.spec import NetSpec
from .property import Property

Choice = tuple[int, int]  # (ReLU layer index, flat neuron index)
DEFAULT_BRANCHING = "babsr"  # measured best on CNN3 (docs/verification.md): most inputs decided, tightest bounds left
FSB_CANDIDATES = 4  # neurons tried per subdomain: the best by babsr score, then by triangle height


class HasBounds(Protocol):
    pre_relu: dict[int, Box]
    splits: dict[int, torch.Tensor]
    lower: torch.Tensor  # [K] the subdomain's bounds of the property rows


@dataclass(frozen=True)
class Problem:
    """What the score-based rules need besides the subdomains: the network and the property."""

    spec: NetSpec
    theta: torch.Tensor
    prop: Property


def _unstable(bounds: Box, split: torch.Tensor) -> torch.Tensor:
    lower, upper = bounds.lower.reshape(bounds.lower.shape[0], -1), bounds.upper.reshape(bounds.upper.shape[0], -1)
    return (lower < 0) & (upper > 0) & (split.reshape(split.shape[0], -1) == 0)


def _heights(bounds: Box) -> torch.Tensor:
    lower, upper = bounds.lower.reshape(bounds.lower.shape[0], -1), bounds.upper.reshape(bounds.upper.shape[0], -1)
    return -lower * upper / (upper - lower).clamp(min=1e-12)


def _stacked(domains: Sequence[HasBounds]) -> tuple[dict[int, Box], dict[int, torch.Tensor]]:
    """Pre-activation bounds [N, *shape] and splits [N, *shape] of N subdomains, per ReLU layer."""
    layers = sorted(domains[0].pre_relu)
    bounds = {i: Box(torch.stack([d.pre_relu[i].lower for d in domains]),
                     torch.stack([d.pre_relu[i].upper for d in domains])) for i in layers}
    splits = {i: torch.stack([d.splits[i] for d in domains]) for i in layers}
    return bounds, splits


def _flat_scores(per_layer: dict[int, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """[N, total] scores over every layer's neurons, and (layer, offset) of each layer's block."""
    blocks, layout, offset = [], [], 0
    for index, scores in sorted(per_layer.items()):
        blocks.append(scores)
        layout.append((index, offset))
        offset += scores.shape[1]
    return torch.cat(blocks, 1), layout


def _choice(flat: int, layout: list[tuple[int, int]]) -> Choice:
    layer, start = max((entry for entry in layout if entry[1] <= flat), key=lambda entry: entry[1])
    return layer, flat - start


def _masked(scores: torch.Tensor, unstable: torch.Tensor) -> torch.Tensor:
    return torch.where(unstable, scores, torch.full_like(scores, -1.0))


def _best(per_layer: dict[int, torch.Tensor], count: int) -> list[Choice]:
    flat, layout = _flat_scores(per_layer)
    values, neurons = flat.max(1)
    if bool((values < 0).any()):
        raise ValueError("a subdomain with no unstable ReLU cannot be split")
    return [_choice(int(n), layout) for n in neurons[:count]]


def _scored(domains: Sequence[HasBounds], depth_weight: float) -> list[Choice]:
    bounds, splits = _stacked(domains)
    per_layer = {i: _masked(_heights(b) * depth_weight ** depth, _unstable(b, splits[i]))
                 for depth, (i, b) in enumerate(sorted(bounds.items()))}
    return _best(per_layer, len(domains))


def _walk(problem: Problem, bounds: dict[int, Box], relaxations: dict[int, ReluRelaxation], count: int) -> Walk:
    prop = problem.prop
    box = Box(prop.lower.unsqueeze(0).expand(count, *prop.lower.shape),
              prop.upper.unsqueeze(0).expand(count, *prop.upper.shape))
    first_box, first = network_input(problem.spec, box)
    return Walk(first_box, first, {i: Box(b.lower.unsqueeze(0), b.upper.unsqueeze(0)) for i, b in bounds.items()},
                relaxations)


def _final_lower(problem: Problem, state: Walk, relaxations: dict[int, ReluRelaxation], count: int) -> torch.Tensor:
    """[count, K] lower bounds of the property rows by the final back-substitution."""
    prop = problem.prop
    params = problem.theta.to(prop.lower.dtype).view(1, -1)
    C = prop.C.to(prop.lower.dtype).unsqueeze(0).expand(count, *prop.C.shape)
    lower = final_bounds(problem.spec, params, state, C, relaxations, sides="lower").lower[0]
    return lower + prop.d.to(prop.lower.dtype)


def intercept_scores(problem: Problem, domains: Sequence[HasBounds]) -> dict[int, torch.Tensor]:
    """babsr's score per ReLU layer, [N, neurons]: what each unstable neuron's intercept costs the open rows."""
    bounds, splits = _stacked(domains)
    return _intercept_scores(problem, domains, bounds, splits)


def _intercept_scores(problem: Problem, domains: Sequence[HasBounds], bounds: dict[int, Box],
                      splits: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    count = len(domains)
    with torch.enable_grad():
        offsets: dict[int, torch.Tensor] = {}
        relaxations: dict[int, ReluRelaxation] = {}
        for index, box in bounds.items():
            relaxation = deeppoly_relaxation(Box(box.lower.unsqueeze(0), box.upper.unsqueeze(0)))
            assert relaxation.upper_offset is not None
            offsets[index] = relaxation.upper_offset.detach().clone().requires_grad_(True)
            relaxations[index] = ReluRelaxation(relaxation.lower_slope, relaxation.lower_offset,
                                                relaxation.upper_slope, offsets[index])
        lower = _final_lower(problem, _walk(problem, bounds, relaxations, count), relaxations, count)
        open_rows = torch.stack([d.lower <= 0 for d in domains])
        objective = torch.where(open_rows, lower, torch.zeros_like(lower)).sum()
        grads = torch.autograd.grad(objective, list(offsets.values()), allow_unused=True)
    scores = {}
    for (index, offset), grad in zip(offsets.items(), grads):
        gain = torch.zeros_like(offset) if grad is None else grad.clamp(max=0).neg() * offset.detach()
        scores[index] = _masked(gain[0].reshape(count, -1), _unstable(bounds[index], splits[index]))
    return scores


def _babsr(domains: Sequence[HasBounds], problem: Problem) -> list[Choice]:
    bounds, splits = _stacked(domains)
    scores = _intercept_scores(problem, domains, bounds, splits)
    # ties (e.g. every intercept unused by the open rows) go to the widest triangle
    per_layer = {i: torch.where(s >= 0, s + 1e-9 * _heights(bounds[i]), s) for i, s in scores.items()}
    return _best(per_layer, len(domains))


def _candidates(problem: Problem, domains: Sequence[HasBounds], bounds: dict[int, Box],
                splits: dict[int, torch.Tensor], heights: torch.Tensor, count: int) -> torch.Tensor:
    """[N, count] flat neuron indices to try: the best by babsr score, then the widest not yet taken."""
    babsr, _ = _flat_scores(_intercept_scores(problem, domains, bounds, splits))
    half = max(1, count // 2)
    picked = babsr.topk(min(half, babsr.shape[1]), 1).indices
    heights = heights.scatter(1, picked, -2.0)
    rest = heights.topk(min(count - picked.shape[1], heights.shape[1]), 1).indices
    return torch.cat([picked, rest], 1)


def _fsb(domains: Sequence[HasBounds], problem: Problem) -> list[Choice]:
    bounds, splits = _stacked(domains)
    count = len(domains)
    heights, layout = _flat_scores({i: _masked(_heights(b), _unstable(b, splits[i])) for i, b in bounds.items()})
    candidates = _candidates(problem, domains, bounds, splits, heights, FSB_CANDIDATES)  # [N, M]
    width = candidates.shape[1]
    valid = heights.gather(1, candidates) >= 0  # [N, M] an unstable, unsplit neuron
    if not bool(valid.any(1).all()):
        raise ValueError("a subdomain with no unstable ReLU cannot be split")
    # children: subdomain n, candidate m, sign s (active, inactive) -> row (n * M + m) * 2 + s
    parent = torch.arange(count).repeat_interleave(2 * width)
    target = candidates.repeat_interleave(2, 1).reshape(-1)
    active = torch.tensor([True, False]).repeat(count * width)
    relaxations: dict[int, ReluRelaxation] = {}
    children = {i: Box(b.lower[parent], b.upper[parent]) for i, b in bounds.items()}
    for index, start in layout:
        relaxation = deeppoly_relaxation(Box(children[index].lower.unsqueeze(0), children[index].upper.unsqueeze(0)))
        size = children[index].lower[0].numel()
        local = target - start
        here = (local >= 0) & (local < size)
        rows = here.nonzero().view(-1)
        slopes = [relaxation.lower_slope, relaxation.upper_slope]
        offset = relaxation.upper_offset
        assert offset is not None
        lower_slope, upper_slope, upper_offset = (t.expand(1, len(parent), *children[index].lower.shape[1:]).clone()
                                                  for t in (*slopes, offset))
        value = active[rows].to(lower_slope.dtype)
        for tensor, new in ((lower_slope, value), (upper_slope, value), (upper_offset, torch.zeros_like(value))):
            tensor.view(1, len(parent), -1)[0, rows, local[rows]] = new
        relaxations[index] = ReluRelaxation(lower_slope, relaxation.lower_offset, upper_slope, upper_offset)
    with torch.no_grad():
        lower = _final_lower(problem, _walk(problem, children, relaxations, len(parent)), relaxations, len(parent))
    worst_child = lower.min(1).values.view(count, width, 2).min(2).values
    worst_child = torch.where(valid, worst_child, torch.full_like(worst_child, -torch.inf))
    best = worst_child.argmax(1)
    return [_choice(int(candidates[n, int(best[n])]), layout) for n in range(count)]


Rule = Callable[[Sequence[HasBounds], Problem], list[Choice]]
BRANCHING: dict[str, Rule] = {
    "widest": lambda domains, problem: _scored(domains, 1.0),
    "widest-early": lambda domains, problem: _scored(domains, 0.5),
    "babsr": _babsr,
    "fsb": _fsb,
}
