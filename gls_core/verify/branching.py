"""Which unstable ReLU to split in each subdomain.

``widest``: the neuron whose DeepPoly upper line is farthest from the ReLU, -l u / (u - l) (the
triangle's height, the looseness a split removes), over all layers.
``widest-early``: the same score, scaled down by layer depth, so that splits high in the network,
which tighten every layer above them, go first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..bounds.types import Box

Choice = tuple[int, int]  # (ReLU layer index, flat neuron index)


class HasBounds(Protocol):
    pre_relu: dict[int, Box]
    splits: dict[int, torch.Tensor]


def _triangle_height(bounds: Box, split: torch.Tensor) -> torch.Tensor:
    lower, upper = bounds.lower.reshape(-1), bounds.upper.reshape(-1)
    unstable = (lower < 0) & (upper > 0) & (split.reshape(-1) == 0)
    height = -lower * upper / (upper - lower).clamp(min=1e-12)
    return torch.where(unstable, height, torch.full_like(height, -1.0))


def _scored(domains: Sequence[HasBounds], depth_weight: float) -> list[Choice]:
    choices: list[Choice] = []
    for domain in domains:
        best: tuple[float, int, int] = (-1.0, -1, -1)
        for depth, (index, bounds) in enumerate(sorted(domain.pre_relu.items())):
            scores = _triangle_height(bounds, domain.splits[index]) * (depth_weight ** depth)
            value, neuron = scores.max(0)
            if float(value) > best[0]:
                best = (float(value), index, int(neuron))
        if best[1] < 0:
            raise ValueError("a subdomain with no unstable ReLU cannot be split")
        choices.append((best[1], best[2]))
    return choices


BRANCHING: dict[str, Callable[[Sequence[HasBounds]], list[Choice]]] = {
    "widest": lambda domains: _scored(domains, 1.0),
    "widest-early": lambda domains: _scored(domains, 0.5),
}
