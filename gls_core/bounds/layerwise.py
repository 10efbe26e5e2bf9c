"""The layer-by-layer walk shared by HBox, CROWN-IBP, DeepPoly and alpha-CROWN.

Every ReLU needs bounds on its input before it can be relaxed. The first affine layer's bounds
are exact from the input box; each later affine layer gets a one-step interval bound (cheap and
sound) and, when the method asks for it, back-substituted bounds for its neurons.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from ..nets.spec import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU
from .backsub import Sides, backsubstitute
from .ibp import interval_affine
from .region import network_input
from .types import Box, ReluRelaxation

Relax = Callable[[Box], ReluRelaxation]
Intermediate = Literal["interval", "backsub", "backsub-intersect"]


@dataclass(frozen=True)
class Walk:
    """What the final back-substitution needs: the network-input box and every ReLU's relaxation."""

    box: Box  # input of layer ``first`` ([B, *shape])
    first: int  # index of the first affine layer
    pre_relu: dict[int, Box]  # ReLU layer index -> bounds of its input, [P, B, *shape]
    relaxations: dict[int, ReluRelaxation]


def check_supported(spec: NetSpec) -> None:
    """Back-substitution assumes: optional Normalize first, a Linear last, a ReLU before every later affine layer."""
    layers = spec.layers
    if any(isinstance(layer, Normalize) for layer in layers[1:]):
        raise ValueError("Normalize is only supported as the first layer")
    if not isinstance(layers[-1], Linear):
        raise ValueError("the last layer must be Linear (the logits)")
    seen_affine = False
    for index, layer in enumerate(layers):
        if isinstance(layer, (Conv2d, Linear)):
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
    check_supported(spec)
    box, first = network_input(spec, input_box)
    shared = True
    current = box
    pre_relu: dict[int, Box] = {}
    relaxations: dict[int, ReluRelaxation] = {}
    for index in range(first, len(spec.layers) - 1):
        layer = spec.layers[index]
        if isinstance(layer, (Conv2d, Linear)):
            reference = interval_affine(spec, params, index, current, shared)
            current = reference
            if intermediate != "interval" and not shared:
                # Only neurons the interval bound leaves unstable need back-substitution: the
                # relaxation of a stable neuron is exact whatever its bounds.
                unstable = (reference.lower < 0) & (reference.upper > 0)
                tight = backsubstitute(spec, params, box, first, index, relaxations, mask=unstable)
                if intermediate == "backsub-intersect":
                    current = reference.intersect(tight)
                else:
                    current = Box(torch.where(unstable, tight.lower, reference.lower),
                                  torch.where(unstable, tight.upper, reference.upper))
            shared = False
        elif isinstance(layer, ReLU):
            pre_relu[index] = current
            relaxations[index] = relax(current)
            current = Box(current.lower.clamp(min=0), current.upper.clamp(min=0))
        elif isinstance(layer, Flatten):
            current = Box(current.lower.flatten(2), current.upper.flatten(2))
    return Walk(box, first, pre_relu, relaxations)


def final_bounds(spec: NetSpec, params: torch.Tensor, state: Walk, C: torch.Tensor | None,
                 relaxations: dict[int, ReluRelaxation] | None = None, sides: Sides = "both") -> Box:
    """Back-substitute C @ logits (or the logits) with the walk's relaxations or given ones."""
    chosen = state.relaxations if relaxations is None else relaxations
    return backsubstitute(spec, params, state.box, state.first, len(spec.layers) - 1, chosen, C, sides=sides)
