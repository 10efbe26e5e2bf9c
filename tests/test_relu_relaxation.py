"""The ReLU relaxations computed with float indicators equal the comparisons they stand for, ties included."""

from __future__ import annotations

import torch

from gls_core.bounds.relu import box_relaxation, deeppoly_lower_slope, deeppoly_relaxation
from gls_core.bounds.types import Box


def by_masks(bounds: Box) -> tuple[torch.Tensor, ...]:
    """The definitions with boolean masks: DeepPoly's (lower slope, upper slope, offset), HBox's (slope, offset)."""
    lower, upper = bounds.lower, bounds.upper
    active, unstable = lower >= 0, (lower < 0) & (upper > 0)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    slope = torch.where(unstable, upper / width, active.to(upper.dtype))
    offset = torch.where(unstable, -slope * lower, torch.zeros_like(upper))
    lower_slope = (active | (unstable & (upper > -lower))).to(upper.dtype)
    return lower_slope, slope, offset, active.to(upper.dtype), torch.where(unstable, upper, torch.zeros_like(upper))


def test_float_indicators_equal_the_masks_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        lower = torch.randn(100_000, generator=generator, dtype=dtype) * 3
        upper = lower + torch.rand(100_000, generator=generator, dtype=dtype) * 2
        lower[:1000] = 0.0  # l = 0: active
        upper[500:1000] = 0.0  # l = u = 0
        upper[1000:1500] = -lower[1000:1500]  # u = -l: the lower slope's tie
        lower[2000:2100] = upper[2000:2100]  # l = u (zero width)
        upper[3000:3100] = 0.0  # u = 0: inactive
        lower[4000:4100] = 1e-40 if dtype == torch.float64 else 1e-39  # tiny positive (subnormal in float32)
        bounds = Box(lower, upper)
        relaxation, box = deeppoly_relaxation(bounds), box_relaxation(bounds)
        expected = by_masks(bounds)
        assert relaxation.upper_offset is not None and box.upper_offset is not None
        got = (relaxation.lower_slope, relaxation.upper_slope, relaxation.upper_offset, box.lower_slope,
               box.upper_offset)
        for name, value, reference in zip(("lower slope", "upper slope", "offset", "box slope", "box offset"), got,
                                          expected):
            assert torch.equal(value, reference), f"{name} ({dtype})"
        assert torch.equal(box.upper_slope, expected[3])
        assert torch.equal(deeppoly_lower_slope(bounds), expected[0])
