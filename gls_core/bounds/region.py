"""The input region: an L_inf ball of radius eps intersected with the valid pixel range [0, 1]."""

from __future__ import annotations

import torch

from ..members import normalize_constants
from ..nets.spec import Flatten, NetSpec, Normalize
from ..validation import check_eps, check_inputs
from .types import Box


def input_box(spec: NetSpec, x: torch.Tensor, eps: float | torch.Tensor) -> Box:
    """The region in data space, [B, *input_shape]."""
    check_inputs(spec, x)
    radius = check_eps(eps, x.shape[0]).to(x.dtype)
    if radius.dim() == 1:
        radius = radius.view(-1, *([1] * (x.dim() - 1)))
    return Box((x - radius).clamp(0, 1), (x + radius).clamp(0, 1))


def network_input(spec: NetSpec, box: Box) -> tuple[Box, int]:
    """The box seen by the first affine layer (leading Normalize / Flatten applied) and that layer's index."""
    index = 0
    while isinstance(spec.layers[index], (Normalize, Flatten)):
        layer = spec.layers[index]
        if isinstance(layer, Normalize):
            mean, std = normalize_constants(layer, box.lower)
            box = Box((box.lower - mean) / std, (box.upper - mean) / std)
        else:
            box = Box(box.lower.flatten(1), box.upper.flatten(1))
        index += 1
    return box, index
