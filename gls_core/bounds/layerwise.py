"""The layer-by-layer walk shared by HBox, CROWN-IBP, DeepPoly and alpha-CROWN.

Every ReLU needs bounds on its input before it can be relaxed. The first affine layer's bounds
are exact from the input box; each later affine layer gets a one-step interval bound (cheap and
sound) and, when the method asks for it, back-substituted bounds for its neurons.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..nets.spec import Flatten, Linear, NetSpec, Normalize, ReLU
from .backsub import Sides, backsubstitute
from .region import network_input
from .rules import At, rule_of
from .types import Box, ReluRelaxation

Relax = Callable[[Box], ReluRelaxation]


@dataclass(frozen=True)
class Walk:
    """What the final back-substitution needs: the network-input box and every ReLU's relaxation."""

    box: Box  # input of layer ``first`` ([B, *shape])
    first: int  # index of the first affine layer
    pre_relu: dict[int, Box]  # ReLU layer index -> bounds of its input, [P, B, *shape]
    relaxations: dict[int, ReluRelaxation]


# How an affine layer's output (below the logits) is bounded, given the walk so far and its one-step
# interval bound, which is exact for the first affine layer.
Intermediate = Callable[[NetSpec, torch.Tensor, Walk, int, Box], Box]


def interval_bounds(spec: NetSpec, params: torch.Tensor, state: Walk, index: int, reference: Box) -> Box:
    """The one-step interval bound as it is (CROWN-IBP; exact for the first affine layer)."""
    return reference


def _backsub_unstable(spec: NetSpec, params: torch.Tensor, state: Walk, index: int,
                      reference: Box) -> tuple[torch.Tensor, Box]:
    # The relaxation of a stable neuron is exact whatever its bounds, so only unstable ones are redone.
    unstable = (reference.lower < 0) & (reference.upper > 0)
    return unstable, backsubstitute(spec, params, state.box, state.first, index, state.relaxations, mask=unstable)


def backsub_bounds(spec: NetSpec, params: torch.Tensor, state: Walk, index: int, reference: Box) -> Box:
    """Back-substituted bounds where the interval bound leaves a neuron unstable (HBox)."""
    if index == state.first:
        return reference
    unstable, tight = _backsub_unstable(spec, params, state, index, reference)
    return Box(torch.where(unstable, tight.lower, reference.lower), torch.where(unstable, tight.upper, reference.upper))


def backsub_intersect_bounds(spec: NetSpec, params: torch.Tensor, state: Walk, index: int, reference: Box) -> Box:
    """Back-substituted bounds intersected with the interval bound (DeepPoly, as ERAN and auto_LiRPA do)."""
    if index == state.first:
        return reference
    _, tight = _backsub_unstable(spec, params, state, index, reference)
    return reference.intersect(tight)


def check_supported(spec: NetSpec) -> None:
    """Back-substitution assumes: optional Normalize first, a Linear last, a ReLU before every later affine layer."""
    layers = spec.layers
    if any(isinstance(layer, Normalize) for layer in layers[1:]):
        raise ValueError("Normalize is only supported as the first layer")
    if not isinstance(layers[-1], Linear):
        raise ValueError("the last layer must be Linear (the logits)")
    seen_affine = False
    for index, layer in enumerate(layers):
        if layer.affine:
            if seen_affine:
                below = layers[index - 1]
                if isinstance(below, Flatten):
                    below = layers[index - 2]
                if not isinstance(below, ReLU):
                    raise ValueError(f"layer {index}: every affine layer after the first must follow a ReLU")
            seen_affine = True
        elif isinstance(layer, ReLU) and not seen_affine:
            raise ValueError(f"layer {index}: a ReLU before the first affine layer is not supported")


def walk(spec: NetSpec, params: torch.Tensor, input_box: Box, relax: Relax, intermediate: Intermediate) -> Walk:
    """Bounds and relaxations of every ReLU, layer by layer; ``intermediate`` bounds each later affine layer."""
    check_supported(spec)
    box, first = network_input(spec, input_box)
    state = Walk(box, first, {}, {})
    shared = True
    current = box
    for index in range(first, len(spec.layers) - 1):
        layer = spec.layers[index]
        rule = rule_of(layer)
        if rule.relaxed:
            state.pre_relu[index] = current
            state.relaxations[index] = relax(current)
        current = rule.interval(At(spec, params, index), current, shared)
        if layer.affine:
            current = intermediate(spec, params, state, index, current)
        shared = shared and not layer.affine
    return state


def final_bounds(spec: NetSpec, params: torch.Tensor, state: Walk, C: torch.Tensor | None,
                 relaxations: Mapping[int, ReluRelaxation] | None = None, sides: Sides = "both") -> Box:
    """Back-substitute C @ logits (or the logits) with the walk's relaxations or given ones."""
    chosen = state.relaxations if relaxations is None else relaxations
    return backsubstitute(spec, params, state.box, state.first, len(spec.layers) - 1, chosen, C, sides=sides)
