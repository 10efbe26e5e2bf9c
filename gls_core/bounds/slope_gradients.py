"""alpha-CROWN's slope gradients in closed form: one recorded back-substitution and one relaxed forward pass.

The bound of a row is ``min_x L(x; alpha)``, an affine function of x whose coefficients the
back-substitution builds. Its derivative in a lower slope (Danskin) is, per row and unstable neuron,
``max(lambda, 0) * mu``: ``lambda`` is the row's coefficient on the ReLU's output (recorded on the way
down) and ``mu`` is the neuron's pre-activation computed by the row's own relaxed network at the
minimising corner ``x* = c - sign(A) r`` of the input box (one forward pass on the way up, every ReLU
replaced by the line the row uses there); the bound itself is the row read at x* on the last ReLU.
This is the chain rule that autograd applies to the whole walk, with its conventions at ties (a zero
coefficient reads the box centre and the upper line), for about the cost of one more pass instead of
a graph of every step. Where the native kernels apply, the first convolution's pre-activation at x*
comes from their last step, which never stores the rows' coefficients on the input.

beta-CROWN's split terms (a relaxation's ``input_term``, added to the rows' coefficients on the ReLU's
input) are linear in the bound too: its derivative in a term's entry is the same ``mu``, and the terms'
contribution to the bound is ``sum(term * mu)``, added where the bound is read above them.
"""

from __future__ import annotations

import torch

from ..nets.spec import Conv2d, NetSpec, ReLU
from . import kernels, native
from .backsub import Sides, first_pre_activation_at_corner, start_rows
from .layerwise import Walk
from .rules import At, rule_of
from .types import Box, RowwiseRelaxation


def bounds_and_slope_gradients(spec: NetSpec, params: torch.Tensor, state: Walk, C: torch.Tensor | None,
                               relaxations: dict[int, RowwiseRelaxation], sides: Sides
                               ) -> tuple[Box, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """The bounds of C @ logits under ``relaxations``, d(sum of the rows' lower bounds)/d(lower slope) per
    ReLU layer ([P, B, R, 1, *shape]; meaningful on unstable neurons, whose slopes alpha-CROWN ascends), and
    the same derivative in the input term of each ReLU layer whose relaxation has one (the rows'
    pre-activations at x*, ``mu``)."""
    last = len(spec.layers) - 1
    members, batch = params.shape[0], state.box.lower.shape[0]
    fills_lanes = members >= native.WIDTHS[0]  # the native sweeps vectorise over members: fewer waste their lanes
    coeffs = start_rows(spec, params, last, C, sides)
    rows = coeffs.A.shape[2]
    recorded: dict[int, torch.Tensor] = {}
    top_bias: torch.Tensor | None = None  # the rows' bias above the last ReLU
    corner_pre_activation: torch.Tensor | None = None
    index = last - 1
    while index >= state.first:
        layer = spec.layers[index]
        if isinstance(layer, ReLU):
            recorded[index] = coeffs.A.expand(members, batch, *coeffs.A.shape[2:])
            if top_bias is None:
                top_bias = coeffs.bias.expand(members, batch, rows, 1)
            below = spec.layers[index - 1]
            if index - 1 == state.first and isinstance(below, Conv2d) and fills_lanes:
                # The native kernel gives the first convolution's pre-activation at x* without storing the rows
                # on the input; the bound is then the rows on this ReLU's output at x* (linear: min at x*).
                corner_pre_activation = first_pre_activation_at_corner(
                    coeffs, relaxations[index], spec.weight(params, index - 1), spec.bias(params, index - 1), below,
                    state.box)
                if corner_pre_activation is not None:
                    break
        coeffs = rule_of(layer).backward(At(spec, params, index), coeffs, relaxations)
        index -= 1
    lower: torch.Tensor | None = None
    if corner_pre_activation is not None:
        start = index
        h = corner_pre_activation.reshape(members, batch * rows, *corner_pre_activation.shape[4:])
    else:
        start = state.first
        A = coeffs.A.expand(members, batch, *coeffs.A.shape[2:])  # [P, B, R, 1, *input shape]
        centre = state.box.center.unsqueeze(1).unsqueeze(2)
        radius = state.box.radius.unsqueeze(1).unsqueeze(2)
        window_dims = tuple(range(4, A.dim()))
        lower = coeffs.bias + (A * centre).sum(window_dims) - (A.abs() * radius).sum(window_dims)  # [P, B, R, 1]
        h = (centre - A.sign() * radius).reshape(members, batch * rows, *A.shape[4:])  # x* per row
    grads: dict[int, torch.Tensor] = {}
    term_grads: dict[int, torch.Tensor] = {}
    terms: torch.Tensor | float = 0.0  # the input terms' part of the bound, sum(term * mu), read with it at the top
    top = max(recorded)
    index = start
    while index <= top:
        layer = spec.layers[index]
        if not isinstance(layer, ReLU):
            h = _forward(At(spec, params, index), h)
            index += 1
            continue
        relaxation = relaxations[index]
        mu = h.view(members, batch, rows, 1, *h.shape[2:])
        coefficient = recorded[index]
        if relaxation.input_term is not None:
            term_grads[index] = mu
            terms = terms + (relaxation.input_term * mu).sum(tuple(range(4, mu.dim())))
        fused = None
        if index < top and relaxation.input_term is None and fills_lanes:  # the fused sweep never stores mu
            fused = _relax_forward_native(At(spec, params, index + 1), coefficient, mu, relaxation)
        if fused is not None:  # this ReLU and the convolution above it in one native sweep
            grads[index], h = fused
            index += 2
            continue
        # On stable neurons the slope is fixed whatever alpha holds, so their entries are left as they come.
        grads[index] = coefficient.clamp(min=0) * mu
        upper_line = relaxation.upper_slope.unsqueeze(2).unsqueeze(3) * mu
        if relaxation.upper_offset is not None:
            upper_line = upper_line + relaxation.upper_offset.unsqueeze(2).unsqueeze(3)
        # the row's line at x*: the lower line where the coefficient is positive, else the upper one (selected by
        # 0/1 floats, not a boolean mask: see relu.indicators)
        positive = torch.sign(coefficient).clamp_(min=0)
        relaxed = torch.addcmul((1 - positive) * upper_line, positive, relaxation.lower_slope * mu)
        if index == top:
            if lower is None:  # the rows are affine: their minimum is their value at x*, read on the smallest map
                assert top_bias is not None
                lower = top_bias + (coefficient * relaxed).sum(tuple(range(4, relaxed.dim()))) + terms
            break
        h = relaxed.view(members, batch * rows, *h.shape[2:])
        index += 1
    assert lower is not None
    return _packed(lower.reshape(members, batch, rows), sides), grads, term_grads


def _relax_forward_native(above: At, coefficient: torch.Tensor, mu: torch.Tensor, relaxation: RowwiseRelaxation
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the slope gradient, the next convolution's pre-activation at x*) from the native kernel, which never
    stores the relaxed map; None where it does not apply (the caller takes the step-by-step path)."""
    conv = above.layer
    tensors = [coefficient, mu, relaxation.lower_slope, relaxation.upper_slope]
    if relaxation.upper_offset is not None:
        tensors.append(relaxation.upper_offset)
    if not isinstance(conv, Conv2d) or not native.usable(*tensors, above.weight):
        return None
    members, batch, rows = mu.shape[:3]
    shape = mu.shape[4:]
    out_hw = above.spec.shapes[above.index + 1][1:]
    per_row = (members, batch * rows, *shape)
    umap = torch.arange(batch * rows, device=mu.device) // rows
    upper_offset = relaxation.upper_offset
    grad, following = native.relax_forward(
        coefficient.expand(members, batch, rows, 1, *shape).reshape(per_row), mu.reshape(per_row),
        relaxation.lower_slope.expand(members, batch, rows, 1, *shape).reshape(per_row), relaxation.upper_slope,
        upper_offset, umap, above.weight, above.bias, conv.stride, conv.padding, (out_hw[0], out_hw[1]))
    return grad.reshape(mu.shape), following


def _forward(at: At, h: torch.Tensor) -> torch.Tensor:
    """One affine or reshaping layer on per-member activations; convolutions by the measured kernel choice."""
    layer = at.layer
    if isinstance(layer, Conv2d):
        return kernels.conv_members(h, at.weight, at.bias, layer)
    return rule_of(layer).forward(at, h, False)


def _packed(lower: torch.Tensor, sides: Sides) -> Box:
    """Lower bounds of the stacked rows as (lower, upper) of the specification rows, as backsubstitute returns."""
    if sides == "lower":
        return Box(lower, torch.full_like(lower, torch.inf))
    if sides == "upper":
        return Box(torch.full_like(lower, -torch.inf), -lower)
    half = lower.shape[2] // 2
    return Box(lower[:, :, :half], -lower[:, :, half:])
