"""Back-substitution (the backward pass of DeepPoly/CROWN) for a whole population at once.

Linear bounds on chosen rows (specification rows or neurons of an affine layer) are pushed back
through the network to the input box and concretised. How ReLUs are relaxed is data handed in
(:class:`ReluRelaxation` per ReLU layer); this module never asks which relaxation it holds.

The rows (:mod:`.coefficients`) go down one layer at a time by the layer's rule (:mod:`.rules`),
except for the fused last steps near the input, whose kernels are chosen by measurement. Upper
bounds are lower bounds of the negated rows, so both sides run as one stacked computation.

Intermediate bounds are needed only for neurons the interval reference cannot decide, so those
targets run on *selected rows*; the work then scales with the number of unstable neurons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..members import conv_transpose_cost, conv_transpose_matrix
from ..nets.spec import Conv2d, Linear, NetSpec, ReLU
from . import kernels, native
from .coefficients import Coefficients, Windows, conv_bias, gather_windows, through_conv, through_relu
from .rules import At, Footprint, rule_of
from .types import Box, ReluRelaxation, RowwiseRelaxation

Sides = Literal["both", "lower", "upper"]
SELECT_BELOW = 0.5  # largest share of unstable neurons for which selected rows pay off (measured)


def _fusable(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, conv: Conv2d) -> bool:
    """True for the first step below a convolution target: rows still shared by all inputs, then a dense-matrix conv."""
    A = coeffs.A
    if coeffs.rows is not None or coeffs.windows is None or A.shape[1] != 1:
        return False
    if isinstance(relaxation, RowwiseRelaxation) or relaxation.lower_offset is not None:
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
    bias_through = torch.bmm(slopes, stacked * spread_bias.repeat(1, 2, 1))  # [P, B*L, R]: sum of A over window * b
    new_bias = coeffs.bias + bias_through.view(members, batch, count, rows).transpose(2, 3)
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


def start_rows(spec: NetSpec, params: torch.Tensor, target: int, C: torch.Tensor | None,
               sides: Sides = "both") -> Coefficients:
    """Every row for the output of affine layer ``target``: through C for the last layer, else every neuron.

    Upper bounds are lower bounds of the negated rows: ``sides`` "both" stacks [rows; -rows] so one
    lower-bound pass yields both, "lower" keeps rows, "upper" keeps -rows.
    """
    layer = spec.layers[target]
    weight, bias = spec.weight(params, target), spec.bias(params, target)
    signs = {"both": (1.0, -1.0), "lower": (1.0,), "upper": (-1.0,)}[sides]
    if isinstance(layer, Linear):
        if C is not None:
            A = torch.einsum("bkc,pci->pbki", C, weight)
            b = torch.einsum("bkc,pc->pbk", C, bias)
        else:
            A, b = weight.unsqueeze(1), bias.unsqueeze(1)
        A = torch.cat([sign * A for sign in signs], dim=2).unsqueeze(3)
        b = torch.cat([sign * b for sign in signs], dim=2).unsqueeze(3)
        return Coefficients(A, b, None)
    if not isinstance(layer, Conv2d):
        raise TypeError(f"layer {target} is not affine")
    windows = _target_windows(spec, target)
    stacked_w = torch.cat([sign * weight for sign in signs], dim=1)  # [P, sides*O, C, k, k]
    A = stacked_w.unsqueeze(1).unsqueeze(3).expand(-1, 1, -1, windows.count, -1, -1, -1)
    b = torch.cat([sign * bias for sign in signs], dim=1).view(params.shape[0], 1, -1, 1)
    b = b.expand(-1, 1, -1, windows.count)
    return Coefficients(A, b, windows)


def _target_windows(spec: NetSpec, target: int) -> Windows:
    layer = spec.layers[target]
    assert isinstance(layer, Conv2d)
    out_h, out_w = spec.shapes[target + 1][1:]
    return Windows((out_h, out_w), layer.stride, layer.padding, (layer.kernel, layer.kernel))


@dataclass(frozen=True)
class Selection:
    """Which (input, side, neuron, position) rows of a target were chosen: U rows shared by all members."""

    order: torch.Tensor  # [P, U] flat index into B * 2 * O * L, the same for every member
    valid: torch.Tensor  # [P, U] False on rows this member did not choose
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
    # The rows chosen by any member, shared by all: members are nearby weight sets with nearly the same
    # unstable neurons, and shared rows keep one geometry per row for the member-vectorised kernels.
    union = chosen.any(0)
    size = int(union.sum())
    if size == 0:
        return None
    order = torch.nonzero(union).squeeze(1).unsqueeze(0).expand(members, -1)
    valid = chosen.gather(1, order)
    sample, rest = order // (2 * out_ch * count), order % (2 * out_ch * count)
    side, neuron = rest // (out_ch * count), rest % (out_ch * count)
    channel, position = neuron // count, neuron % count
    sign = (1 - 2 * side).to(weight.dtype) * valid.to(weight.dtype)  # zero on rows not chosen by the member
    member = torch.arange(members, device=mask.device).unsqueeze(1)
    flat_w = weight.reshape(members * out_ch, -1)
    rows_w = flat_w.index_select(0, (member * out_ch + channel).reshape(-1)).view(members, size, -1)
    A = (rows_w * sign.unsqueeze(-1)).view(members, 1, size, 1, *weight.shape[2:])
    b = (bias.gather(1, channel) * sign).view(members, 1, size, 1)
    windows = _target_windows(spec, target) if isinstance(layer, Conv2d) else None
    coeffs = Coefficients(A, b, windows, sample * count + position if windows else sample)
    return coeffs, Selection(order, valid, (batch, 2, out_ch, count))


def backsubstitute(spec: NetSpec, params: torch.Tensor, box: Box, first_affine: int, target: int,
                   relaxations: Mapping[int, ReluRelaxation], C: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None, sides: Sides = "both") -> Box:
    """Bounds on the output of affine layer ``target`` (or on C @ logits when ``target`` is the last layer).

    ``box`` is the input of layer ``first_affine`` ([B, *shape]); ``relaxations`` has an entry for
    every ReLU layer below ``target``. ``mask`` ([P, B, *shape]) restricts the work to the chosen
    neurons; the others get (-inf, inf). ``sides`` computes only the lower or the upper bound (the
    other side is returned as -inf or inf), which halves the rows. Returns bounds [P, B, K] for rows
    of C, else [P, B, *shape].
    """
    last = C is not None and target == len(spec.layers) - 1
    shape: tuple[int, ...] = (C.shape[1],) if C is not None and last else spec.shapes[target + 1]
    members, batch = params.shape[0], box.lower.shape[0]
    selection: Selection | None = None
    # Selected rows pay an index gather per ReLU; with most neurons chosen, all rows are cheaper.
    if mask is not None and not last and sides == "both" and float(mask.float().mean()) <= SELECT_BELOW:
        picked = select_rows(spec, params, target, mask)
        if picked is None:
            infinite = torch.full((members, batch, *shape), math.inf, dtype=params.dtype, device=params.device)
            return Box(-infinite, infinite)
        coeffs, selection = picked
    else:
        coeffs = start_rows(spec, params, target, C, sides)
    lower = _propagate(spec, params, box, first_affine, target, relaxations, coeffs)
    if selection is not None:
        values = torch.where(selection.valid, lower.reshape(members, -1), -math.inf)
        full = torch.full((members, math.prod(selection.shape)), -math.inf, dtype=values.dtype, device=values.device)
        full = full.scatter(1, selection.order, values).view(members, *selection.shape)
        return Box(full[:, :, 0].reshape(members, batch, *shape), -full[:, :, 1].reshape(members, batch, *shape))
    lower = lower.expand(members, batch, *lower.shape[2:])
    if sides != "both":
        value = lower.reshape(members, batch, *shape)
        unbounded = torch.full_like(value, math.inf)
        return Box(value, unbounded) if sides == "lower" else Box(-unbounded, -value)
    rows = lower.shape[2] // 2
    low, neg_up = lower[:, :, :rows], lower[:, :, rows:]
    return Box(low.reshape(members, batch, *shape), -neg_up.reshape(members, batch, *shape))


def _propagate(spec: NetSpec, params: torch.Tensor, box: Box, first_affine: int, target: int,
               relaxations: Mapping[int, ReluRelaxation], coeffs: Coefficients) -> torch.Tensor:
    """Push the rows down to the input box and concretise: [P, B, R, L], or [P, 1, U, 1] on selected rows."""
    index = target - 1
    while index >= first_affine:
        layer = spec.layers[index]
        below = spec.layers[index - 1] if index > first_affine else None
        if isinstance(layer, ReLU) and isinstance(below, Conv2d) and index - 1 == first_affine:
            return _last_relu_step(coeffs, relaxations[index], spec.weight(params, index - 1),
                                   spec.bias(params, index - 1), below, box)
        if (isinstance(layer, ReLU) and isinstance(below, Conv2d)
                and _fusable(coeffs, relaxations[index], spec.weight(params, index - 1), below)):
            coeffs = _relax_then_conv(coeffs, relaxations[index], spec.weight(params, index - 1),
                                      spec.bias(params, index - 1), below)
            index -= 2
            continue
        if isinstance(layer, Conv2d) and index == first_affine:
            return _concretize_through_conv(coeffs, spec.weight(params, index), spec.bias(params, index), layer, box)
        coeffs = rule_of(layer).backward(At(spec, params, index), coeffs, relaxations)
        index -= 1
    return _concretize(coeffs, box)


def _last_relu_step(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, bias: torch.Tensor,
                    conv: Conv2d, box: Box) -> torch.Tensor:
    """Rows on the output of the ReLU over the first convolution: relax, pass the convolution, concretise.

    Candidates, chosen by measurement: the native kernel that relaxes each row on the fly and never
    stores it below the ReLU, the dense fused ReLU-and-convolution matmul, and the step-by-step path.
    """
    A = coeffs.A
    form = "selected" if coeffs.rows is not None else "image" if coeffs.windows is None else "patch"
    shared = A.stride(1) == 0 or A.shape[1] == 1
    key = ("relax-concretize", kernels.Geometry.of(A, weight, conv.stride), conv.padding,
           form, shared, isinstance(relaxation, RowwiseRelaxation),
           isinstance(relaxation, RowwiseRelaxation) and relaxation.input_term is not None, tuple(box.lower.shape[1:]),
           *kernels.size_key(A.shape[0], math.prod(A.shape[1:4])), *kernels.tensor_key(A, weight, box.lower))
    args = (coeffs, relaxation, weight, bias, conv, box)
    name = kernels.choose("relax-concretize", key, LAST_RELU_STEP, args)
    return LAST_RELU_STEP[name][0](*args)


def _last_step_stepwise(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, bias: torch.Tensor,
                        conv: Conv2d, box: Box) -> torch.Tensor:
    return _concretize_through_conv(through_relu(coeffs, relaxation), weight, bias, conv, box)


def _last_step_fused_dense(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor,
                           bias: torch.Tensor, conv: Conv2d, box: Box) -> torch.Tensor:
    return _concretize(_relax_then_conv(coeffs, relaxation, weight, bias, conv), box)


def _last_step_native(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor, bias: torch.Tensor,
                      conv: Conv2d, box: Box) -> torch.Tensor:
    bias_total, args = _native_last_step_args(coeffs, relaxation, weight, bias, conv, box)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:4]):
        values = _RelaxConcretize.apply(*args)
    else:
        values = native.relax_concretize(*_native_order(*args))
    return bias_total + values.view(bias_total.shape)


def first_pre_activation_at_corner(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor,
                                   bias: torch.Tensor, conv: Conv2d, box: Box) -> torch.Tensor | None:
    """For whole-map rows on the output of the ReLU over the first convolution: that convolution's output at
    each row's minimising corner of the box, c - sign(A) r with A the rows' coefficients on the input (the
    gradient of the last step in the relaxed rows): [P, B, R, 1, O, h, w]. None where the native kernels
    do not apply."""
    if coeffs.windows is not None or coeffs.rows is not None:
        return None
    if not _native_last_step_applies(coeffs, relaxation, weight, bias, conv, box):
        return None
    bias_total, args = _native_last_step_args(coeffs, relaxation, weight, bias, conv, box)
    return native.relax_dual(*_native_order(*args)).reshape(*bias_total.shape, *coeffs.A.shape[4:])


def _native_last_step_args(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor,
                           bias: torch.Tensor, conv: Conv2d, box: Box) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """(the rows' bias on every input, the native kernels' arguments in :class:`_RelaxConcretize`'s order)."""
    A = coeffs.A  # [P, Bx, R, L, O, h, w]
    members, bx, rows, count = A.shape[:4]
    placement = _RowIndex.of(coeffs, box.lower.shape[0])
    sample, row, position = placement.sample, placement.row, placement.position
    per_row = isinstance(relaxation, RowwiseRelaxation)
    if coeffs.rows is not None:
        distinct, arow, lmap = A.reshape(members, -1, *A.shape[4:]), row, sample
    else:
        if (bx == 1 or A.stride(1) == 0) and (count == 1 or A.stride(3) == 0):
            distinct, arow = A[:, 0, :, 0], row  # the same rows at every input and position (a target's weights)
        elif bx == 1 or A.stride(1) == 0:
            distinct, arow = A[:, 0].reshape(members, rows * count, *A.shape[4:]), row * count + position
        else:
            distinct, arow = A.reshape(members, -1, *A.shape[4:]), torch.arange(sample.shape[0], device=A.device)
        lmap = sample * rows + row if per_row else sample
    bias_total = _per_row(coeffs, coeffs.bias, box.lower.shape[0])
    origin_y, origin_x = placement.origin_y, placement.origin_x
    args = (distinct, relaxation.lower_slope, relaxation.upper_slope, relaxation.upper_offset, weight, bias,
            box.center, box.radius, arow, lmap, sample, origin_y, origin_x, sample, conv.padding, conv.stride)
    return bias_total, args


def _native_order(distinct: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, offset: torch.Tensor | None,
                  weight: torch.Tensor, bias: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor,
                  arow: torch.Tensor, lmap: torch.Tensor, umap: torch.Tensor, origin_y: torch.Tensor,
                  origin_x: torch.Tensor, sample: torch.Tensor, padding: int, stride: int) -> tuple[Any, ...]:
    return (distinct, arow, lower, lmap, upper, offset, umap, origin_y, origin_x, weight, bias, padding, stride,
            centre, radius, sample)


class _RelaxConcretize(torch.autograd.Function):
    """The native last step with gradients in the rows and the relaxation (alpha-CROWN's slopes): whole-map rows.

    d/d(relaxed row) comes from the native dual kernel; the chain through a' = a+ ls + a- us (and
    the offset term a- uo) is applied here, summed over rows that share coefficients or maps.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> torch.Tensor:
        ctx.save_for_backward(*(t for t in args[:14] if t is not None))
        ctx.has_offset, ctx.geometry = args[3] is not None, args[14:]
        return native.relax_concretize(*_native_order(*args))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = list(ctx.saved_tensors)
        if not ctx.has_offset:
            saved.insert(3, None)
        distinct, lower, upper, offset, weight, bias, centre, radius, arow, lmap, umap, oy, ox, sample = saved
        args = (distinct, lower, upper, offset, weight, bias, centre, radius, arow, lmap, umap, oy, ox, sample,
                *ctx.geometry)
        maps_shape = (distinct.shape[0], -1, *distinct.shape[2:])
        dual = native.relax_dual(*_native_order(*args)) * grad[..., None, None, None]  # d value / d a'
        gather, scatter = _RowMaps(arow, distinct.shape[1]), _RowMaps(lmap, lower.reshape(maps_shape).shape[1])
        by_sample = _RowMaps(umap, upper.reshape(maps_shape).shape[1])
        a = gather.rows(distinct)
        positive, negative = a.clamp(min=0), a.clamp(max=0)
        grads: list[torch.Tensor | None] = [None] * 16
        if ctx.needs_input_grad[0]:
            row_grad = dual * torch.where(a > 0, scatter.rows(lower.reshape(maps_shape)),
                                          by_sample.rows(upper.reshape(maps_shape)))
            if offset is not None:
                row_grad = row_grad + (a < 0) * by_sample.rows(offset.reshape(maps_shape)) * grad[..., None, None, None]
            grads[0] = gather.sum(row_grad)
        if ctx.needs_input_grad[1]:
            grads[1] = scatter.sum(dual * positive).view(lower.shape)
        if ctx.needs_input_grad[2]:
            grads[2] = by_sample.sum(dual * negative).view(upper.shape)
        if offset is not None and ctx.needs_input_grad[3]:
            grads[3] = by_sample.sum(negative * grad[..., None, None, None]).view(offset.shape)
        return tuple(grads)


class _RowMaps:
    """Rows reading M maps through an index: identity, regular repetition (row n reads n // r), or general."""

    def __init__(self, index: torch.Tensor, maps: int) -> None:
        self.index, self.maps = index, maps
        rows = index.shape[0]
        self.repeat = rows // maps if rows % maps == 0 else 0
        regular = torch.arange(maps, device=index.device).repeat_interleave(self.repeat) if self.repeat else None
        self.regular = regular is not None and bool(torch.equal(regular, index))

    def rows(self, maps: torch.Tensor) -> torch.Tensor:
        """[P, M, ...] -> [P, N, ...] (a broadcast view when regular)."""
        if self.regular:
            shape = maps.shape
            return maps.unsqueeze(2).expand(shape[0], shape[1], self.repeat, *shape[2:]).flatten(1, 2)
        return maps.index_select(1, self.index)

    def sum(self, rows: torch.Tensor) -> torch.Tensor:
        """[P, N, ...] -> [P, M, ...], adding the rows that read each map."""
        if self.regular:
            return rows.view(rows.shape[0], self.maps, self.repeat, *rows.shape[2:]).sum(2)
        return torch.zeros(rows.shape[0], self.maps, *rows.shape[2:], dtype=rows.dtype,
                           device=rows.device).index_add_(1, self.index, rows)


def _native_last_step_applies(coeffs: Coefficients, relaxation: ReluRelaxation, weight: torch.Tensor,
                              bias: torch.Tensor, conv: Conv2d, box: Box) -> bool:
    tensors = [coeffs.A, relaxation.lower_slope, relaxation.upper_slope, weight, bias, box.lower, box.upper]
    if relaxation.upper_offset is not None:
        tensors.append(relaxation.upper_offset)
    per_row = isinstance(relaxation, RowwiseRelaxation)
    if relaxation.lower_offset is not None or (per_row and coeffs.rows is not None):
        return False
    if isinstance(relaxation, RowwiseRelaxation) and relaxation.input_term is not None:
        return False  # split multipliers: the step-by-step path adds them
    if any(t.requires_grad for t in tensors[:3]) and torch.is_grad_enabled():  # gradients: whole-map rows only
        whole_map = coeffs.windows is None and coeffs.rows is None
        return whole_map and kernels.native_applies(conv.kernel, conv.stride, *tensors[3:]) and native.usable(
            *tensors[:3])
    return kernels.native_applies(conv.kernel, conv.stride, *tensors)


LAST_RELU_STEP: kernels.Table = {
    "native": (_last_step_native, _native_last_step_applies),
    "fused-dense": (_last_step_fused_dense,
                    lambda coeffs, relaxation, weight, bias, conv, box: _fusable(coeffs, relaxation, weight, conv)),
    "stepwise": (_last_step_stepwise, lambda *_: True),
}


def _concretize_through_conv(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor, conv: Conv2d,
                             box: Box) -> torch.Tensor:
    """The last step: rows on the first convolution's output, through it, concretised over the input box.

    Two candidates, chosen by measurement: the fused native kernel, which never stores the rows'
    coefficients on the input, and the transposed convolution followed by the concretisation.
    """
    A = coeffs.A
    key = ("concretize", kernels.Geometry.of(A, weight, conv.stride), conv.padding,
           coeffs.windows is not None, coeffs.rows is not None, tuple(box.lower.shape[1:]),
           *kernels.size_key(A.shape[0], math.prod(A.shape[1:4])), *kernels.tensor_key(A, weight, box.lower))
    name = kernels.choose("concretize", key, CONCRETIZE, (coeffs, weight, bias, conv, box))
    return CONCRETIZE[name][0](coeffs, weight, bias, conv, box)


def _concretize_materialized(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor, conv: Conv2d,
                             box: Box) -> torch.Tensor:
    height, width = box.lower.shape[-2:]
    return _concretize(through_conv(coeffs, weight, bias, conv, (height, width)), box)


def _concretize_native(coeffs: Coefficients, weight: torch.Tensor, bias: torch.Tensor, conv: Conv2d,
                       box: Box) -> torch.Tensor:
    A = coeffs.A  # [P, Bx, R, L, O, h, w]
    members = A.shape[0]
    batch = box.lower.shape[0]
    rows = _RowIndex.of(coeffs, batch)
    if coeffs.rows is None:
        A = A.expand(members, batch, *A.shape[2:])
    new_bias = _per_row(coeffs, conv_bias(coeffs, bias), batch)
    # Window origins on the convolution's output, seen on its input.
    placement = kernels.RowPlacement(rows.sample, rows.origin_y * conv.stride - conv.padding,
                                     rows.origin_x * conv.stride - conv.padding)
    values = kernels.concretize_native(A.reshape(members, -1, *A.shape[4:]), weight, conv.stride, box.center,
                                       box.radius, placement)
    return new_bias + values.view(new_bias.shape)


@dataclass(frozen=True)
class _RowIndex:
    """Each row of a coefficient set as the native kernels see it: its input, its row and window position
    among the target's, and its window's origin on the map the coefficients sit on."""

    sample: torch.Tensor  # [N]
    row: torch.Tensor  # [N] index among the R rows (position among U selected rows)
    position: torch.Tensor  # [N] window position among the L of the grid
    origin_y: torch.Tensor  # [N]
    origin_x: torch.Tensor

    @staticmethod
    def of(coeffs: Coefficients, batch: int) -> _RowIndex:
        A = coeffs.A
        rows, count = A.shape[2], A.shape[3]
        device = A.device
        if coeffs.rows is not None:  # selected rows, shared by all members: [P, 1, U, 1, ...]
            index = coeffs.rows[0]
            grid_count = coeffs.windows.count if coeffs.windows is not None else 1
            sample, position = index // grid_count, index % grid_count
            row = torch.arange(index.shape[0], device=device)
        else:  # row n = (input b, row r, window position l)
            sample = torch.arange(batch, device=device).repeat_interleave(rows * count)
            row = torch.arange(rows, device=device).repeat_interleave(count).repeat(batch)
            position = torch.arange(count, device=device).repeat(batch * rows)
        if coeffs.windows is None:
            origin_y = origin_x = torch.zeros_like(sample)
        else:
            windows = coeffs.windows
            origin_y = (position // windows.grid[1]) * windows.stride - windows.offset
            origin_x = (position % windows.grid[1]) * windows.stride - windows.offset
        return _RowIndex(sample, row, position, origin_y, origin_x)



def _per_row(coeffs: Coefficients, values: torch.Tensor, batch: int) -> torch.Tensor:
    """A per-row tensor of ``coeffs`` ([P, Bx, R, L]) expanded to every input, unless rows are selected."""
    A = coeffs.A
    return values if coeffs.rows is not None else values.expand(A.shape[0], batch, *A.shape[2:4])


CONCRETIZE: kernels.Table = {
    "native": (_concretize_native,
               lambda coeffs, weight, bias, conv, box: kernels.concretize_applies(coeffs.A, weight, conv.stride,
                                                                                  box.lower, box.upper)),
    "materialize": (_concretize_materialized, lambda *_: True),
}
kernels.OPERATIONS["concretize"] = CONCRETIZE
kernels.OPERATIONS["relax-concretize"] = LAST_RELU_STEP


def footprint(spec: NetSpec, target: int, first_affine: int, rows: int | None = None,
              fused_input: bool = False) -> int:
    """Largest coefficient tensor, in floats per (member, input), of back-substituting from ``target``.

    Used to chunk populations and batches so that CNN5-L and CNN7 fit in memory. ``fused_input``:
    the step through a first convolution into the input box stores nothing (the native kernel).
    """
    layer = spec.layers[target]
    if isinstance(layer, Linear):
        count = 2 * (rows if rows is not None else layer.out_features)
        window: tuple[int, ...] = spec.shapes[target]
        windows: tuple[int, int] | None = None
    else:
        assert isinstance(layer, Conv2d)
        count = 2 * math.prod(spec.shapes[target + 1])
        window = (layer.in_channels, layer.kernel, layer.kernel)
        windows = (layer.kernel, layer.kernel)
    seen = Footprint(window, windows)
    largest = count * math.prod(seen.window)
    last_stored = first_affine + 1 if fused_input and isinstance(spec.layers[first_affine], Conv2d) else first_affine
    for index in range(target - 1, last_stored - 1, -1):
        seen = rule_of(spec.layers[index]).footprint(spec.layers[index], spec.shapes[index], seen)
        largest = max(largest, count * math.prod(seen.window))
    return largest
