"""Interval bound propagation (Mirman et al., 2018; Gowal et al., 2018), Eq. (2) of the paper.

Boxes are carried as centre and radius: W c + b and |W| r, one batched call per layer.
"""

from __future__ import annotations

import torch

from ..nets.spec import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU
from ..population import conv_forward, linear_forward
from . import kernels
from .types import Box


def interval_affine(spec: NetSpec, params: torch.Tensor, index: int, box: Box, shared: bool) -> Box:
    """Bounds of affine layer ``index``'s output over ``box`` ([B, ...] if shared, else [P, B, ...])."""
    layer = spec.layers[index]
    weight, bias = spec.weight(params, index), spec.bias(params, index)
    center, radius = box.center, box.radius
    if isinstance(layer, Conv2d) and shared:  # one convolution with P x O output channels
        mid = conv_forward(center, weight, bias, layer, shared)
        rad = conv_forward(radius, weight.abs(), None, layer, shared)
    elif isinstance(layer, Conv2d):
        mid = kernels.conv_members(center, weight, bias, layer)
        rad = kernels.conv_members(radius, weight.abs(), None, layer)
    elif isinstance(layer, Linear):
        mid = linear_forward(center, weight, bias, shared)
        rad = linear_forward(radius, weight.abs(), None, shared)
    else:
        raise TypeError(f"layer {index} is not affine")
    return Box(mid - rad, mid + rad)


def propagate_box(spec: NetSpec, params: torch.Tensor, box: Box, start: int, stop: int,
                  shared: bool, pre_relu: dict[int, Box] | None = None) -> tuple[Box, bool]:
    """Interval-propagate ``box`` through layers [start, stop); record ReLU inputs in ``pre_relu``."""
    for index in range(start, stop):
        layer = spec.layers[index]
        if isinstance(layer, (Conv2d, Linear)):
            box = interval_affine(spec, params, index, box, shared)
            shared = False
        elif isinstance(layer, ReLU):
            if pre_relu is not None:
                pre_relu[index] = box
            box = Box(box.lower.clamp(min=0), box.upper.clamp(min=0))
        elif isinstance(layer, Flatten):
            lead = 1 if shared else 2
            box = Box(box.lower.flatten(lead), box.upper.flatten(lead))
        elif isinstance(layer, Normalize):
            raise ValueError(f"layer {index}: Normalize is only supported as the first layer")
    return box, shared


def spec_interval(spec: NetSpec, params: torch.Tensor, box: Box, C: torch.Tensor | None) -> Box:
    """IBP bounds of C @ logits given the box of the last affine layer's input ([P, B, I]).

    Folding C into the last layer first (C W, C b) is tighter than subtracting logit intervals.
    """
    index = len(spec.layers) - 1
    if C is None:
        return interval_affine(spec, params, index, box, shared=False)
    weight = torch.einsum("bkc,pci->pbki", C, spec.weight(params, index))
    bias = torch.einsum("bkc,pc->pbk", C, spec.bias(params, index))
    center, radius = box.center.unsqueeze(-1), box.radius.unsqueeze(-1)
    mid = torch.matmul(weight, center).squeeze(-1) + bias
    rad = torch.matmul(weight.abs(), radius).squeeze(-1)
    return Box(mid - rad, mid + rad)


def ibp(spec: NetSpec, params: torch.Tensor, box: Box, start: int, C: torch.Tensor | None,
        pre_relu: dict[int, Box] | None = None) -> Box:
    """IBP bounds of the network (or of C @ logits) from the network-input box."""
    last = len(spec.layers) - 1
    penultimate, shared = propagate_box(spec, params, box, start, last, True, pre_relu)
    if shared:
        penultimate = Box(penultimate.lower.expand(params.shape[0], *penultimate.lower.shape),
                          penultimate.upper.expand(params.shape[0], *penultimate.upper.shape))
    return spec_interval(spec, params, penultimate, C)
