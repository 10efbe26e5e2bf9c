"""Back-substitution (the backward pass of DeepPoly/CROWN) for a whole population at once.

Linear bounds on chosen rows (specification rows or neurons of an affine layer) are pushed back
through the network to the input box and concretised. How ReLUs are relaxed is data handed in
(:class:`ReluRelaxation` per ReLU layer); this module never asks which relaxation it holds.

Coefficients are ``A[P, Bx, R, L, *window]``: R rows at each of L window positions, Bx = 1 while
they do not yet depend on the input. Rows of a dense layer see a whole feature map (L = 1, the
"image" form). Rows of a convolution see only their receptive field: L = Ho*Wo windows on a
regular grid (the "patch" form, which keeps the convolutions' locality). Upper bounds are lower
bounds of the negated rows, so both sides run as one stacked computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nets.spec import Conv2d, Flatten, Linear, NetSpec, ReLU
from ..population import conv_transpose_cost, conv_transpose_matrix, conv_transpose_polyphase
from .types import Box, ReluRelaxation


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


def _relax(coeffs: Coefficients, relaxation: ReluRelaxation) -> Coefficients:
    """Lower bound through a ReLU: A+ * lower line + A- * upper line."""
    A = coeffs.A
    windows = coeffs.windows

    def shaped(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == A.dim():  # already per row (alpha slopes): [P, B, R, 1, *map]
            return t
        if windows is None:
            return t.unsqueeze(2).unsqueeze(3)
        return gather_windows(t, windows).unsqueeze(2)

    if windows is not None:
        A = A.reshape(*A.shape[:3], *windows.grid, *A.shape[4:])
    positive = A >= 0
    slope = torch.where(positive, shaped(relaxation.lower_slope), shaped(relaxation.upper_slope))
    bias = coeffs.bias
    lower_off, upper_off = relaxation.lower_offset, relaxation.upper_offset
    if lower_off is not None or upper_off is not None:
        zero = torch.zeros((), dtype=A.dtype, device=A.device)
        lo = zero if lower_off is None else shaped(lower_off)
        uo = zero if upper_off is None else shaped(upper_off)
        window_dims = A.dim() - (5 if windows else 4)
        offsets = (A * torch.where(positive, lo, uo)).flatten(-window_dims).sum(-1)
        bias = bias + (offsets.flatten(3) if windows else offsets)
    new_A = A * slope
    if windows is not None:
        new_A = new_A.reshape(*new_A.shape[:3], windows.count, *new_A.shape[-3:])
    return Coefficients(new_A, bias, windows)


def _through_linear(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor) -> Coefficients:
    A = coeffs.A  # [P, Bx, R, 1, O]
    members, bx, rows = A.shape[:3]
    flat = A.reshape(members, bx * rows, A.shape[-1])
    new_bias = coeffs.bias + torch.bmm(flat, bias.unsqueeze(-1)).view(members, bx, rows, 1)
    new_A = torch.bmm(flat, weight).view(members, bx, rows, 1, weight.shape[-1])
    return Coefficients(new_A, new_bias, None)


def _transpose_conv(images: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """Full transposed convolution, choosing the dense-matrix or polyphase kernel by estimated cost."""
    members, rows, out_ch, height, width = images.shape
    dense, poly = conv_transpose_cost(out_ch, height, width, weight.shape[1:], stride)
    if dense <= poly and out_ch * height * width <= 4096:
        matrix = conv_transpose_matrix(weight, stride, height, width)  # [P, O*h*w, C*h'*w']
        full = torch.bmm(images.reshape(members, rows, -1), matrix)
        size_h, size_w = (height - 1) * stride + weight.shape[3], (width - 1) * stride + weight.shape[3]
        return full.view(members, rows, weight.shape[2], size_h, size_w)
    return conv_transpose_polyphase(images, weight, stride)


def _transpose_conv_image(A: torch.Tensor, weight: torch.Tensor, conv: Conv2d,
                          input_hw: tuple[int, int]) -> torch.Tensor:
    """Transposed convolution of whole-map coefficients [P, Bx, R, 1, O, h, w] -> [P, Bx, R, 1, C, H, W].

    Members become groups of one grouped ``conv_transpose2d``: measured on a 2-core CPU it beats
    both the polyphase matmul and a dense matrix for these shapes (see bench/relaxations.py).
    """
    members, bx, rows, _, out_ch, height, width = A.shape
    in_ch = weight.shape[2]
    grouped = A.permute(1, 2, 3, 0, 4, 5, 6).reshape(bx * rows, members * out_ch, height, width)
    natural_h = (height - 1) * conv.stride - 2 * conv.padding + conv.kernel
    natural_w = (width - 1) * conv.stride - 2 * conv.padding + conv.kernel
    extra = (input_hw[0] - natural_h, input_hw[1] - natural_w)
    out = F.conv_transpose2d(grouped, weight.reshape(members * out_ch, in_ch, conv.kernel, conv.kernel),
                             stride=conv.stride, padding=conv.padding, output_padding=extra, groups=members)
    out = out.view(bx, rows, 1, members, in_ch, *input_hw)
    return out.permute(3, 0, 1, 2, 4, 5, 6)


def _through_conv(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor, conv: Conv2d,
                  input_hw: tuple[int, int]) -> Coefficients:
    A = coeffs.A  # [P, Bx, R, L, O, h, w]
    members, bx, rows, count = A.shape[:4]
    out_ch, height, width = A.shape[4:]
    per_channel = A.sum(dim=(-1, -2))  # [P, Bx, R, L, O]
    new_bias = coeffs.bias + torch.matmul(per_channel, bias.view(members, 1, 1, out_ch, 1)).squeeze(-1)
    if coeffs.windows is None:
        return Coefficients(_transpose_conv_image(A, weight, conv, input_hw), new_bias, None)
    full = _transpose_conv(A.reshape(members, bx * rows * count, out_ch, height, width), weight, conv.stride)
    full = full.view(members, bx, rows, count, *full.shape[2:])
    windows = Windows(coeffs.windows.grid, coeffs.windows.stride * conv.stride,
                      coeffs.windows.offset * conv.stride + conv.padding, (full.shape[-2], full.shape[-1]))
    return Coefficients(full, new_bias, windows)


def _concretize(coeffs: Coefficients, box: Box) -> torch.Tensor:
    """min over the box of sum(A * x) + bias, per row: [P, B, R, L]."""
    A = coeffs.A
    center, radius = box.center, box.radius  # [B, *map]
    if coeffs.windows is None:
        batch = center.shape[0]
        flat = A.flatten(4)
        c = center.reshape(1, batch, 1, -1, 1)
        r = radius.reshape(1, batch, 1, -1, 1)
        return coeffs.bias + (torch.matmul(flat, c) - torch.matmul(flat.abs(), r)).squeeze(-1)
    c = gather_windows(center, coeffs.windows).unsqueeze(1)  # [B, 1, gh, gw, C, h, w]
    r = gather_windows(radius, coeffs.windows).unsqueeze(1)
    A = A.reshape(*A.shape[:3], *coeffs.windows.grid, *A.shape[4:])
    value = (A * c).flatten(-3).sum(-1) - (A.abs() * r).flatten(-3).sum(-1)
    return coeffs.bias + value.flatten(3)


def start_rows(spec: NetSpec, params: torch.Tensor, target: int, C: torch.Tensor | None) -> Coefficients:
    """Rows for the output of affine layer ``target``: through C for the last layer, else every neuron.

    Rows are stacked [rows; -rows] so one lower-bound pass yields both sides.
    """
    layer = spec.layers[target]
    weight, bias = spec.weight(params, target), spec.bias(params, target)
    if isinstance(layer, Linear):
        if C is not None:
            A = torch.einsum("bkc,pci->pbki", C, weight)
            b = torch.einsum("bkc,pc->pbk", C, bias)
        else:
            A, b = weight.unsqueeze(1), bias.unsqueeze(1)
        A = torch.cat([A, -A], dim=2).unsqueeze(3)
        b = torch.cat([b, -b], dim=2).unsqueeze(3)
        return Coefficients(A, b, None)
    if not isinstance(layer, Conv2d):
        raise TypeError(f"layer {target} is not affine")
    out_h, out_w = spec.shapes[target + 1][1:]
    windows = Windows((out_h, out_w), layer.stride, layer.padding, (layer.kernel, layer.kernel))
    stacked_w = torch.cat([weight, -weight], dim=1)  # [P, 2O, C, k, k]
    A = stacked_w.unsqueeze(1).unsqueeze(3).expand(-1, 1, -1, windows.count, -1, -1, -1)
    b = torch.cat([bias, -bias], dim=1).view(params.shape[0], 1, -1, 1).expand(-1, 1, -1, windows.count)
    return Coefficients(A, b, windows)


def backsubstitute(spec: NetSpec, params: torch.Tensor, box: Box, first_affine: int, target: int,
                   relaxations: dict[int, ReluRelaxation], C: torch.Tensor | None = None) -> Box:
    """Bounds on the output of affine layer ``target`` (or on C @ logits when ``target`` is the last layer).

    ``box`` is the input of layer ``first_affine`` ([B, *shape]); ``relaxations`` has an entry for
    every ReLU layer below ``target``. Returns bounds [P, B, K] for rows of C, else [P, B, *shape].
    """
    coeffs = start_rows(spec, params, target, C)
    for index in range(target - 1, first_affine - 1, -1):
        layer = spec.layers[index]
        if isinstance(layer, ReLU):
            coeffs = _relax(coeffs, relaxations[index])
        elif isinstance(layer, Flatten):
            A = coeffs.A
            coeffs = Coefficients(A.reshape(*A.shape[:4], *spec.shapes[index]), coeffs.bias, None)
        elif isinstance(layer, Linear):
            coeffs = _through_linear(coeffs, spec.weight(params, index), spec.bias(params, index))
        elif isinstance(layer, Conv2d):
            in_shape = spec.shapes[index]
            coeffs = _through_conv(coeffs, spec.weight(params, index), spec.bias(params, index), layer,
                                   (in_shape[1], in_shape[2]))
        else:
            raise TypeError(f"layer {index}: {layer!r} cannot be back-substituted")
    lower = _concretize(coeffs, box)  # [P, B, 2R, L]
    rows = lower.shape[2] // 2
    low, neg_up = lower[:, :, :rows], lower[:, :, rows:]
    last = C is not None and target == len(spec.layers) - 1
    shape: tuple[int, ...] = (C.shape[1],) if C is not None and last else spec.shapes[target + 1]
    members, batch = low.shape[0], low.shape[1]
    low = low.reshape(members, batch, *shape)
    up = -neg_up.reshape(members, batch, *shape)
    return Box(low, up)


def footprint(spec: NetSpec, target: int, first_affine: int, rows: int | None = None) -> int:
    """Largest coefficient tensor, in floats per (member, input), of back-substituting from ``target``.

    Used to chunk populations and batches so that CNN5-L and CNN7 fit in memory.
    """
    layer = spec.layers[target]
    if isinstance(layer, Linear):
        count = 2 * (rows if rows is not None else layer.out_features)
        window: tuple[int, ...] = spec.shapes[target]
        windows = None
    else:
        assert isinstance(layer, Conv2d)
        count = 2 * math.prod(spec.shapes[target + 1])
        window = (layer.in_channels, layer.kernel, layer.kernel)
        windows = (layer.kernel, layer.kernel)
    largest = count * math.prod(window)
    for index in range(target - 1, first_affine - 1, -1):
        below = spec.layers[index]
        if isinstance(below, Flatten):
            window = spec.shapes[index]
        elif isinstance(below, Linear):
            window = (below.in_features,)
        elif isinstance(below, Conv2d):
            if windows is None:
                window = spec.shapes[index]
            else:
                size = (windows[0] - 1) * below.stride + below.kernel
                windows = (size, size)
                window = (below.in_channels, size, size)
        largest = max(largest, count * math.prod(window))
    return largest
