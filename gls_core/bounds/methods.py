"""The relaxations, each composed from the walk, a ReLU relaxation and the back-substitution.

- ``ibp``: intervals everywhere (Gowal et al., 2018).
- ``hbox``: hybrid zonotope (Mirman et al., 2018): affine layers exact, unstable ReLUs boxed;
  computed by back-substitution with box relaxations, which is the same set.
- ``crown-ibp`` (Zhang et al., 2020): IBP intermediate bounds, DeepPoly for the output.
- ``deeppoly`` = ``crown`` (Singh et al., 2019; Zhang et al., 2018): back-substituted intermediate
  bounds, intersected with the one-step interval bound (as ERAN and auto_LiRPA do).
"""

from __future__ import annotations

import torch

from ..nets.spec import NetSpec
from .backsub import Sides
from .ibp import ibp
from .layerwise import backsub_bounds, backsub_intersect_bounds, check_supported, final_bounds, interval_bounds, walk
from .region import network_input
from .relu import box_relaxation, deeppoly_relaxation
from .types import Box


def ibp_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None,
               sides: Sides = "both") -> Box:
    # Both sides cost the same as one: centre and radius are propagated together.
    check_supported(spec)
    box, first = network_input(spec, input_box)
    return ibp(spec, params, box, first, C)


def hbox_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None,
             sides: Sides = "both") -> Box:
    # No intersection with intervals: that keeps HBox provably never looser than IBP.
    state = walk(spec, params, input_box, box_relaxation, backsub_bounds)
    return final_bounds(spec, params, state, C, sides=sides)


def crown_ibp_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None,
             sides: Sides = "both") -> Box:
    state = walk(spec, params, input_box, deeppoly_relaxation, interval_bounds)
    return final_bounds(spec, params, state, C, sides=sides)


def deeppoly_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None,
             sides: Sides = "both") -> Box:
    state = walk(spec, params, input_box, deeppoly_relaxation, backsub_intersect_bounds)
    return final_bounds(spec, params, state, C, sides=sides)
