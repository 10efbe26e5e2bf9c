"""The input region: an L_inf ball of radius eps intersected with the valid pixel range [0, 1]."""

from __future__ import annotations

import torch

from ..members import normalize_constants
from ..nets.spec import Flatten, NetSpec, Normalize
from .types import Box


def check_inputs(spec: NetSpec, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating point tensor")
    if tuple(x.shape[1:]) != tuple(spec.input_shape) or x.dim() != len(spec.input_shape) + 1:
        raise ValueError(f"x must have shape (B, {', '.join(map(str, spec.input_shape))}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise ValueError("x must lie in the valid input range [0, 1] (data space, before normalisation)")


def check_eps(eps: float | torch.Tensor, batch: int) -> torch.Tensor:
    value = torch.as_tensor(eps, dtype=torch.float64)
    if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
        raise ValueError(f"eps must be a scalar or have shape ({batch},), got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return value


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
