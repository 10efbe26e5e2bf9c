"""Conversion between (NetSpec, theta) and ``torch.nn.Sequential``, and weight initialisation.

A Sequential of Conv2d / Linear / ReLU / Flatten (optionally a leading :class:`InputNormalization`
and BatchNorm layers, folded into the preceding affine layer with their running statistics) maps
to a spec and a flat vector in ``parameters_to_vector`` order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .spec import Conv2d, Flatten, Layer, Linear, NetSpec, Normalize, ReLU, Shape


class InputNormalization(nn.Module):
    """(x - mean) / std per channel, as a module so a Sequential can carry it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.mean_values = tuple(float(m) for m in mean)
        self.std_values = tuple(float(s) for s in std)
        self.register_buffer("mean", torch.tensor(self.mean_values).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(self.std_values).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# The module that computes each layer type (NetSpec rejects any other type).
_MODULES: dict[type, Callable[[Any], nn.Module]] = {
    Normalize: lambda layer: InputNormalization(layer.mean, layer.std),
    Conv2d: lambda layer: nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                                    layer.padding),
    Linear: lambda layer: nn.Linear(layer.in_features, layer.out_features),
    ReLU: lambda layer: nn.ReLU(),
    Flatten: lambda layer: nn.Flatten(),
}


def to_sequential(spec: NetSpec, theta: torch.Tensor | None = None) -> nn.Sequential:
    """Build the equivalent module; with ``theta`` (D,) its weights are copied in."""
    modules: list[nn.Module] = []
    for layer in spec.layers:
        modules.append(_MODULES[type(layer)](layer))
    net = nn.Sequential(*modules)
    if theta is not None:
        if theta.shape != (spec.num_params,):
            raise ValueError(f"theta must have shape ({spec.num_params},), got {tuple(theta.shape)}")
        with torch.no_grad():
            nn.utils.vector_to_parameters(theta.detach().to(torch.float32), net.parameters())
    return net


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d))
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shaped = scale.view(-1, *([1] * (weight.dim() - 1)))
    return weight * shaped, bias * scale + shift


def from_sequential(net: nn.Sequential, input_shape: Shape) -> tuple[NetSpec, torch.Tensor]:
    """Read a Sequential into a spec and its flat weights (D,); BatchNorm is folded (eval mode)."""
    layers: list[Layer] = []
    weights: list[torch.Tensor] = []
    modules = list(net)
    for index, module in enumerate(modules):
        if isinstance(module, InputNormalization):
            layers.append(Normalize(module.mean_values, module.std_values))
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not weights or not isinstance(layers[-1], (Conv2d, Linear)):
                raise ValueError(f"module {index}: BatchNorm must directly follow a Conv2d or Linear")
            weights[-2], weights[-1] = _fold_batchnorm(weights[-2], weights[-1], module)
        elif isinstance(module, nn.Conv2d):
            k, s, p = module.kernel_size, module.stride, module.padding
            if (k[0] != k[1] or s[0] != s[1] or not isinstance(p, tuple) or p[0] != p[1]
                    or module.dilation != (1, 1) or module.groups != 1 or module.padding_mode != "zeros"):
                raise ValueError(
                    f"module {index}: only square, undilated, ungrouped, zero-padded convolutions are supported")
            layers.append(Conv2d(module.in_channels, module.out_channels, k[0], s[0], int(p[0])))
            weights += [module.weight.detach(), _bias_of(module, module.out_channels)]
        elif isinstance(module, nn.Linear):
            layers.append(Linear(module.in_features, module.out_features))
            weights += [module.weight.detach(), _bias_of(module, module.out_features)]
        elif isinstance(module, nn.ReLU):
            layers.append(ReLU())
        elif isinstance(module, nn.Flatten):
            layers.append(Flatten())
        else:
            raise ValueError(f"module {index}: unsupported module {type(module).__name__}")
    spec = NetSpec(tuple(input_shape), tuple(layers), name=type(net).__name__.lower())
    theta = torch.cat([w.reshape(-1) for w in weights]).to(torch.float32)
    return spec, theta


def _bias_of(module: nn.Conv2d | nn.Linear, size: int) -> torch.Tensor:
    if module.bias is None:
        return torch.zeros(size, dtype=module.weight.dtype)
    return module.bias.detach()


def kaiming_uniform(spec: NetSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """PyTorch's default initialisation of Conv2d/Linear (He et al., 2015), as a flat vector (D,)."""
    theta = torch.empty(spec.num_params)
    population = theta.view(1, -1)
    for index, slot in enumerate(spec.slots):
        if slot is None:
            continue
        weight = spec.weight(population, index)[0]
        fan_in = math.prod(slot.weight_shape[1:])
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(fan_in)
        spec.bias(population, index)[0].uniform_(-bound, bound, generator=generator)
    return theta
