"""The paper's toy case: y = ReLU(x' + w) + 1 with x' in [-1, 1] (DeepPoly's discontinuity in w).

compute_bounds takes inputs in [0, 1], so x0 = 0.5 with eps = 0.5 covers x in [0, 1], and the
first layer maps it to 2x + w - 1 = x' + w with x' = 2x - 1 in [-1, 1].

Closed forms (true range of y: [1 + ReLU(w - 1), 1 + ReLU(w + 1)]):
- IBP / HBox lower bound: the box bound 1 + ReLU(w - 1), exact.
- DeepPoly lower bound: 1 + 1[w > 0] (w - 1); for 0 < w < 1 the area heuristic picks slope 1
  and the bound jumps from 1 down to w as w crosses 0.
- alpha-CROWN (init 0.5, one step of 0.5): the slope moves to 0, the exact bound.
- Every upper bound: 1 + ReLU(w + 1), exact (the upper line meets ReLU at the upper end).
"""

from __future__ import annotations

import pytest
import torch

import gls_core
from gls_core.nets import Linear, NetSpec, ReLU

TOY = NetSpec((1,), (Linear(1, 1), ReLU(), Linear(1, 1)), name="toy")
GRID = sorted({*torch.linspace(-2, 2, 41).tolist(), 0.0, 1e-3, -1e-3, 1e-2, -1e-2, 0.999, 1.0, 1.001,
               -0.999, -1.0, -1.001, 0.5, -0.5})
X0 = torch.tensor([[0.5]])


def toy_population(ws: list[float], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    w = torch.tensor(ws, dtype=dtype)
    return torch.stack([torch.full_like(w, 2.0), w - 1, torch.ones_like(w), torch.ones_like(w)], dim=1)


def toy_bounds(method: str, dtype: torch.dtype = torch.float64, **options: object
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    params = toy_population(GRID, dtype)
    lower, upper = gls_core.compute_bounds(TOY, X0.to(dtype), 0.5, method, params=params, **options)
    assert lower.shape == (len(GRID), 1, 1)
    return torch.tensor(GRID, dtype=dtype), lower[:, 0, 0], upper[:, 0, 0]


def relu(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(min=0)


def test_toy_network_is_the_toy_function() -> None:
    params = toy_population(GRID)
    x = torch.linspace(0, 1, 11, dtype=torch.float64).view(-1, 1)
    w = torch.tensor(GRID, dtype=torch.float64).view(-1, 1)
    expected = relu((2 * x.view(1, -1) - 1) + w) + 1
    torch.testing.assert_close(gls_core.forward(TOY, params, x)[..., 0], expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_deeppoly_lower_bound_is_discontinuous(dtype: torch.dtype) -> None:
    w, lower, upper = toy_bounds("deeppoly", dtype)
    expected = 1 + (w > 0).to(dtype) * (w - 1)
    torch.testing.assert_close(lower, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(upper, 1 + relu(w + 1), rtol=1e-6, atol=1e-6)
    # The jump itself: at w = 0 the bound is 1, just above it is about 0.
    at = {value: float(bound) for value, bound in zip(GRID, lower.tolist())}
    assert at[0.0] == pytest.approx(1.0, abs=1e-6)
    assert at[-1e-3] == pytest.approx(1.0, abs=1e-6)
    assert at[1e-3] == pytest.approx(1e-3, abs=1e-6)


def test_crown_alias_and_crown_ibp_agree_with_deeppoly() -> None:
    # One hidden layer: the intermediate bounds are exact, so CROWN-IBP is DeepPoly here.
    w, lower, upper = toy_bounds("deeppoly")
    for method in ("crown", "crown-ibp"):
        _, other_l, other_u = toy_bounds(method)
        torch.testing.assert_close(other_l, lower)
        torch.testing.assert_close(other_u, upper)


@pytest.mark.parametrize("method", ["ibp", "hbox"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_lower_bound_is_exact(method: str, dtype: torch.dtype) -> None:
    w, lower, upper = toy_bounds(method, dtype)
    torch.testing.assert_close(lower, 1 + relu(w - 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(upper, 1 + relu(w + 1), rtol=1e-6, atol=1e-6)


def test_alpha_crown_recovers_the_exact_lower_bound() -> None:
    w, lower, upper = toy_bounds("alpha-crown")  # paper setting: init 0.5, one step of 0.5
    torch.testing.assert_close(lower, 1 + relu(w - 1))
    torch.testing.assert_close(upper, 1 + relu(w + 1))
    # With no step the lower slope stays 0.5 on the unstable range |w| < 1: 1 + (w - 1) / 2.
    _, start, _ = toy_bounds("alpha-crown", steps=0)
    unstable = w.abs() < 1
    torch.testing.assert_close(start[unstable], 1 + (w[unstable] - 1) / 2)
    torch.testing.assert_close(start[~unstable], 1 + relu(w[~unstable] - 1))


def test_stable_neuron_makes_every_method_exact() -> None:
    w = torch.tensor(GRID, dtype=torch.float64)
    stable = w.abs() >= 1
    for method in ("ibp", "hbox", "crown-ibp", "deeppoly", "alpha-crown"):
        _, lower, upper = toy_bounds(method)
        torch.testing.assert_close(lower[stable], 1 + relu(w[stable] - 1))
        torch.testing.assert_close(upper[stable], 1 + relu(w[stable] + 1))
