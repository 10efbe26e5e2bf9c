"""Network specifications: an ordered list of layers plus a flat parameter layout.

A network is a :class:`NetSpec` (architecture, no weights) and a flat vector ``theta`` in R^D.
The layout of ``theta`` is the order of ``torch.nn.utils.parameters_to_vector`` over the
equivalent ``nn.Sequential`` (for each affine layer: weight, then bias), so a population
(P x D) can be built from ordinary modules and read back without copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..validation import check_params

Shape = tuple[int, ...]
MIN_STD = 1e-6
"""Smallest Normalize std: below it 1/std overflows float32 bounds into inf and NaN margins."""


@dataclass(frozen=True)
class Normalize:
    """Fixed per-channel input normalisation (x - mean) / std; carries no parameters."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    affine: ClassVar[bool] = False

    def output_shape(self, shape: Shape, index: int) -> Shape:
        if len(shape) != 3 or len(self.mean) != shape[0] or len(self.std) != shape[0]:
            raise ValueError(f"layer {index}: Normalize needs one mean/std per channel of {shape}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError(f"layer {index}: Normalize mean and std must be finite, got {self.mean} and {self.std}")
        if min(self.std) < MIN_STD:
            raise ValueError(f"layer {index}: Normalize std must be at least {MIN_STD:g} (1/std must stay finite "
                             f"in float32 bounds), got {self.std}")
        return shape

    def weight_shape(self) -> Shape | None:
        return None


@dataclass(frozen=True)
class Conv2d:
    """2-D convolution with square kernel, equal stride and zero padding on both axes."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    affine: ClassVar[bool] = True

    def output_shape(self, shape: Shape, index: int) -> Shape:
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"layer {index}: Conv2d expects {self.in_channels} channels, input is {shape}")
        h, w = conv_output_size(shape[1], self), conv_output_size(shape[2], self)
        if h <= 0 or w <= 0:
            raise ValueError(f"layer {index}: Conv2d output is empty for input {shape}")
        return (self.out_channels, h, w)

    def weight_shape(self) -> Shape | None:
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


@dataclass(frozen=True)
class Linear:
    in_features: int
    out_features: int
    affine: ClassVar[bool] = True

    def output_shape(self, shape: Shape, index: int) -> Shape:
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ValueError(f"layer {index}: Linear expects ({self.in_features},), input is {shape}")
        return (self.out_features,)

    def weight_shape(self) -> Shape | None:
        return (self.out_features, self.in_features)


@dataclass(frozen=True)
class ReLU:
    affine: ClassVar[bool] = False

    def output_shape(self, shape: Shape, index: int) -> Shape:
        return shape

    def weight_shape(self) -> Shape | None:
        return None


@dataclass(frozen=True)
class Flatten:
    affine: ClassVar[bool] = False

    def output_shape(self, shape: Shape, index: int) -> Shape:
        return (math.prod(shape),)

    def weight_shape(self) -> Shape | None:
        return None


Layer = Normalize | Conv2d | Linear | ReLU | Flatten
LAYER_TYPES = (Normalize, Conv2d, Linear, ReLU, Flatten)


def conv_output_size(size: int, conv: Conv2d) -> int:
    return (size + 2 * conv.padding - conv.kernel) // conv.stride + 1


@dataclass(frozen=True)
class ParamSlot:
    """Where one affine layer's weight and bias live inside theta."""

    weight_offset: int
    weight_shape: Shape
    bias_offset: int
    bias_shape: Shape

    @property
    def end(self) -> int:
        return self.bias_offset + math.prod(self.bias_shape)


@dataclass(frozen=True)
class NetSpec:
    """An architecture: input shape (C, H, W) or (N,), and an ordered tuple of layers."""

    input_shape: Shape
    layers: tuple[Layer, ...]
    name: str = "net"
    shapes: tuple[Shape, ...] = field(init=False, repr=False, compare=False)
    slots: tuple[ParamSlot | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shapes: list[Shape] = [tuple(self.input_shape)]
        slots: list[ParamSlot | None] = []
        offset = 0
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, LAYER_TYPES):
                raise TypeError(f"layer {index}: unsupported layer {layer!r}")
            out = layer.output_shape(shapes[-1], index)
            wshape = layer.weight_shape()
            slot: ParamSlot | None = None
            if wshape is not None:
                slot = ParamSlot(offset, wshape, offset + math.prod(wshape), (wshape[0],))
                offset = slot.end
            shapes.append(out)
            slots.append(slot)
        if not any(layer.affine for layer in self.layers):
            raise ValueError("a network needs at least one Conv2d or Linear layer")
        object.__setattr__(self, "shapes", tuple(shapes))
        object.__setattr__(self, "slots", tuple(slots))

    @property
    def num_params(self) -> int:
        ends = [slot.end for slot in self.slots if slot is not None]
        return ends[-1]

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1]

    @property
    def num_outputs(self) -> int:
        return math.prod(self.output_shape)

    def weight(self, theta: torch.Tensor, index: int) -> torch.Tensor:
        """Weight of layer ``index`` for every member of ``theta`` (P x D): a view, no copy."""
        slot = self._slot(index)
        size = math.prod(slot.weight_shape)
        return theta[:, slot.weight_offset : slot.weight_offset + size].view(theta.shape[0], *slot.weight_shape)

    def bias(self, theta: torch.Tensor, index: int) -> torch.Tensor:
        slot = self._slot(index)
        return theta[:, slot.bias_offset : slot.end]

    def _slot(self, index: int) -> ParamSlot:
        slot = self.slots[index]
        if slot is None:
            raise ValueError(f"layer {index} ({self.layers[index]!r}) has no parameters")
        return slot

    def check_population(self, params: torch.Tensor) -> torch.Tensor:
        """Validate a population (P x D, or D for one member) and return it as P x D."""
        if not isinstance(params, torch.Tensor):
            raise TypeError(f"params must be a torch.Tensor, got {type(params).__name__}")
        return check_params(self, params)
