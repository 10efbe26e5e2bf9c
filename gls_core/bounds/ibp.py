"""Interval bound propagation (Mirman et al., 2018; Gowal et al., 2018), Eq. (2) of the paper.

Boxes are carried as centre and radius: W c + b and |W| r, one batched call per layer.
"""

from __future__ import annotations

import torch

from ..members import linear_forward, matmul_ready
from ..nets.spec import NetSpec
from .rules import At, rule_of
from .types import Box


def propagate_box(spec: NetSpec, params: torch.Tensor, box: Box, start: int, stop: int,
                  shared: bool, pre_relu: dict[int, Box] | None = None) -> tuple[Box, bool]:
    """Interval-propagate ``box`` through layers [start, stop); record ReLU inputs in ``pre_relu``."""
    for index in range(start, stop):
        layer = spec.layers[index]
        rule = rule_of(layer)
        if rule.relaxed and pre_relu is not None:
            pre_relu[index] = box
        box = rule.interval(At(spec, params, index), box, shared)
        shared = shared and not layer.affine
    return box, shared


def spec_interval(spec: NetSpec, params: torch.Tensor, box: Box, C: torch.Tensor | None) -> Box:
    """IBP bounds of C @ logits given the box of the last affine layer's input ([P, B, I]).

    Folding C into the last layer first (|C W| r) is tighter than subtracting logit intervals. A batch's
    specification rows are few distinct ones (a margin row is e_j - e_t: at most classes x (classes - 1)),
    so |C W| is formed once per distinct row and member, and each input reads its rows' radii from one
    matmul, instead of a P x B x K x I tensor.
    """
    index = len(spec.layers) - 1
    if C is None:
        return rule_of(spec.layers[index]).interval(At(spec, params, index), box, False)
    weight, bias = spec.weight(params, index), spec.bias(params, index)  # [P, O, I], [P, O]
    logits = linear_forward(box.center, weight, bias)  # centre of the logits: [P, B, O]
    mid = torch.einsum("bkc,pbc->pbk", C, logits)
    batch, rows, classes = C.shape
    distinct, which = torch.unique(C.reshape(-1, classes), dim=0, return_inverse=True)
    if distinct.shape[0] < batch * rows:
        folded = torch.einsum("uc,pci->piu", distinct, weight).abs()  # |C_u W|: [P, I, U]
        radii = torch.bmm(matmul_ready(box.radius), folded)  # [P, B, U]
        rad = radii.gather(2, which.view(1, batch, rows).expand(radii.shape[0], -1, -1))
    else:
        folded_rows = torch.einsum("bkc,pci->pbki", C, weight).abs()
        rad = torch.matmul(folded_rows, matmul_ready(box.radius).unsqueeze(-1)).squeeze(-1)
    return Box(mid - rad, mid + rad)


def ibp(spec: NetSpec, params: torch.Tensor, box: Box, start: int, C: torch.Tensor | None,
        pre_relu: dict[int, Box] | None = None) -> Box:
    """IBP bounds of the network (or of C @ logits) from the network-input box."""
    last = len(spec.layers) - 1
    penultimate, shared = propagate_box(spec, params, box, start, last, True, pre_relu)
    if shared:
        penultimate = Box(penultimate.lower.expand(params.shape[0], *penultimate.lower.shape),
                          penultimate.upper.expand(params.shape[0], *penultimate.upper.shape))
    return spec_interval(spec, params, penultimate, C)
