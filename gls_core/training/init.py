"""Weight initialisation for certified training."""

from __future__ import annotations

import math

import torch

from ..nets.convert import kaiming_uniform
from ..nets.spec import NetSpec


def ibp_init(spec: NetSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """IBP initialisation (Shi et al., 2021): every affine layer but the last gets N(0, 2*pi / fan_in^2).

    This keeps interval widths from growing with depth at initialisation. Biases and the output layer
    keep PyTorch's default (Kaiming uniform), as in the reference implementation.
    """
    theta = kaiming_uniform(spec, generator)
    population = theta.view(1, -1)
    affine = [index for index, slot in enumerate(spec.slots) if slot is not None]
    for index in affine[:-1]:
        slot = spec.slots[index]
        assert slot is not None
        fan_in = math.prod(slot.weight_shape[1:])
        weight = spec.weight(population, index)[0]
        weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in, generator=generator)
    return theta


def initial_weights(spec: NetSpec, scheme: str, generator: torch.Generator) -> torch.Tensor:
    if scheme == "ibp":
        return ibp_init(spec, generator)
    if scheme == "kaiming":
        return kaiming_uniform(spec, generator)
    raise ValueError(f"unknown initialisation {scheme!r}; expected ibp or kaiming")
