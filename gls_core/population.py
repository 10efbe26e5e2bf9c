"""Outputs of a whole population of weight sets on a batch of inputs, in one pass.

Shapes use fixed letters: P members, B inputs, D parameters. Activations are ``[P, B, *shape]``;
the network input, shared by all members, is ``[B, *shape]`` until the first affine layer.
"""

from __future__ import annotations

import torch

from .bounds.rules import At, rule_of
from .nets.spec import NetSpec


def forward(spec: NetSpec, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs of every member on every input: [P, B, classes]."""
    params = spec.check_population(params)
    h = x
    shared = True
    for index, layer in enumerate(spec.layers):
        h = rule_of(layer).forward(At(spec, params, index), h, shared)
        shared = shared and not layer.affine
    return h
