"""Standard and robust cross-entropy, and the certification test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import METHOD_CASES, bounds, random_inputs, random_population

import gls_core
from gls_core.nets.zoo import build_cnn


def test_standard_loss_is_cross_entropy_per_member_and_sample() -> None:
    generator = torch.Generator().manual_seed(40)
    logits = torch.randn(3, 5, 4, generator=generator)
    y = torch.randint(0, 4, (5,), generator=generator)
    loss = gls_core.standard_loss(logits, y)
    assert loss.shape == (3, 5)
    for p in range(3):
        torch.testing.assert_close(loss[p], F.cross_entropy(logits[p], y, reduction="none"))
    single = gls_core.standard_loss(logits[1], y)
    assert single.shape == (5,)
    torch.testing.assert_close(single, loss[1])


def test_robust_loss_by_hand() -> None:
    upper = torch.tensor([[0.0, 0.0], [math.log(2.0), math.log(3.0)], [-1e4, -1e4]])
    # log(1 + sum exp(u)): log 3, log 6, ~0.
    expected = torch.tensor([math.log(3.0), math.log(6.0), 0.0])
    torch.testing.assert_close(gls_core.robust_loss(upper), expected)
    # Large margins stay finite (logsumexp, no overflow): about max(u).
    assert gls_core.robust_loss(torch.tensor([[1e4, 0.0]])).item() == pytest.approx(1e4)


def test_robust_loss_is_monotone_in_every_margin() -> None:
    generator = torch.Generator().manual_seed(41)
    upper = torch.randn(6, 4, generator=generator)
    bumped = upper.clone()
    bumped[:, 2] += 0.5
    assert (gls_core.robust_loss(bumped) > gls_core.robust_loss(upper)).all()
    assert (gls_core.robust_loss(upper) > 0).all()


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_robust_loss_at_zero_radius_is_standard_loss(case: str) -> None:
    """eps = 0: the margin upper bounds are the margins, and robust CE is the cross-entropy."""
    generator = torch.Generator().manual_seed(42)
    spec = build_cnn("cnn", (1, 8, 8), 5, [(3, 3, 2, 1), (4, 3, 1, 1)], [6])
    params = random_population(spec, 3, generator)
    x = random_inputs(spec, 4, generator)
    y = torch.randint(0, 5, (4,), generator=generator)
    C = gls_core.margin_spec(y, 5)
    _, upper = bounds(spec, x, 0.0, case, C=C, params=params)
    logits = gls_core.forward(spec, params, x)
    torch.testing.assert_close(gls_core.robust_loss(upper), gls_core.standard_loss(logits, y), rtol=1e-5, atol=1e-5)


def test_robust_loss_bounds_the_loss_in_the_region() -> None:
    """For eps > 0 the robust loss is at least the standard loss at x (and at any x' of the region)."""
    generator = torch.Generator().manual_seed(43)
    spec = gls_core.network("cnn3-tiny", "digits")
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 3, generator)
    y = torch.randint(0, 10, (3,), generator=generator)
    C = gls_core.margin_spec(y, 10)
    shifted = (x + 0.05 * (2 * torch.rand(x.shape, generator=generator) - 1)).clamp(0, 1)
    for case in METHOD_CASES:
        _, upper = bounds(spec, x, 0.05, case, C=C, params=params)
        robust = gls_core.robust_loss(upper)
        assert robust.shape == (2, 3)
        for point in (x, shifted):
            assert (robust >= gls_core.standard_loss(gls_core.forward(spec, params, point), y) - 1e-5).all(), case


def test_certified_semantics() -> None:
    upper = torch.tensor([
        [-1.0, -0.5, -1e-6],  # every difference provably negative: certified
        [-1.0, 0.0, -2.0],  # a tie is not a proof
        [0.3, -1.0, -1.0],  # one class may win
    ])
    assert gls_core.certified(upper).tolist() == [True, False, False]
    population = upper.unsqueeze(0).expand(2, 3, 3)
    assert gls_core.certified(population).shape == (2, 3)
    assert gls_core.certified(torch.tensor([[float("nan")]])).tolist() == [False]


def test_certified_agrees_with_prediction_at_zero_radius() -> None:
    """With eps = 0 (exact bounds), certified means the label is the strict argmax of the logits."""
    generator = torch.Generator().manual_seed(44)
    spec = gls_core.network("fc-8x8", "digits")
    params = random_population(spec, 3, generator)
    x = random_inputs(spec, 16, generator)
    logits = gls_core.forward(spec, params, x)
    y = logits[0].argmax(-1)  # member 0 is right everywhere
    y[::2] = (y[::2] + 1) % 10  # ... except on every other input
    _, upper = gls_core.compute_bounds(spec, x, 0.0, "deeppoly", C=gls_core.margin_spec(y, 10), params=params)
    expected = logits.argmax(-1) == y
    assert torch.equal(gls_core.certified(upper), expected)
    assert gls_core.certified(upper)[0].tolist() == [i % 2 == 1 for i in range(16)]


def test_certification_only_shrinks_with_radius() -> None:
    generator = torch.Generator().manual_seed(45)
    spec = gls_core.network("fc-8x8", "digits")
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 16, generator)
    y = gls_core.forward(spec, params, x)[0].argmax(-1)
    C = gls_core.margin_spec(y, 10)
    previous = None
    for eps in (0.0, 0.001, 0.01, 0.05, 0.2):
        _, upper = gls_core.compute_bounds(spec, x, eps, "ibp", C=C, params=params)
        now = gls_core.certified(upper)
        if previous is not None:
            assert not (now & ~previous).any(), eps
        previous = now
    assert previous is not None and not previous.all()
