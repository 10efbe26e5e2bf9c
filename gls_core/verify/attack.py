"""Attacks on a property: PGD whose restarts are one batch, output-diversified starts, per-group margins.

Restarts are the batch axis: R restarts of every attacked group cost one batched forward and
backward per step, which on these networks is a few times the cost of one restart, not R times.
Each restart first takes a few output-diversified steps (ODI, Tashiro et al. 2020): ascending a
random direction ``w . f(x)`` of the output space spreads the restarts over the outputs the box
can reach, where uniform input starts mostly land near the same point. Then every restart descends
its target: the property's worst group margin (untargeted) or one group's margin (targeted; for a
robustness row that is the margin against one class). Restart 0 of each target starts at the box's
centre and is not diversified. A point is reported only after a plain forward pass confirms that
it lies in the box and violates the property (:func:`checked`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..attacks import projected_ascent
from ..nets.spec import NetSpec
from ..population import forward
from .property import Property


def attack(spec: NetSpec, theta: torch.Tensor, prop: Property, steps: int, restarts: int,
           generator: torch.Generator | None = None, groups: list[int] | None = None,
           should_stop: Callable[[], bool] | None = None, diversify: int = 0,
           starts: torch.Tensor | None = None) -> torch.Tensor | None:
    """A checked counterexample, or None.

    Without ``groups`` every restart descends the worst group margin; with ``groups`` each listed
    group is attacked on its own, ``restarts`` times, all in one batch. ``diversify`` ODI steps come
    first. ``starts`` [S, *input_shape] replace the first S uniform starts (e.g. points a bound
    found promising). ``should_stop`` is polled before each step; the attack also stops as soon as
    any restart violates the property, and the best points so far are still checked.
    """
    params = theta.detach().to(prop.lower.dtype)
    targets: list[int | None] = [None] if groups is None else list(groups)
    count = restarts * len(targets)
    lower = prop.lower.unsqueeze(0).expand(count, *prop.lower.shape)
    upper = prop.upper.unsqueeze(0).expand(count, *prop.upper.shape)
    start = lower + (upper - lower) * torch.rand(lower.shape, generator=generator, dtype=lower.dtype)
    if starts is not None:
        given = starts.to(lower.dtype)[:count]
        start[:given.shape[0]] = torch.maximum(torch.minimum(given, prop.upper), prop.lower)
    start[::restarts] = (prop.lower + prop.upper) / 2
    target = None if groups is None else torch.tensor(groups).repeat_interleave(restarts)
    found = [False]

    def stop() -> bool:
        return found[0] or bool(should_stop and should_stop())

    def violated(values: torch.Tensor) -> torch.Tensor:
        fooled = prop.worst(values.detach()) <= 0
        found[0] = found[0] or bool(fooled.any())
        return fooled

    def margin(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values = prop.rows(spec, params, point)
        margins = prop.margins(values)
        chosen = margins.min(1).values if target is None else margins.gather(1, target.view(-1, 1)).squeeze(1)
        return -chosen, violated(values)

    candidates = []
    with torch.inference_mode(False), torch.enable_grad():
        if diversify > 0:
            direction = torch.rand(count, spec.num_outputs, generator=generator, dtype=lower.dtype) * 2 - 1
            direction[::restarts] = 0.0  # the centre start stays where it is

            def spread(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                logits = forward(spec, params.view(1, -1), point)[0]
                return (logits * direction).sum(1), violated(logits.detach() @ prop.C.T.to(logits.dtype)
                                                             + prop.d.to(logits.dtype))

            spread_best = projected_ascent(spread, start, lower, upper, (upper - lower) / 2, diversify, stop)
            start = spread_best.point.detach()
            candidates.append(start)
        if not stop():
            step = 2.5 * (upper - lower) / 2 / max(steps, 1)
            candidates.append(projected_ascent(margin, start, lower, upper, step, steps, stop).point.detach())
    return checked(spec, params, prop, torch.cat(candidates) if candidates else start)


def checked(spec: NetSpec, theta: torch.Tensor, prop: Property, points: torch.Tensor) -> torch.Tensor | None:
    """The first of ``points`` that lies in the box and violates the property by a plain forward pass, or None."""
    points = torch.maximum(torch.minimum(points.to(prop.lower.dtype), prop.upper), prop.lower)
    with torch.no_grad():
        worst = prop.worst(prop.rows(spec, theta, points))
    hits = (worst <= 0).nonzero()
    return points[int(hits[0])].clone() if hits.numel() else None
