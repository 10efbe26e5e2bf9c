"""What every layer type does in every relaxation pass, in one table: interval, backward step, footprint.

The walkers (the population forward pass, interval propagation, the DeepPoly walk, the
back-substitution and its memory estimate) loop over layers and ask ``rule_of(layer)``. A layer's
shapes and forward pass are :mod:`gls_core.nets`' (the forward column is ``nets.forward.FORWARD``);
its relaxation is one row here. Each rule receives the layer :class:`At` its place in a network
with a population's weights; ``At`` is re-exported for the walkers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..members import conv_forward, linear_forward
from ..nets.forward import FORWARD, At, Forward
from ..nets.spec import Conv2d, Flatten, Layer, Linear, Normalize, ReLU, Shape
from . import kernels, native
from .coefficients import Coefficients, through_conv, through_flatten, through_linear, through_relu
from .types import Box, ReluRelaxation


@dataclass(frozen=True)
class Footprint:
    """The window one coefficient row sees on the activation reached; ``patch`` (h, w) in patch form."""

    window: Shape
    patch: tuple[int, int] | None


Interval = Callable[[At, Box, bool], Box]
Backward = Callable[[At, Coefficients, Mapping[int, ReluRelaxation]], Coefficients]
Grow = Callable[[Layer, Shape, Footprint], Footprint]


@dataclass(frozen=True)
class LayerRule:
    """One layer type's passes. ``shared``: the input is still the one every member sees ([B, ...])."""

    forward: Forward  # activations [P, B, ...] (or [B, ...] shared) -> outputs
    interval: Interval  # box of the input -> box of the output
    backward: Backward  # rows on the output -> rows on the input
    footprint: Grow  # (layer, its input shape, the rows' window on its output) -> the window on its input
    relaxed: bool = False  # needs bounds on its input and a relaxation (the walk records both)


def rule_of(layer: Layer) -> LayerRule:
    return RULES[type(layer)]


def _only_first(at: At, *_: object) -> object:
    raise ValueError(f"layer {at.index}: Normalize is only supported as the first layer")


def _conv_interval(at: At, box: Box, shared: bool) -> Box:
    layer = at.layer
    assert isinstance(layer, Conv2d)
    weight, bias = at.weight, at.bias
    if shared:  # one convolution with P x O output channels
        mid = conv_forward(box.center, weight, bias, layer, shared)
        rad = conv_forward(box.radius, weight.abs(), None, layer, shared)
        if native.usable(mid, rad) and not (torch.is_grad_enabled() and (mid.requires_grad or rad.requires_grad)):
            # stored members-last, and so every map of the walk computed from them: the kernels read them as they are
            lower, upper = (native.empty_members_last(mid.shape, mid.dtype) for _ in range(2))
            return Box(torch.sub(mid, rad, out=lower), torch.add(mid, rad, out=upper))
    else:
        mid = kernels.conv_members(box.center, weight, bias, layer)
        rad = kernels.conv_members(box.radius, weight.abs(), None, layer)
    return Box(mid - rad, mid + rad)


def _linear_interval(at: At, box: Box, shared: bool) -> Box:
    weight = at.weight
    mid = linear_forward(box.center, weight, at.bias, shared)
    rad = linear_forward(box.radius, weight.abs(), None, shared)
    return Box(mid - rad, mid + rad)


def _relu_interval(at: At, box: Box, shared: bool) -> Box:
    return Box(box.lower.clamp(min=0), box.upper.clamp(min=0))


def _flatten_interval(at: At, box: Box, shared: bool) -> Box:
    lead = 1 if shared else 2
    return Box(box.lower.flatten(lead), box.upper.flatten(lead))


def _conv_backward(at: At, coeffs: Coefficients, relaxations: Mapping[int, ReluRelaxation]) -> Coefficients:
    layer = at.layer
    assert isinstance(layer, Conv2d)
    height, width = at.in_shape[1:]
    return through_conv(coeffs, at.weight, at.bias, layer, (height, width))


def _linear_backward(at: At, coeffs: Coefficients, relaxations: Mapping[int, ReluRelaxation]) -> Coefficients:
    return through_linear(coeffs, at.weight, at.bias)


def _relu_backward(at: At, coeffs: Coefficients, relaxations: Mapping[int, ReluRelaxation]) -> Coefficients:
    return through_relu(coeffs, relaxations[at.index])


def _flatten_backward(at: At, coeffs: Coefficients, relaxations: Mapping[int, ReluRelaxation]) -> Coefficients:
    return through_flatten(coeffs, at.in_shape)


def _conv_footprint(layer: Layer, in_shape: Shape, seen: Footprint) -> Footprint:
    assert isinstance(layer, Conv2d)
    if seen.patch is None:
        return Footprint(in_shape, None)
    size = (seen.patch[0] - 1) * layer.stride + layer.kernel, (seen.patch[1] - 1) * layer.stride + layer.kernel
    return Footprint((layer.in_channels, *size), size)


def _whole_input(layer: Layer, in_shape: Shape, seen: Footprint) -> Footprint:
    return Footprint(in_shape, seen.patch)


def _unchanged(layer: Layer, in_shape: Shape, seen: Footprint) -> Footprint:
    return seen


RULES: dict[type, LayerRule] = {
    Normalize: LayerRule(FORWARD[Normalize], _only_first, _only_first, _only_first),  # type: ignore[arg-type]
    Conv2d: LayerRule(FORWARD[Conv2d], _conv_interval, _conv_backward, _conv_footprint),
    Linear: LayerRule(FORWARD[Linear], _linear_interval, _linear_backward, _whole_input),
    ReLU: LayerRule(FORWARD[ReLU], _relu_interval, _relu_backward, _unchanged, relaxed=True),
    Flatten: LayerRule(FORWARD[Flatten], _flatten_interval, _flatten_backward, _whole_input),
}
