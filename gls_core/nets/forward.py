"""The forward pass of every layer type, for a whole population of weight sets on a batch, in one table.

Shapes use fixed letters: P members, B inputs, D parameters. Activations are ``[P, B, *shape]``;
the network input, shared by all members, is ``[B, *shape]`` until the first affine layer. The
relaxations' rules (:mod:`gls_core.bounds.rules`) take their forward column from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..members import conv_forward, linear_forward, normalize_constants
from .spec import Conv2d, Flatten, Layer, Linear, NetSpec, Normalize, ReLU, Shape


@dataclass(frozen=True)
class At:
    """Layer ``index`` of ``spec`` with the population ``params`` (P x D)."""

    spec: NetSpec
    params: torch.Tensor
    index: int

    @property
    def layer(self) -> Layer:
        return self.spec.layers[self.index]

    @property
    def weight(self) -> torch.Tensor:
        return self.spec.weight(self.params, self.index)

    @property
    def bias(self) -> torch.Tensor:
        return self.spec.bias(self.params, self.index)

    @property
    def in_shape(self) -> Shape:
        return self.spec.shapes[self.index]


Forward = Callable[[At, torch.Tensor, bool], torch.Tensor]
"""(layer in place, activations [P, B, ...] or the shared [B, ...], shared) -> outputs."""


def _normalize_forward(at: At, h: torch.Tensor, shared: bool) -> torch.Tensor:
    layer = at.layer
    assert isinstance(layer, Normalize)
    mean, std = normalize_constants(layer, h)
    return (h - mean) / std


def _conv_forward(at: At, h: torch.Tensor, shared: bool) -> torch.Tensor:
    layer = at.layer
    assert isinstance(layer, Conv2d)
    return conv_forward(h, at.weight, at.bias, layer, shared)


def _linear_forward(at: At, h: torch.Tensor, shared: bool) -> torch.Tensor:
    return linear_forward(h, at.weight, at.bias, shared)


def _flatten_forward(at: At, h: torch.Tensor, shared: bool) -> torch.Tensor:
    return h.flatten(1 if shared else 2)


FORWARD: dict[type, Forward] = {
    Normalize: _normalize_forward,
    Conv2d: _conv_forward,
    Linear: _linear_forward,
    ReLU: lambda at, h, shared: torch.relu(h),
    Flatten: _flatten_forward,
}


def forward(spec: NetSpec, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs of every member on every input: [P, B, classes]."""
    params = spec.check_population(params)
    h = x
    shared = True
    for index, layer in enumerate(spec.layers):
        h = FORWARD[type(layer)](At(spec, params, index), h, shared)
        shared = shared and not layer.affine
    return h
