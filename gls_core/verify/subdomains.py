"""Bounds for a batch of subdomains of one property: the engine's walk with split ReLUs as data.

A subdomain fixes some ReLUs to be active (input >= 0) or inactive (input <= 0). The splits enter
the walk as one more intermediate-bound step: after a layer's pre-activation bounds are computed,
split neurons have their lower (active) or upper (inactive) bound clamped at 0, so the relaxation
of a split neuron is exact and every later layer is re-bounded with it. Subdomains are the batch
axis of the engine, as inputs are in training: N subdomains cost one batched call.

The bounds may be computed in float32 (``precision``) while the search keeps float64: CPUs convolve
float32 several times faster (float64 convolutions have no vectorised kernels in torch's CPU backend).
What leaves in float64 is widened by a rounding slack first, so a float32 bound is never tighter than
its exact value by more than the slack covers (see :func:`widened`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..bounds.alpha_crown import optimise_slopes
from ..bounds.layerwise import Intermediate, Walk, backsub_intersect_bounds, final_bounds, walk
from ..bounds.relu import deeppoly_relaxation
from ..bounds.types import Box
from ..nets.spec import NetSpec, ReLU
from ..relaxations import ALPHA_CROWN, DEEPPOLY
from .property import Property

Splits = dict[int, torch.Tensor]
"""ReLU layer index -> [N, *shape] int8 per subdomain: +1 active (input >= 0), -1 inactive (<= 0), 0 free."""

BOUND_METHODS = (DEEPPOLY, ALPHA_CROWN)
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
FLOAT32_SLACK = 1e-4
"""Relative slack on float32 bounds: 1e-4 * (1 + |bound|). The unit roundoff is 6e-8. On CNN3 and CNN3-tiny
subdomains (6 inputs, 64 random split sets each, 8 slope steps) float32 and float64 bounds differed by at most
4.3% of this slack, trajectories of the slope steps included (bench/verify_precision.py)."""


def widened(box: Box) -> Box:
    """Float32 bounds made safe in float64: lower - slack, upper + slack (infinite bounds as they are)."""
    return Box(_shifted(box.lower, -1.0), _shifted(box.upper, 1.0))


def _safe(bounds: Box, parent: Box | None, split: torch.Tensor | None) -> Box:
    """Float32 ReLU input bounds in float64: widened, within the parent's (already safe: the slack is not paid
    again at every depth), and the splits' clamps at 0 kept exact (they are the subdomain, not a computation)."""
    safe = widened(bounds)
    return split_applied(safe if parent is None else safe.intersect(parent), split)


def split_applied(box: Box, split: torch.Tensor | None) -> Box:
    """ReLU input bounds with a subdomain's splits: active neurons' lower bound, inactive ones' upper, clamped at 0."""
    if split is None:
        return box
    return Box(torch.where(split > 0, box.lower.clamp(min=0), box.lower),
               torch.where(split < 0, box.upper.clamp(max=0), box.upper))


def _shifted(bound: torch.Tensor, direction: float) -> torch.Tensor:
    wide = bound.to(torch.float64)
    return torch.where(torch.isfinite(wide), wide + direction * FLOAT32_SLACK * (1 + wide.abs()), wide)


@dataclass(frozen=True)
class Bounded:
    """Bounds of N subdomains."""

    lower: torch.Tensor  # [N, K] lower bounds of the property rows (+inf where the subdomain is empty)
    pre_relu: dict[int, Box]  # ReLU layer index -> bounds of its input [N, *shape], splits applied
    empty: torch.Tensor  # [N] the split constraints contradict the bounds: no input lies there


def no_splits(spec: NetSpec, count: int = 1) -> Splits:
    return {index: torch.zeros(count, *spec.shapes[index], dtype=torch.int8)
            for index, layer in enumerate(spec.layers) if isinstance(layer, ReLU)}


def with_splits(inner: Intermediate, splits: Splits) -> Intermediate:
    """An intermediate-bound step that applies ``inner`` and then the splits of the ReLU above."""

    def bounded(spec: NetSpec, params: torch.Tensor, state: Walk, index: int, reference: Box) -> Box:
        box = inner(spec, params, state, index, reference)
        return split_applied(box, splits.get(index + 1))

    return bounded


def parent_bounds(parents: dict[int, Box]) -> Intermediate:
    """An intermediate-bound step that takes each ReLU's input bounds from the subdomains' parents ([N, *shape]).

    A child lies inside its parent, so the parent's bounds hold on it; intersected with the interval
    step they cost no back-substitution, which is most of a walk's time (beta-CROWN's branch and bound
    also keeps the intermediate bounds and tightens only the final one, with the split terms).
    """

    def bounded(spec: NetSpec, params: torch.Tensor, state: Walk, index: int, reference: Box) -> Box:
        box = parents.get(index + 1)
        return reference if box is None else reference.intersect(Box(box.lower.unsqueeze(0), box.upper.unsqueeze(0)))

    return bounded


def bound_subdomains(spec: NetSpec, theta: torch.Tensor, prop: Property, splits: Splits,
                     method: str = ALPHA_CROWN, alpha_steps: int = 8, alpha_step_size: float = 0.1,
                     should_stop: Callable[[], bool] | None = None, parents: dict[int, Box] | None = None,
                     precision: str = "float64") -> Bounded:
    """Lower bounds of the property rows on every subdomain, in one batched walk.

    With ``parents`` (ReLU layer index -> bounds of its input on each subdomain's parent, [N, *shape])
    the intermediate bounds are the parents' with the splits applied (:func:`parent_bounds`), not
    back-substituted again.

    ``should_stop`` (polled before each slope step) ends the alpha-CROWN steps early, e.g. at the
    verifier's deadline; the slopes reached so far still give sound bounds.

    ``precision`` "float32" bounds in float32 and returns the property's dtype, widened (:func:`widened`).
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"subdomain bounds: method must be one of {BOUND_METHODS}, got {method!r}")
    count = next(iter(splits.values())).shape[0] if splits else 1  # no ReLU: one region, no splits
    dtype = PRECISIONS[precision]
    reduced = dtype != prop.lower.dtype
    params = theta.detach().to(dtype).view(1, -1)
    box = Box(prop.lower.to(dtype).unsqueeze(0).expand(count, *prop.lower.shape),
              prop.upper.to(dtype).unsqueeze(0).expand(count, *prop.upper.shape))
    C = prop.C.to(dtype).unsqueeze(0).expand(count, *prop.C.shape)
    inherited = None if parents is None else {index: Box(b.lower.to(dtype), b.upper.to(dtype))
                                              for index, b in parents.items()}
    with torch.no_grad():
        inner = backsub_intersect_bounds if inherited is None else parent_bounds(inherited)
        state = walk(spec, params, box, deeppoly_relaxation, with_splits(inner, splits))
    pre_relu = {index: Box(bounds.lower[0], bounds.upper[0]) for index, bounds in state.pre_relu.items()}
    if reduced:
        pre_relu = {index: _safe(bounds, None if parents is None else parents.get(index), splits.get(index))
                    for index, bounds in pre_relu.items()}
    empty = torch.zeros(count, dtype=torch.bool)
    for bounds in pre_relu.values():
        empty |= (bounds.lower > bounds.upper).flatten(1).any(1)
    if method == ALPHA_CROWN and alpha_steps > 0:
        result = optimise_slopes(spec, params, state, C, alpha_steps, alpha_step_size, "deeppoly", "lower",
                                 should_stop, splits=splits)
    else:
        with torch.no_grad():
            result = final_bounds(spec, params, state, C, sides="lower")
    lower = result.lower[0] + prop.d.to(dtype)
    if reduced:
        lower = widened(Box(lower, lower)).lower
    lower = torch.where(empty.unsqueeze(1), torch.full_like(lower, torch.inf), lower)
    return Bounded(lower.detach(), pre_relu, empty)
