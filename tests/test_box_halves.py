"""A box's centre and radius, halved by a multiplication, are the correctly rounded halves, bit for bit."""

from __future__ import annotations

import torch

from gls_core.bounds.types import Box


def test_centre_and_radius_equal_the_halved_sum_and_difference_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    for dtype, bits in ((torch.float32, torch.int32), (torch.float64, torch.int64)):
        scale = torch.exp(torch.randn(200_000, generator=generator, dtype=dtype) * 40)
        lower = torch.randn(200_000, generator=generator, dtype=dtype) * scale
        upper = lower + torch.rand(200_000, generator=generator, dtype=dtype) * scale
        tiny = torch.finfo(dtype).smallest_normal
        lower[:6] = torch.tensor([0.0, -0.0, -tiny, tiny / 4, -torch.finfo(dtype).max, 1.0], dtype=dtype)
        upper[:6] = torch.tensor([0.0, 0.0, tiny / 2, tiny, torch.finfo(dtype).max, float("inf")], dtype=dtype)
        box = Box(lower, upper)
        assert torch.equal(box.center.view(bits), ((upper + lower) / 2).view(bits))
        assert torch.equal(box.radius.view(bits), ((upper - lower) / 2).view(bits))
