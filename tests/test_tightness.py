"""Tightness relations between the relaxations, and comparisons with exact extrema on tiny nets."""

from __future__ import annotations

import pytest
import torch
from helpers import METHOD_CASES, bounds, random_inputs, random_population, random_spec_matrix, tolerance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gls_core
from gls_core.nets import Linear, NetSpec, fully_connected
from gls_core.nets.zoo import build_cnn

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
FAMILIES = {
    "mlp": lambda: fully_connected((5,), [8, 8, 6], 4),
    "cnn": lambda: build_cnn("cnn", (2, 8, 8), 4, [(3, 3, 2, 1), (4, 3, 1, 1)], [6]),
    "cifar-like": lambda: build_cnn("cifar-like", (3, 8, 8), 3, [(4, 3, 2, 1), (3, 4, 2, 1)], [5], normalize=CIFAR),
    "cnn3-tiny": lambda: gls_core.network("cnn3-tiny", "mnist"),
}


@st.composite
def random_problem(draw: st.DrawFn) -> tuple[NetSpec, torch.Tensor, torch.Tensor, float, torch.Tensor | None]:
    spec = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]()
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    params = random_population(spec, draw(st.integers(1, 3)), generator, draw(st.sampled_from([0.5, 1.0, 2.0])))
    x = random_inputs(spec, draw(st.integers(1, 3)), generator)
    eps = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2, 1.0]))
    C = random_spec_matrix(draw(st.sampled_from(["none", "margin", "random"])), x.shape[0], spec.num_outputs,
                           generator)
    return spec, params, x, eps, C


def assert_at_least_as_tight(inner: tuple[torch.Tensor, torch.Tensor], outer: tuple[torch.Tensor, torch.Tensor],
                             label: str, rel: float = 1e-5) -> None:
    (lower, upper), (outer_l, outer_u) = inner, outer
    assert (lower >= outer_l - tolerance(outer_l, rel)).all(), f"{label}: lower bound looser by " \
        f"{float((outer_l - lower).max()):.3g}"
    assert (upper <= outer_u + tolerance(outer_u, rel)).all(), f"{label}: upper bound looser by " \
        f"{float((upper - outer_u).max()):.3g}"


TIGHTNESS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@TIGHTNESS
@given(random_problem())
def test_hbox_never_looser_than_ibp(problem: tuple) -> None:
    spec, params, x, eps, C = problem
    ibp = gls_core.compute_bounds(spec, x, eps, "ibp", C=C, params=params)
    hbox = gls_core.compute_bounds(spec, x, eps, "hbox", C=C, params=params)
    assert_at_least_as_tight(hbox, ibp, "hbox vs ibp")


@TIGHTNESS
@given(random_problem())
def test_alpha_crown_never_looser_than_its_start(problem: tuple) -> None:
    spec, params, x, eps, C = problem
    deeppoly = gls_core.compute_bounds(spec, x, eps, "deeppoly", C=C, params=params)
    start = gls_core.compute_bounds(spec, x, eps, "alpha-crown", C=C, params=params, init="deeppoly", steps=0)
    torch.testing.assert_close(start, deeppoly, rtol=1e-6, atol=1e-6)
    for steps, step_size in ((1, 0.5), (3, 0.1)):
        optimised = gls_core.compute_bounds(spec, x, eps, "alpha-crown", C=C, params=params, init="deeppoly",
                                            steps=steps, step_size=step_size)
        assert_at_least_as_tight(optimised, deeppoly, f"alpha-crown init=deeppoly steps={steps}", rel=1e-6)
    half = gls_core.compute_bounds(spec, x, eps, "alpha-crown", C=C, params=params, init=0.5, steps=0)
    paper = gls_core.compute_bounds(spec, x, eps, "alpha-crown", C=C, params=params)  # init 0.5, 1 step of 0.5
    assert_at_least_as_tight(paper, half, "alpha-crown init=0.5 one step vs none", rel=1e-6)


def test_alpha_crown_improves_on_deeppoly_somewhere() -> None:
    """Optimising the slopes is not a no-op: over a few nets it strictly tightens some bound."""
    generator = torch.Generator().manual_seed(21)
    spec = FAMILIES["mlp"]()
    params = random_population(spec, 3, generator)
    x = random_inputs(spec, 4, generator)
    lower, upper = gls_core.compute_bounds(spec, x, 0.2, "deeppoly", params=params)
    opt_l, opt_u = gls_core.compute_bounds(spec, x, 0.2, "alpha-crown", params=params, init="deeppoly", steps=5,
                                           step_size=0.1)
    assert ((opt_l - lower).max() > 1e-3) or ((upper - opt_u).max() > 1e-3)


def test_crown_is_an_alias_of_deeppoly() -> None:
    generator = torch.Generator().manual_seed(22)
    spec = FAMILIES["cnn"]()
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 2, generator)
    C = random_spec_matrix("margin", 2, 4, generator)
    torch.testing.assert_close(gls_core.compute_bounds(spec, x, 0.1, "crown", C=C, params=params),
                               gls_core.compute_bounds(spec, x, 0.1, "deeppoly", C=C, params=params), rtol=0, atol=0)


# --- exact extrema on nets with a two-dimensional input -------------------------------------------

GRID_SIDE = 201


def grid_extrema(spec: NetSpec, theta: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of every logit over a GRID_SIDE^2 grid of the box [lower, upper] in R^2: ([K], [K])."""
    axes = [torch.linspace(float(lower[i]), float(upper[i]), GRID_SIDE, dtype=torch.float64) for i in range(2)]
    points = torch.cartesian_prod(*axes)
    net = gls_core.to_sequential(spec, theta).double()
    with torch.no_grad():
        values = net(points)
    return values.min(0).values, values.max(0).values


def two_dimensional_nets(count: int, widths: list[int], seed: int) -> list[tuple[NetSpec, torch.Tensor]]:
    spec = fully_connected((2,), widths, 3)
    generator = torch.Generator().manual_seed(seed)
    return [(spec, gls_core.kaiming_uniform(spec, generator).double()) for _ in range(count)]


@pytest.mark.parametrize("widths", [[5], [6, 6]])
def test_bounds_against_grid_extrema(widths: list[int]) -> None:
    """All bounds contain the grid extrema; DeepPoly's mean gap to them is at most IBP's (20 nets)."""
    x = torch.tensor([[0.5, 0.5], [0.3, 0.9]], dtype=torch.float64)
    eps = torch.tensor([0.5, 0.25], dtype=torch.float64)  # the whole unit square; a clipped box
    gaps: dict[str, list[float]] = {name: [] for name in METHOD_CASES}
    for spec, theta in two_dimensional_nets(20, widths, seed=23):
        extrema = [grid_extrema(spec, theta, (x[b] - eps[b]).clamp(0, 1), (x[b] + eps[b]).clamp(0, 1))
                   for b in range(2)]
        true_min = torch.stack([low for low, _ in extrema])
        true_max = torch.stack([high for _, high in extrema])
        for name in METHOD_CASES:
            lower, upper = bounds(spec, x, eps, name, params=theta)
            assert (lower <= true_min + 1e-9).all(), name
            assert (upper >= true_max - 1e-9).all(), name
            gaps[name].append(float((true_min - lower).mean() + (upper - true_max).mean()))
    mean_gap = {name: sum(values) / len(values) for name, values in gaps.items()}
    assert mean_gap["deeppoly"] <= mean_gap["ibp"], mean_gap
    assert mean_gap["hbox"] <= mean_gap["ibp"] + 1e-12, mean_gap
    assert mean_gap["alpha-crown-dp3"] <= mean_gap["deeppoly"] + 1e-12, mean_gap
    if len(widths) == 1:
        # One hidden layer: CROWN-IBP's intermediate bounds are exact, so it is DeepPoly.
        assert mean_gap["crown-ibp"] == pytest.approx(mean_gap["deeppoly"], abs=1e-9)


def test_grid_reaches_the_deeppoly_bound_when_all_neurons_are_stable() -> None:
    """With every hidden neuron stable the net is affine on the box and DeepPoly is exact."""
    spec = fully_connected((2,), [4], 3)
    theta = gls_core.kaiming_uniform(spec, torch.Generator().manual_seed(24)).double()
    population = theta.unsqueeze(0)
    with torch.no_grad():
        spec.bias(population, 0).copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))  # |W x| < 1: all stable
    x, eps = torch.tensor([[0.375, 0.625]], dtype=torch.float64), 0.25  # exact binary fractions
    true_min, true_max = grid_extrema(spec, theta, (x[0] - eps).clamp(0, 1), (x[0] + eps).clamp(0, 1))
    for name in ("hbox", "crown-ibp", "deeppoly", "alpha-crown"):
        lower, upper = bounds(spec, x, eps, name, params=theta)
        torch.testing.assert_close(lower[0], true_min, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(upper[0], true_max, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_relu_free_net_bounds_are_exact(name: str) -> None:
    """A single affine layer: every relaxation gives min / max of c.x + b over the box, W c ± |W| r."""
    spec = NetSpec((3,), (Linear(3, 2),), name="affine")
    theta = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25, -0.5])  # W = [[1, -2, .5], [0, 3, -1]], b
    x = torch.tensor([[0.5, 0.5, 0.5], [0.0, 1.0, 0.2]])
    # Boxes: [0.4, 0.6]^3; [0, 0.1] x [0.9, 1] x [0.1, 0.3].
    expected_l = torch.tensor([[0.4 - 1.2 + 0.2 + 0.25, 1.2 - 0.6 - 0.5], [0.0 - 2.0 + 0.05 + 0.25, 2.7 - 0.3 - 0.5]])
    expected_u = torch.tensor([[0.6 - 0.8 + 0.3 + 0.25, 1.8 - 0.4 - 0.5], [0.1 - 1.8 + 0.15 + 0.25, 3.0 - 0.1 - 0.5]])
    lower, upper = bounds(spec, x, 0.1, name, params=theta)
    torch.testing.assert_close(lower, expected_l, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, expected_u, rtol=1e-5, atol=1e-5)


def test_hand_computed_ibp() -> None:
    """z = W x + b with W = 1, b = 2 on [0.2, 0.8], then ReLU and y = 3 z - 1: [5.6, 7.4] by hand."""
    spec = NetSpec((1,), (Linear(1, 1), gls_core.nets.ReLU(), Linear(1, 1)))
    theta = torch.tensor([1.0, 2.0, 3.0, -1.0])
    lower, upper = gls_core.compute_bounds(spec, torch.tensor([[0.5]]), 0.3, "ibp", params=theta)
    assert lower.item() == pytest.approx(5.6, abs=1e-5)
    assert upper.item() == pytest.approx(7.4, abs=1e-5)


def test_ibp_folds_the_specification_into_the_last_layer() -> None:
    """IBP bounds on C @ logits are tighter than subtracting logit intervals (and are attained here)."""
    spec = NetSpec((1,), (Linear(1, 1), gls_core.nets.ReLU(), Linear(1, 2)))
    theta = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # both logits equal ReLU(x)
    x = torch.tensor([[0.5]])
    C = gls_core.margin_spec(torch.tensor([0]), 2)  # logit 1 - logit 0 = 0 everywhere
    lower, upper = gls_core.compute_bounds(spec, x, 0.5, "ibp", C=C, params=theta)
    assert lower.abs().max() < 1e-6 and upper.abs().max() < 1e-6
    logits_l, logits_u = gls_core.compute_bounds(spec, x, 0.5, "ibp", params=theta)
    torch.testing.assert_close(logits_l, torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(logits_u, torch.tensor([[1.0, 1.0]]))
