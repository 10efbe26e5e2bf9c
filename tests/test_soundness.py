"""Soundness: every relaxation's bounds contain C @ f(x') for every x' of the region, for every member.

Property-based over random small nets of each family, random weights, inputs, radii (including 0
and radii the [0, 1] clipping cuts), populations and specifications. The attained values come from
uniform samples, random corners of the box, and PGD maximising / minimising each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from helpers import (
    METHOD_CASES,
    assert_contains,
    bounds,
    empirical_extremes,
    random_inputs,
    random_population,
    random_spec_matrix,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gls_core
from gls_core.nets import NetSpec, fully_connected
from gls_core.nets.zoo import build_cnn

EPS_CHOICES = [0.0, 1e-3, 0.02, 0.05, 0.1, 0.3, 0.5, 1.0]
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    spec: NetSpec
    params: torch.Tensor
    x: torch.Tensor
    eps: float
    C: torch.Tensor | None
    generator: torch.Generator


@st.composite
def common(draw: st.DrawFn, spec: NetSpec, max_batch: int = 3) -> Case:
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    members = draw(st.integers(1, 4))
    batch = draw(st.integers(1, max_batch))
    scale = draw(st.sampled_from([0.5, 1.0, 2.0]))
    eps = draw(st.sampled_from(EPS_CHOICES) | st.floats(0.0, 0.6, allow_nan=False))
    kind = draw(st.sampled_from(["none", "margin", "random"]))
    params = random_population(spec, members, generator, scale)
    x = random_inputs(spec, batch, generator)
    C = random_spec_matrix(kind, batch, spec.num_outputs, generator)
    return Case(spec, params, x, eps, C, generator)


@st.composite
def mlp_cases(draw: st.DrawFn) -> Case:
    image = draw(st.booleans())
    input_shape = (1, draw(st.integers(1, 4)), draw(st.integers(1, 4))) if image else (draw(st.integers(1, 6)),)
    # At least one hidden layer: ReLU-free nets have their own test (test_tightness.py).
    widths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=3))
    spec = fully_connected(input_shape, widths, draw(st.integers(2, 5)))
    return draw(common(spec))


@st.composite
def conv_plan(draw: st.DrawFn, size: int) -> list[tuple[int, int, int, int]]:
    plan = []
    for _ in range(draw(st.integers(1, 3))):
        padding = draw(st.integers(0, 2))
        kernel = draw(st.integers(1, min(5, size + 2 * padding)))
        stride = draw(st.integers(1, 3))
        plan.append((draw(st.integers(1, 4)), kernel, stride, padding))
        size = (size + 2 * padding - kernel) // stride + 1
    return plan


@st.composite
def cnn_cases(draw: st.DrawFn) -> Case:
    channels, size = draw(st.integers(1, 2)), draw(st.integers(3, 9))
    convs = draw(conv_plan(size))
    dense = draw(st.lists(st.integers(1, 8), max_size=1))
    spec = build_cnn("cnn", (channels, size, size), draw(st.integers(2, 4)), convs, dense)
    return draw(common(spec))


@st.composite
def normalized_cnn_cases(draw: st.DrawFn) -> Case:
    size = draw(st.integers(4, 8))
    mean = tuple(draw(st.floats(0.3, 0.6)) for _ in range(3))
    std = tuple(draw(st.floats(0.15, 0.3)) for _ in range(3))
    convs = draw(conv_plan(size))
    spec = build_cnn("cifar-like", (3, size, size), 3, convs, draw(st.lists(st.integers(2, 6), max_size=1)),
                     normalize=(mean, std))
    return draw(common(spec))


@st.composite
def tiny_cases(draw: st.DrawFn) -> Case:
    return draw(common(gls_core.network("cnn3-tiny", draw(st.sampled_from(["mnist", "digits"]))), max_batch=2))


def check_all_methods(case: Case) -> None:
    seen = empirical_extremes(case.spec, case.params, case.x, case.eps, case.C, case.generator)
    for name in METHOD_CASES:
        lower, upper = bounds(case.spec, case.x, case.eps, name, C=case.C, params=case.params)
        assert_contains(lower, upper, seen, f"{name} on {case.spec.name} (eps={case.eps})")


@SETTINGS
@given(mlp_cases())
def test_mlp_bounds_contain_outputs(case: Case) -> None:
    check_all_methods(case)


@SETTINGS
@given(cnn_cases())
def test_cnn_bounds_contain_outputs(case: Case) -> None:
    check_all_methods(case)


@SETTINGS
@given(normalized_cnn_cases())
def test_normalized_cnn_bounds_contain_outputs(case: Case) -> None:
    check_all_methods(case)


@settings(SETTINGS, max_examples=15)
@given(tiny_cases())
def test_cnn3_tiny_bounds_contain_outputs(case: Case) -> None:
    check_all_methods(case)


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_zero_radius_bounds_are_the_outputs(name: str) -> None:
    """eps = 0: the region is the point x, so every relaxation returns C @ f(x) on both sides."""
    generator = torch.Generator().manual_seed(3)
    spec = build_cnn("cnn", (2, 6, 6), 4, [(3, 3, 2, 1), (2, 2, 1, 0)], [5])
    params = random_population(spec, 3, generator)
    x = random_inputs(spec, 2, generator)
    C = gls_core.margin_spec(torch.tensor([0, 3]), 4)
    expected = torch.einsum("bkc,pbc->pbk", C, gls_core.forward(spec, params, x))
    lower, upper = bounds(spec, x, 0.0, name, C=C, params=params)
    torch.testing.assert_close(lower, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(upper, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_per_input_radius(name: str) -> None:
    """A radius per input (shape (B,)) gives each input the bounds it gets alone with that radius."""
    generator = torch.Generator().manual_seed(4)
    spec = fully_connected((5,), [6, 6], 3)
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 3, generator)
    eps = torch.tensor([0.0, 0.05, 0.4])
    lower, upper = bounds(spec, x, eps, name, params=params)
    for b in range(3):
        alone_l, alone_u = bounds(spec, x[b : b + 1], float(eps[b]), name, params=params)
        torch.testing.assert_close(lower[:, b : b + 1], alone_l, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(upper[:, b : b + 1], alone_u, rtol=1e-5, atol=1e-5)


def test_full_box_contains_everything_seen() -> None:
    """eps = 1 covers all of [0, 1]^n; a CNN with Normalize, checked with many samples."""
    generator = torch.Generator().manual_seed(5)
    normalize = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    spec = build_cnn("cifar-like", (3, 5, 5), 3, [(3, 3, 2, 1)], [4], normalize=normalize)
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 2, generator)
    seen = empirical_extremes(spec, params, x, 1.0, None, generator, samples=512, corners=256, pgd_steps=25)
    for name in METHOD_CASES:
        lower, upper = bounds(spec, x, 1.0, name, params=params)
        assert_contains(lower, upper, seen, name)


@pytest.mark.parametrize(("arch", "dataset", "radii"), [
    ("cnn3", "mnist", (0.004, 0.03, 0.3)),
    ("cnn3", "cifar10", (0.004, 0.03)),
    ("cnn5", "mnist", (0.01,)),
    ("cnn5", "cifar10", (0.004,)),
])
def test_paper_architectures(arch: str, dataset: str, radii: tuple[float, ...]) -> None:
    """The Table 7 networks at full input size, a population of two."""
    generator = torch.Generator().manual_seed(6)
    spec = gls_core.network(arch, dataset)
    params = random_population(spec, 2, generator)
    x = random_inputs(spec, 2, generator)
    C = random_spec_matrix("margin", 2, 10, generator)
    for eps in radii:
        seen = empirical_extremes(spec, params, x, eps, C, generator, samples=32, corners=16, pgd_steps=10)
        for name in METHOD_CASES:
            lower, upper = bounds(spec, x, eps, name, C=C, params=params)
            assert_contains(lower, upper, seen, f"{name} on {spec.name}, eps={eps}")


@pytest.mark.slow
def test_large_architectures() -> None:
    """CNN5-L (DeepPoly's coefficient tensors are chunked) and CNN7 (IBP and CROWN-IBP), one member."""
    generator = torch.Generator().manual_seed(7)
    cases = [("cnn5-l", "cifar10", ("ibp", "crown-ibp", "deeppoly")), ("cnn7", "mnist", ("ibp", "crown-ibp")),
             ("cnn7", "cifar10", ("ibp", "crown-ibp"))]
    for arch, dataset, names in cases:
        spec = gls_core.network(arch, dataset)
        params = random_population(spec, 1, generator)
        x = random_inputs(spec, 1, generator)
        C = random_spec_matrix("margin", 1, 10, generator)
        seen = empirical_extremes(spec, params, x, 0.004, C, generator, samples=16, corners=8, pgd_steps=5)
        for name in names:
            lower, upper = bounds(spec, x, 0.004, name, C=C, params=params)
            assert_contains(lower, upper, seen, f"{name} on {spec.name}")
