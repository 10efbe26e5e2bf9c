"""Back-substitution (the backward pass of DeepPoly/CROWN) for a whole population at once.

Linear bounds on chosen rows (specification rows or neurons of an affine layer) are pushed back
through the network to the input box and concretised. How ReLUs are relaxed is data handed in
(:class:`ReluRelaxation` per ReLU layer); this module never asks which relaxation it holds.

Coefficients are ``A[P, Bx, R, L, *window]``: R rows at each of L window positions, Bx = 1 while
they do not yet depend on the input. Rows of a dense layer see a whole feature map (L = 1, the
"image" form). Rows of a convolution see only their receptive field: L = Ho*Wo windows on a
regular grid (the "patch" form, which keeps the convolutions' locality). Upper bounds are lower
bounds of the negated rows, so both sides run as one stacked computation.

Intermediate bounds are needed only for neurons the interval reference cannot decide, so those
targets run on *selected rows*: ``A[P, 1, U, 1, *window]`` with, per row, the index of its input
and window position (``rows``); the work then scales with the number of unstable neurons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..nets.spec import Conv2d, Flatten, Linear, NetSpec, ReLU
from ..population import conv_transpose_cost, conv_transpose_matrix, conv_transpose_polyphase
from .types import Box, ReluRelaxation

SELECT_BELOW = 0.5  # largest share of unstable neurons for which selected rows pay off (measured)


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


def _relax(coeffs: Coefficients, relaxation: ReluRelaxation) -> Coefficients:
    """Lower bound through a ReLU: A+ * lower line + A- * upper line = A * ls + min(A, 0) * (us - ls)."""
    A = coeffs.A

    def seen(t: torch.Tensor) -> torch.Tensor:
        return t if t.dim() == A.dim() else coeffs.per_row(t)  # per-row alpha slopes come ready

    lower_slope = seen(relaxation.lower_slope)
    negative = A.clamp(max=0)
    new_A = torch.addcmul(A * lower_slope, negative, seen(relaxation.upper_slope) - lower_slope)
    bias = coeffs.bias
    window_dims = tuple(range(4, A.dim()))
    if relaxation.upper_offset is not None:
        bias = bias + (negative * seen(relaxation.upper_offset)).sum(window_dims)
    if relaxation.lower_offset is not None:
        bias = bias + ((A - negative) * seen(relaxation.lower_offset)).sum(window_dims)
    return coeffs.replace(new_A, bias, coeffs.windows)


def _through_linear(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor) -> Coefficients:
    A = coeffs.A  # [P, Bx, R, 1, O]
    members, bx, rows = A.shape[:3]
    flat = A.reshape(members, bx * rows, A.shape[-1])
    new_bias = coeffs.bias + torch.bmm(flat, bias.unsqueeze(-1)).view(members, bx, rows, 1)
    new_A = torch.bmm(flat, weight).view(members, bx, rows, 1, weight.shape[-1])
    return coeffs.replace(new_A, new_bias, None)


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
    both the polyphase matmul and a dense matrix for these shapes (see docs/relaxations.md).
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
        return coeffs.replace(_transpose_conv_image(A, weight, conv, input_hw), new_bias, None)
    full = _transpose_conv(A.reshape(members, bx * rows * count, out_ch, height, width), weight, conv.stride)
    full = full.view(members, bx, rows, count, *full.shape[2:])
    windows = Windows(coeffs.windows.grid, coeffs.windows.stride * conv.stride,
                      coeffs.windows.offset * conv.stride + conv.padding, (full.shape[-2], full.shape[-1]))
    return coeffs.replace(full, new_bias, windows)


def _fusable(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, conv: Conv2d) -> bool:
    """True for the first step below a convolution target: rows still shared by all inputs, then a dense-matrix conv."""
    A = coeffs.A
    if coeffs.rows is not None or coeffs.windows is None or A.shape[1] != 1:
        return False
    if relaxation.lower_slope.dim() == A.dim() or relaxation.lower_offset is not None:
        return False
    out_ch, height, width = A.shape[4:]
    dense, poly = conv_transpose_cost(out_ch, height, width, weight.shape[1:], conv.stride)
    return dense <= poly and out_ch * height * width <= 4096


def _relax_then_conv(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, bias: torch.Tensor,
                     conv: Conv2d) -> Coefficients:
    """ReLU step and transposed convolution in one matmul, for rows that are still the target's weights W.

    (W+ * ls + W- * us) M = [ls | us] [W+ M ; W- M]: the per-input slopes multiply a per-member matrix
    built once, so the large elementwise products of the two-step path disappear.
    """
    A = coeffs.A  # [P, 1, R, L, O, h, w], the same rows at every position
    assert coeffs.windows is not None
    members, _, rows, count = A.shape[:4]
    out_ch, height, width = A.shape[4:]
    size = out_ch * height * width
    weight_rows = A[:, 0, :, 0].reshape(members, rows, size)  # [P, R, Q]
    matrix = conv_transpose_matrix(weight, conv.stride, height, width)  # [P, Q, Q']
    positive, negative = weight_rows.clamp(min=0), weight_rows.clamp(max=0)
    stacked = torch.cat([positive, negative], dim=2).transpose(1, 2)  # [P, 2Q, R]
    composed = (stacked.unsqueeze(-1) * matrix.repeat(1, 2, 1).unsqueeze(2)).reshape(members, 2 * size, -1)

    def seen(t: torch.Tensor) -> torch.Tensor:  # [P, B, *map] -> [P, B*L, Q]
        windows = gather_windows(t, coeffs.windows)  # type: ignore[arg-type]
        return windows.reshape(members, -1, size)

    lower_slope, upper_slope = seen(relaxation.lower_slope), seen(relaxation.upper_slope)
    batch = lower_slope.shape[1] // count
    slopes = torch.cat([lower_slope, upper_slope], dim=2)  # [P, B*L, 2Q]
    new_A = torch.bmm(slopes, composed)  # [P, B*L, R*Q']
    in_ch = weight.shape[2]
    full_h, full_w = (height - 1) * conv.stride + conv.kernel, (width - 1) * conv.stride + conv.kernel
    new_A = new_A.view(members, batch, count, rows, in_ch, full_h, full_w).transpose(2, 3)
    spread_bias = bias.view(members, 1, out_ch, 1).expand(members, 1, out_ch, height * width).reshape(members, size, 1)
    conv_bias = torch.bmm(slopes, stacked * spread_bias.repeat(1, 2, 1))  # [P, B*L, R]: sum of A over window * b
    new_bias = coeffs.bias + conv_bias.view(members, batch, count, rows).transpose(2, 3)
    if relaxation.upper_offset is not None:
        offsets = torch.bmm(seen(relaxation.upper_offset), negative.transpose(1, 2))  # [P, B*L, R]
        new_bias = new_bias + offsets.view(members, batch, count, rows).transpose(2, 3)
    windows = Windows(coeffs.windows.grid, coeffs.windows.stride * conv.stride,
                      coeffs.windows.offset * conv.stride + conv.padding, (full_h, full_w))
    return coeffs.replace(new_A, new_bias, windows)


def _concretize(coeffs: Coefficients, box: Box) -> torch.Tensor:
    """min over the box of sum(A * x) + bias, per row: [P, B, R, L]."""
    A = coeffs.A
    window_dims = tuple(range(4, A.dim()))
    if coeffs.windows is None and coeffs.rows is None:
        batch = box.lower.shape[0]
        flat = A.flatten(4)
        c = box.center.reshape(1, batch, 1, -1, 1)
        r = box.radius.reshape(1, batch, 1, -1, 1)
        return coeffs.bias + (torch.matmul(flat, c) - torch.matmul(flat.abs(), r)).squeeze(-1)
    c, r = coeffs.per_row(box.center), coeffs.per_row(box.radius)
    return coeffs.bias + (A * c).sum(window_dims) - (A.abs() * r).sum(window_dims)


def start_rows(spec: NetSpec, params: torch.Tensor, target: int, C: torch.Tensor | None) -> Coefficients:
    """Every row for the output of affine layer ``target``: through C for the last layer, else every neuron.

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
    windows = _target_windows(spec, target)
    stacked_w = torch.cat([weight, -weight], dim=1)  # [P, 2O, C, k, k]
    A = stacked_w.unsqueeze(1).unsqueeze(3).expand(-1, 1, -1, windows.count, -1, -1, -1)
    b = torch.cat([bias, -bias], dim=1).view(params.shape[0], 1, -1, 1).expand(-1, 1, -1, windows.count)
    return Coefficients(A, b, windows)


def _target_windows(spec: NetSpec, target: int) -> Windows:
    layer = spec.layers[target]
    assert isinstance(layer, Conv2d)
    out_h, out_w = spec.shapes[target + 1][1:]
    return Windows((out_h, out_w), layer.stride, layer.padding, (layer.kernel, layer.kernel))


@dataclass(frozen=True)
class Selection:
    """Which (input, side, neuron, position) rows of a target were chosen, padded to U per member."""

    order: torch.Tensor  # [P, U] flat index into B * 2 * O * L
    valid: torch.Tensor  # [P, U] False on padding rows
    shape: tuple[int, int, int, int]  # (B, 2, O, L)


def select_rows(spec: NetSpec, params: torch.Tensor, target: int, mask: torch.Tensor
                ) -> tuple[Coefficients, Selection] | None:
    """Rows for the neurons where ``mask`` ([P, B, *out_shape]) is True, both sides; None if there are none."""
    layer = spec.layers[target]
    weight, bias = spec.weight(params, target), spec.bias(params, target)
    members, batch = mask.shape[:2]
    out_ch = weight.shape[1]
    count = mask[0, 0].numel() // out_ch
    chosen = mask.reshape(members, batch, 1, out_ch * count).expand(-1, -1, 2, -1).reshape(members, -1)
    counts = chosen.sum(1)
    size = int(counts.max())
    if size == 0:
        return None
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :size]
    valid = torch.arange(size, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    sample, rest = order // (2 * out_ch * count), order % (2 * out_ch * count)
    side, neuron = rest // (out_ch * count), rest % (out_ch * count)
    channel, position = neuron // count, neuron % count
    sign = (1 - 2 * side).to(weight.dtype) * valid.to(weight.dtype)  # zero on padding rows
    member = torch.arange(members, device=mask.device).unsqueeze(1)
    flat_w = weight.reshape(members * out_ch, -1)
    rows_w = flat_w.index_select(0, (member * out_ch + channel).reshape(-1)).view(members, size, -1)
    A = (rows_w * sign.unsqueeze(-1)).view(members, 1, size, 1, *weight.shape[2:])
    b = (bias.gather(1, channel) * sign).view(members, 1, size, 1)
    windows = _target_windows(spec, target) if isinstance(layer, Conv2d) else None
    coeffs = Coefficients(A, b, windows, sample * count + position if windows else sample)
    return coeffs, Selection(order, valid, (batch, 2, out_ch, count))


def backsubstitute(spec: NetSpec, params: torch.Tensor, box: Box, first_affine: int, target: int,
                   relaxations: dict[int, ReluRelaxation], C: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> Box:
    """Bounds on the output of affine layer ``target`` (or on C @ logits when ``target`` is the last layer).

    ``box`` is the input of layer ``first_affine`` ([B, *shape]); ``relaxations`` has an entry for
    every ReLU layer below ``target``. ``mask`` ([P, B, *shape]) restricts the work to the chosen
    neurons; the others get (-inf, inf). Returns bounds [P, B, K] for rows of C, else [P, B, *shape].
    """
    last = C is not None and target == len(spec.layers) - 1
    shape: tuple[int, ...] = (C.shape[1],) if C is not None and last else spec.shapes[target + 1]
    members, batch = params.shape[0], box.lower.shape[0]
    selection: Selection | None = None
    # Selected rows pay an index gather per ReLU; with most neurons chosen, all rows are cheaper.
    if mask is not None and not last and float(mask.float().mean()) <= SELECT_BELOW:
        picked = select_rows(spec, params, target, mask)
        if picked is None:
            infinite = torch.full((members, batch, *shape), math.inf, dtype=params.dtype, device=params.device)
            return Box(-infinite, infinite)
        coeffs, selection = picked
    else:
        coeffs = start_rows(spec, params, target, C)
    index = target - 1
    while index >= first_affine:
        layer = spec.layers[index]
        below = spec.layers[index - 1] if index > first_affine else None
        if (isinstance(layer, ReLU) and isinstance(below, Conv2d)
                and _fusable(coeffs, relaxations[index], spec.weight(params, index - 1), below)):
            coeffs = _relax_then_conv(coeffs, relaxations[index], spec.weight(params, index - 1),
                                      spec.bias(params, index - 1), below)
            index -= 2
            continue
        if isinstance(layer, ReLU):
            coeffs = _relax(coeffs, relaxations[index])
        elif isinstance(layer, Flatten):
            A = coeffs.A
            coeffs = coeffs.replace(A.reshape(*A.shape[:4], *spec.shapes[index]), coeffs.bias, None)
        elif isinstance(layer, Linear):
            coeffs = _through_linear(coeffs, spec.weight(params, index), spec.bias(params, index))
        elif isinstance(layer, Conv2d):
            in_shape = spec.shapes[index]
            coeffs = _through_conv(coeffs, spec.weight(params, index), spec.bias(params, index), layer,
                                   (in_shape[1], in_shape[2]))
        else:
            raise TypeError(f"layer {index}: {layer!r} cannot be back-substituted")
        index -= 1
    lower = _concretize(coeffs, box)  # [P, B, 2R, L], or [P, 1, U, 1] on selected rows
    if selection is not None:
        values = torch.where(selection.valid, lower.reshape(members, -1), -math.inf)
        full = torch.full((members, math.prod(selection.shape)), -math.inf, dtype=values.dtype, device=values.device)
        full = full.scatter(1, selection.order, values).view(members, *selection.shape)
        return Box(full[:, :, 0].reshape(members, batch, *shape), -full[:, :, 1].reshape(members, batch, *shape))
    rows = lower.shape[2] // 2
    low, neg_up = lower[:, :, :rows], lower[:, :, rows:]
    return Box(low.reshape(members, batch, *shape), -neg_up.reshape(members, batch, *shape))


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
