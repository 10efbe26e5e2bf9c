"""Linear bounds on coefficient rows, and how one layer transforms them on the way back to the input.

Coefficients are ``A[P, Bx, R, L, *window]``: R rows at each of L window positions, Bx = 1 while
they do not yet depend on the input. Rows of a dense layer see a whole feature map (L = 1, the
"image" form). Rows of a convolution see only their receptive field: L = Ho*Wo windows on a
regular grid (the "patch" form, which keeps the convolutions' locality). Selected rows are
``A[P, 1, U, 1, *window]`` with, per row, the index of its input and window position (``rows``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nets.spec import Conv2d
from . import kernels
from .types import ReluRelaxation, RowwiseRelaxation


@dataclass(frozen=True)
class Windows:
    """Patch-form geometry: grid position (i, j) sees the window starting at (i*stride - offset, j*stride - offset)."""

    grid: tuple[int, int]
    stride: int
    offset: int
    size: tuple[int, int]

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]


def gather_windows(maps: torch.Tensor, windows: Windows) -> torch.Tensor:
    """[..., C, H, W] -> [..., gh, gw, C, h, w]: every grid position's window, zero outside the map.

    A strided view of the zero-padded map, so no window is copied (``F.unfold`` copies each one
    and loops over the batch on CPUs).
    """
    lead, (channels, height, width) = maps.shape[:-3], maps.shape[-3:]
    (grid_h, grid_w), (size_h, size_w) = windows.grid, windows.size
    need_h, need_w = (grid_h - 1) * windows.stride + size_h, (grid_w - 1) * windows.stride + size_w
    pad_b = max(0, need_h - windows.offset - height)
    pad_r = max(0, need_w - windows.offset - width)
    flat = maps.reshape(-1, channels, height, width)
    padded = F.pad(flat, (windows.offset, pad_r, windows.offset, pad_b)).contiguous()
    n, c, h, w = padded.stride()
    view = padded.as_strided((padded.shape[0], grid_h, grid_w, channels, size_h, size_w),
                             (n, windows.stride * h, windows.stride * w, c, h, w))
    return view.view(*lead, grid_h, grid_w, channels, size_h, size_w)


@dataclass
class Coefficients:
    """Linear bounds sum(A * v) + bias on the activation v currently reached."""

    A: torch.Tensor  # [P, Bx, R, L, *window]
    bias: torch.Tensor  # [P, Bx, R, L]
    windows: Windows | None  # None: image form, the window is the whole map
    rows: torch.Tensor | None = None  # selected rows: [P, U] index of (input, window position)

    def replace(self, A: torch.Tensor, bias: torch.Tensor, windows: Windows | None) -> Coefficients:
        return Coefficients(A, bias, windows, self.rows)

    def per_row(self, maps: torch.Tensor) -> torch.Tensor:
        """A map [P, B, *shape] (or [B, *shape] shared by all members) seen by every row, broadcastable to A."""
        A, windows = self.A, self.windows
        shared = maps.dim() == len(self.map_shape(maps)) + 1
        if self.rows is not None:
            seen = maps if windows is None else gather_windows(maps, windows)
            flat = seen.reshape(-1, *A.shape[4:])  # [(P) * B * L, *window]
            index = self.rows
            if not shared:
                per_member = flat.shape[0] // A.shape[0]
                offsets = torch.arange(A.shape[0], device=index.device).unsqueeze(1) * per_member
                index = index + offsets
            picked = flat.index_select(0, index.reshape(-1))
            return picked.view(A.shape[0], 1, A.shape[2], 1, *A.shape[4:])
        if windows is None:
            return maps.unsqueeze(-len(A.shape[4:]) - 1).unsqueeze(-len(A.shape[4:]) - 1)
        seen = gather_windows(maps, windows)  # [(P), B, gh, gw, *window]
        seen = seen.reshape(*seen.shape[:-5], windows.count, *seen.shape[-3:])
        return seen.unsqueeze(-5)

    def map_shape(self, maps: torch.Tensor) -> tuple[int, ...]:
        return tuple(maps.shape[-3:]) if self.windows is not None else tuple(self.A.shape[4:])


def through_relu(coeffs: Coefficients, relaxation: ReluRelaxation) -> Coefficients:
    """Lower bound through a ReLU: A+ * lower line + A- * upper line = A * ls + min(A, 0) * (us - ls)."""
    A = coeffs.A
    seen = coeffs.per_row
    # Per-row slopes come laid out as the rows see them.
    rowwise = isinstance(relaxation, RowwiseRelaxation)
    lower_slope = relaxation.lower_slope if rowwise else seen(relaxation.lower_slope)
    negative = A.clamp(max=0)
    new_A = torch.addcmul(A * lower_slope, negative, seen(relaxation.upper_slope) - lower_slope)
    if isinstance(relaxation, RowwiseRelaxation) and relaxation.input_term is not None:
        new_A = new_A + relaxation.input_term
    bias = coeffs.bias
    window_dims = tuple(range(4, A.dim()))
    if relaxation.upper_offset is not None:
        bias = bias + (negative * seen(relaxation.upper_offset)).sum(window_dims)
    if relaxation.lower_offset is not None:
        bias = bias + ((A - negative) * seen(relaxation.lower_offset)).sum(window_dims)
    return coeffs.replace(new_A, bias, coeffs.windows)


def through_linear(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor) -> Coefficients:
    A = coeffs.A  # [P, Bx, R, 1, O]
    members, bx, rows = A.shape[:3]
    flat = A.reshape(members, bx * rows, A.shape[-1])
    new_bias = coeffs.bias + torch.bmm(flat, bias.unsqueeze(-1)).view(members, bx, rows, 1)
    new_A = torch.bmm(flat, weight).view(members, bx, rows, 1, weight.shape[-1])
    return coeffs.replace(new_A, new_bias, None)


def full_size(height: int, width: int, conv: Conv2d) -> tuple[int, int]:
    return (height - 1) * conv.stride + conv.kernel, (width - 1) * conv.stride + conv.kernel


def conv_bias(coeffs: Coefficients, bias: torch.Tensor) -> torch.Tensor:
    """The rows' bias after passing a convolution with per-member ``bias`` [P, O]: sum of A per channel * b."""
    A = coeffs.A
    per_channel = A.sum(dim=(-1, -2))  # [P, Bx, R, L, O]
    return coeffs.bias + torch.matmul(per_channel, bias.view(A.shape[0], 1, 1, A.shape[4], 1)).squeeze(-1)


def through_conv(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor, conv: Conv2d,
                  input_hw: tuple[int, int]) -> Coefficients:
    A = coeffs.A  # [P, Bx, R, L, O, h, w]
    members, bx, rows, count = A.shape[:4]
    out_ch, height, width = A.shape[4:]
    new_bias = conv_bias(coeffs, bias)
    flat = A.reshape(members, bx * rows * count, out_ch, height, width)
    if coeffs.windows is None:
        image = kernels.conv_transpose(flat, weight, conv.stride, (conv.padding, conv.padding), input_hw)
        return coeffs.replace(image.view(members, bx, rows, 1, *image.shape[2:]), new_bias, None)
    full = kernels.conv_transpose(flat, weight, conv.stride, (0, 0), full_size(height, width, conv))
    full = full.view(members, bx, rows, count, *full.shape[2:])
    windows = Windows(coeffs.windows.grid, coeffs.windows.stride * conv.stride,
                      coeffs.windows.offset * conv.stride + conv.padding, (full.shape[-2], full.shape[-1]))
    return coeffs.replace(full, new_bias, windows)


def through_flatten(coeffs: Coefficients, map_shape: tuple[int, ...]) -> Coefficients:
    """Rows on a flattened vector, seen on the map ``map_shape`` it came from."""
    A = coeffs.A
    return coeffs.replace(A.reshape(*A.shape[:4], *map_shape), coeffs.bias, None)
