"""Gradients in the weights: autograd against central finite differences in float64.

The bounds are piecewise smooth in theta (kinks where a ReLU's stability or DeepPoly's slope choice
changes). At a random point a kink rarely lies within the finite-difference step; a direction
counts as agreeing when the central difference at either of two steps matches, and all but one of
several random directions must agree. float64 keeps the rounding error of the quotient near 1e-9.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from helpers import DIFFERENTIABLE_METHODS, random_inputs, random_population

import gls_core
from gls_core.nets import NetSpec, fully_connected
from gls_core.nets.zoo import build_cnn

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
NETS = {
    "mlp": lambda: fully_connected((4,), [6, 5], 3),
    "cnn": lambda: build_cnn("cnn", (2, 6, 6), 3, [(3, 3, 2, 1), (3, 3, 1, 1)], [4]),
    "cifar-like": lambda: build_cnn("cifar-like", (3, 6, 6), 3, [(3, 3, 2, 1)], [4], normalize=CIFAR),
}
STEPS = (1e-6, 1e-7)
DIRECTIONS = 5


def robust_objective(spec: NetSpec, method: str, x: torch.Tensor, y: torch.Tensor, eps: float,
                     params: torch.Tensor) -> torch.Tensor:
    """A training loss built from both bounds: robust CE of the margin upper bounds plus a lower-bound term."""
    C = gls_core.margin_spec(y, spec.num_outputs).to(torch.float64)
    lower, upper = gls_core.compute_bounds(spec, x, eps, method, C=C, params=params)
    return gls_core.robust_loss(upper).sum() + 0.1 * lower.sum()


def problem(net: str, seed: int) -> tuple[NetSpec, torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = NETS[net]()
    generator = torch.Generator().manual_seed(seed)
    params = random_population(spec, 2, generator, dtype=torch.float64)
    x = random_inputs(spec, 3, generator).double()
    y = torch.randint(0, spec.num_outputs, (3,), generator=generator)
    return spec, params, x, y


def directional_agreement(function: Callable[[torch.Tensor], torch.Tensor], params: torch.Tensor,
                          grad: torch.Tensor, direction: torch.Tensor) -> bool:
    """Does grad . direction match a central difference (at either step, in case one straddles a kink)?"""
    analytic = float((grad * direction).sum())
    for step in STEPS:
        numeric = float((function(params + step * direction) - function(params - step * direction)) / (2 * step))
        if abs(analytic - numeric) <= 1e-5 * abs(numeric) + 1e-7:
            return True
    return False


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("method", DIFFERENTIABLE_METHODS)
def test_gradient_matches_finite_differences(net: str, method: str) -> None:
    spec, params, x, y = problem(net, seed=31)
    eps = 0.08
    theta = params.clone().requires_grad_(True)
    value = robust_objective(spec, method, x, y, eps, theta)
    assert value.dtype == torch.float64
    (grad,) = torch.autograd.grad(value, theta)
    assert grad.shape == params.shape and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    generator = torch.Generator().manual_seed(32)
    with torch.no_grad():
        directions = [torch.randn(params.shape, generator=generator, dtype=torch.float64) for _ in range(DIRECTIONS)]
        agree = [directional_agreement(lambda p: robust_objective(spec, method, x, y, eps, p), params, grad,
                                       d / d.norm()) for d in directions]
    # A wrong gradient disagrees in (almost) every direction; a kink at most in an unlucky one.
    assert sum(agree) >= DIRECTIONS - 1, (method, net, agree)


@pytest.mark.parametrize("method", DIFFERENTIABLE_METHODS)
def test_gradient_flows_to_every_member_independently(method: str) -> None:
    """d(loss of member p)/d(theta_q) = 0 for q != p: members do not interact."""
    spec, params, x, y = problem("cnn", seed=33)
    theta = params.clone().requires_grad_(True)
    C = gls_core.margin_spec(y, spec.num_outputs)
    _, upper = gls_core.compute_bounds(spec, x, 0.05, method, C=C, params=theta)
    (grad,) = torch.autograd.grad(gls_core.robust_loss(upper[0]).sum(), theta)
    assert grad[0].abs().sum() > 0
    assert torch.equal(grad[1], torch.zeros_like(grad[1]))


@pytest.mark.parametrize("method", DIFFERENTIABLE_METHODS)
def test_float32_gradient_agrees_with_float64(method: str) -> None:
    spec, params, x, y = problem("mlp", seed=34)
    grads = []
    for dtype in (torch.float32, torch.float64):
        theta = params.to(dtype).requires_grad_(True)
        C = gls_core.margin_spec(y, spec.num_outputs)
        _, upper = gls_core.compute_bounds(spec, x.to(dtype), 0.05, method, C=C, params=theta)
        (grad,) = torch.autograd.grad(gls_core.robust_loss(upper).sum(), theta)
        grads.append(grad.double())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_alpha_crown_refuses_weight_gradients() -> None:
    spec, params, x, y = problem("mlp", seed=35)
    theta = params.clone().requires_grad_(True)
    C = gls_core.margin_spec(y, spec.num_outputs)
    with pytest.raises(gls_core.NotDifferentiableError, match="alpha-crown"):
        gls_core.compute_bounds(spec, x, 0.05, "alpha-crown", C=C, params=theta)
    with torch.no_grad():
        lower, upper = gls_core.compute_bounds(spec, x, 0.05, "alpha-crown", C=C, params=theta)
    assert not upper.requires_grad
    assert lower.shape == upper.shape == (2, 3, spec.num_outputs - 1)
    reference = gls_core.compute_bounds(spec, x, 0.05, "alpha-crown", C=C, params=params)
    torch.testing.assert_close((lower, upper), reference)
    # Detached params under grad mode are fine too.
    detached = gls_core.compute_bounds(spec, x, 0.05, "alpha-crown", C=C, params=theta.detach())
    torch.testing.assert_close(detached, reference)


def test_not_differentiable_error_is_a_runtime_error() -> None:
    assert issubclass(gls_core.NotDifferentiableError, RuntimeError)
