"""Estimators: proposals regenerate from their key, PGPE estimates the smoothed gradient, RGS(0) = GRAD."""

import math

import pytest
import torch

from gls_core.data.batching import derive_seed
from gls_core.training.config import PGPEConfig, RGSConfig
from gls_core.training.estimators import AdamEstimator, Evaluated, PGPEEstimator, Proposal, make_estimator
from gls_core.training.noise import direction
from gls_core.training.schedules import StepHyper

HYPER = StepHyper(lr=0.01, eps=0.0, sigma_scale=1.0)


def quadratic(dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """L(theta) = 0.5 theta^T A theta + b^T theta with A positive definite: its smoothed gradient is A theta + b."""
    q = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    a = q @ q.T / dim + torch.eye(dim, dtype=torch.float64)
    return a, torch.randn(dim, generator=generator, dtype=torch.float64)


def quadratic_loss(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    p = points.to(torch.float64)
    return (0.5 * torch.einsum("nd,de,ne->n", p, a, p) + p @ b).to(points.dtype)


def test_seed_derivation_is_stable_and_distinct() -> None:
    assert derive_seed("gls-member", 7, 3, 1) == derive_seed("gls-member", 7, 3, 1)
    keys = {derive_seed("gls-member", seed, step, m) for seed in range(3) for step in range(3) for m in range(3)}
    assert len(keys) == 27
    assert torch.equal(direction(1, 2, 3, 50), direction(1, 2, 3, 50))
    assert not torch.equal(direction(1, 2, 3, 50), direction(1, 2, 4, 50))


@pytest.mark.parametrize("symmetric", [True, False])
def test_proposal_slices_equal_the_whole(symmetric: bool) -> None:
    centre, sigma = torch.randn(40), torch.full((40,), 0.1)
    proposal = Proposal(step=5, seed=11, centre=centre, sigma=sigma, count=10, symmetric=symmetric, needs_grads=False)
    whole = proposal.points()
    parts = torch.cat([proposal.points(0, 3), proposal.points(3, 4), proposal.points(4, 9), proposal.points(9, 10)])
    assert torch.equal(whole, parts)
    if symmetric:  # interleaved pairs: +z_k, -z_k, as evotorch's pgpe_tell expects
        assert torch.allclose(whole[0::2] + whole[1::2], 2 * centre.expand(5, -1), atol=1e-6)
        assert torch.allclose(whole[0] - centre, 0.1 * direction(11, 5, 0, 40), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        proposal.points(3, 11)


def test_pgpe_centre_step_follows_the_smoothed_gradient_on_a_quadratic() -> None:
    """With raw fitness, plain SGD and a fixed sigma, the centre moves by -lr * sigma^2 * estimate of grad L_sigma.

    On a quadratic the estimate per direction is z z^T g with g = A theta + b, so each coordinate has
    variance (|g|^2 + g_j^2) / n: the error is checked against that, coordinate by coordinate.
    """
    gen = torch.Generator().manual_seed(0)
    dim, directions_, sigma, lr = 12, 4096, 1e-2, 0.5
    a, b = quadratic(dim, gen)
    theta = torch.randn(dim, generator=gen, dtype=torch.float64).float()
    config = PGPEConfig(popsize=2 * directions_, sigma_init=sigma, sigma_lr=0.0, optimizer="sgd", ranking="raw")
    estimator = PGPEEstimator(config)
    state = estimator.init_state(theta)
    proposal = estimator.propose(state, step=0, seed=3, hyper=HYPER)
    losses = quadratic_loss(proposal.points(), a, b)
    after = estimator.update(state, proposal, Evaluated(losses), StepHyper(lr=lr, eps=0.0, sigma_scale=1.0))
    estimate = -(after["theta"] - theta).double() / (lr * sigma**2)
    true = a @ theta.double() + b
    std = torch.sqrt((true.norm() ** 2 + true**2) / directions_)
    assert bool(((estimate - true).abs() <= 5 * std).all()), (estimate - true) / std
    cosine = torch.dot(estimate, true) / (estimate.norm() * true.norm())
    assert cosine > 0.95


def test_pgpe_learns_sigma_and_respects_max_change() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = quadratic(8, gen)
    estimator = PGPEEstimator(PGPEConfig(popsize=64, sigma_init=0.5, sigma_lr=0.2, sigma_max_change=0.2))
    state = estimator.init_state(torch.zeros(8))
    proposal = estimator.propose(state, 0, 0, HYPER)
    after = estimator.update(state, proposal, Evaluated(quadratic_loss(proposal.points(), a, b)), HYPER)
    ratio = after["pgpe.stdev"] / state["pgpe.stdev"]
    assert not torch.equal(after["pgpe.stdev"], state["pgpe.stdev"])
    assert bool((ratio <= 1.2 + 1e-6).all() and (ratio >= 0.8 - 1e-6).all())


def test_pgpe_minimises_a_quadratic() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = quadratic(10, gen)
    estimator = PGPEEstimator(PGPEConfig(popsize=32, sigma_init=0.1))
    state = estimator.init_state(torch.full((10,), 3.0))
    start = float(quadratic_loss(state["theta"].unsqueeze(0), a, b))
    for step in range(200):
        proposal = estimator.propose(state, step, 0, HYPER)
        state = estimator.update(state, proposal, Evaluated(quadratic_loss(proposal.points(), a, b)),
                                 StepHyper(lr=0.05, eps=0.0, sigma_scale=1.0))
    assert float(quadratic_loss(state["theta"].unsqueeze(0), a, b)) < start - 0.5 * abs(start) - 1.0


def test_pgpe_rejects_wrong_or_nonfinite_losses() -> None:
    estimator = PGPEEstimator(PGPEConfig(popsize=4))
    state = estimator.init_state(torch.zeros(3))
    proposal = estimator.propose(state, 0, 0, HYPER)
    with pytest.raises(ValueError, match="needs 4 losses"):
        estimator.update(state, proposal, Evaluated(torch.zeros(3)), HYPER)
    with pytest.raises(ValueError, match="non-finite"):
        estimator.update(state, proposal, Evaluated(torch.tensor([0.0, math.nan, 1.0, 2.0])), HYPER)


def gradient_of_quadratic(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Evaluated:
    grads = (points.double() @ a + b).float()
    return Evaluated(quadratic_loss(points, a, b), grads)


def test_rgs_with_zero_sigma_equals_grad() -> None:
    gen = torch.Generator().manual_seed(4)
    a, b = quadratic(16, gen)
    grad = make_estimator("grad", grad_clip=1.0, pgpe=PGPEConfig(), rgs=RGSConfig())
    rgs = make_estimator("rgs", grad_clip=1.0, pgpe=PGPEConfig(), rgs=RGSConfig(samples=2, sigma=0.0))
    theta = torch.randn(16, generator=gen)
    states = [grad.init_state(theta), rgs.init_state(theta)]
    for step in range(20):
        for index, estimator in enumerate((grad, rgs)):
            proposal = estimator.propose(states[index], step, 0, HYPER)
            states[index] = estimator.update(states[index], proposal, gradient_of_quadratic(proposal.points(), a, b),
                                             HYPER)
    assert torch.equal(states[0]["theta"], states[1]["theta"])
    assert not torch.equal(states[0]["theta"], theta)


def test_rgs_averages_gradients_at_perturbed_points_and_decays_sigma() -> None:
    rgs = AdamEstimator("rgs", grad_clip=None, samples=2, sigma=0.1)
    state = rgs.init_state(torch.zeros(5))
    proposal = rgs.propose(state, 0, 9, StepHyper(lr=0.1, eps=0.0, sigma_scale=0.4))
    points = proposal.points()
    assert points.shape == (2, 5) and not torch.equal(points[0], points[1])
    assert float(proposal.sigma[0]) == pytest.approx(0.04)
    assert torch.allclose(points[0], 0.04 * direction(9, 0, 0, 5), atol=1e-7)


def test_adam_update_matches_torch_adam_with_clipping() -> None:
    gen = torch.Generator().manual_seed(5)
    a, b = quadratic(6, gen)
    theta = torch.randn(6, generator=gen)
    estimator = AdamEstimator("grad", grad_clip=0.5)
    state = estimator.init_state(theta)
    reference = torch.nn.Parameter(theta.clone())
    optimizer = torch.optim.Adam([reference], lr=0.01)
    for step in range(5):
        proposal = estimator.propose(state, step, 0, HYPER)
        evaluated = gradient_of_quadratic(proposal.points(), a, b)
        state = estimator.update(state, proposal, evaluated, HYPER)
        reference.grad = gradient_of_quadratic(reference.detach().unsqueeze(0), a, b).grads[0]
        torch.nn.utils.clip_grad_norm_([reference], 0.5)
        optimizer.step()
    assert torch.allclose(state["theta"], reference.detach(), atol=1e-6)


def test_gradient_estimators_need_gradients() -> None:
    estimator = AdamEstimator("grad", grad_clip=None)
    state = estimator.init_state(torch.zeros(3))
    proposal = estimator.propose(state, 0, 0, HYPER)
    with pytest.raises(ValueError, match="needs gradients"):
        estimator.update(state, proposal, Evaluated(torch.zeros(1)), HYPER)
