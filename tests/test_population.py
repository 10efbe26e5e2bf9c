"""Batching invariances: members, inputs, Sequential vs spec, and chunking change nothing."""

from __future__ import annotations

import pytest
import torch
from helpers import METHOD_CASES, bounds, random_inputs, random_population, random_spec_matrix
from torch import nn

import gls_core
from gls_core.nets import InputNormalization, Linear, NetSpec, fully_connected
from gls_core.nets.zoo import build_cnn

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
SPECS = {
    "mlp": fully_connected((6,), [8, 8], 4),
    "cnn": build_cnn("cnn", (2, 9, 9), 4, [(3, 3, 2, 1), (4, 3, 1, 1), (2, 2, 2, 0)], [6]),
    "cifar-like": build_cnn("cifar-like", (3, 8, 8), 5, [(4, 3, 2, 1), (3, 4, 2, 1)], [], normalize=CIFAR),
    "cnn3-tiny": gls_core.network("cnn3-tiny", "mnist"),
}
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def _setup(name: str, members: int, batch: int, seed: int, kind: str = "margin"
           ) -> tuple[gls_core.NetSpec, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    spec = SPECS[name]
    generator = torch.Generator().manual_seed(seed)
    params = random_population(spec, members, generator)
    x = random_inputs(spec, batch, generator)
    return spec, params, x, random_spec_matrix(kind, batch, spec.num_outputs, generator)


@pytest.mark.parametrize("net", list(SPECS))
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_member_alone_matches_member_in_population(net: str, case: str) -> None:
    spec, params, x, C = _setup(net, 4, 3, seed=10)
    lower, upper = bounds(spec, x, 0.08, case, C=C, params=params)
    assert lower.shape == upper.shape == (4, 3, C.shape[1])
    for p in range(4):
        one_l, one_u = bounds(spec, x, 0.08, case, C=C, params=params[p : p + 1])
        assert one_l.shape == (1, 3, C.shape[1])
        torch.testing.assert_close(one_l[0], lower[p], **CLOSE)
        torch.testing.assert_close(one_u[0], upper[p], **CLOSE)
        flat_l, flat_u = bounds(spec, x, 0.08, case, C=C, params=params[p])
        assert flat_l.shape == (3, C.shape[1])
        torch.testing.assert_close(flat_l, lower[p], **CLOSE)
        torch.testing.assert_close(flat_u, upper[p], **CLOSE)


@pytest.mark.parametrize("net", list(SPECS))
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_input_alone_matches_input_in_batch(net: str, case: str) -> None:
    spec, params, x, C = _setup(net, 2, 4, seed=11, kind="random")
    lower, upper = bounds(spec, x, 0.05, case, C=C, params=params)
    for b in range(4):
        one_l, one_u = bounds(spec, x[b : b + 1], 0.05, case, C=C[b : b + 1], params=params)
        torch.testing.assert_close(one_l[:, 0], lower[:, b], **CLOSE)
        torch.testing.assert_close(one_u[:, 0], upper[:, b], **CLOSE)


@pytest.mark.parametrize("kind", ["none", "random"])
@pytest.mark.parametrize("net", list(SPECS))
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_chunking_does_not_change_bounds(net: str, case: str, kind: str) -> None:
    spec, params, x, C = _setup(net, 3, 3, seed=12, kind=kind)
    lower, upper = bounds(spec, x, 0.05, case, C=C, params=params)
    for budget in (2000, 1):
        small_l, small_u = bounds(spec, x, 0.05, case, C=C, params=params, chunk_floats=budget)
        torch.testing.assert_close(small_l, lower, **CLOSE)
        torch.testing.assert_close(small_u, upper, **CLOSE)


def test_chunking_really_splits() -> None:
    """The small budgets used above do split populations and batches (else the test above proves nothing)."""
    from gls_core.bounds.api import chunk_sizes

    for spec in SPECS.values():
        for method in ("ibp", "deeppoly", "alpha-crown"):
            assert chunk_sizes(spec, method, 3, 3, None, 1) == (1, 1)
    for method in ("ibp", "deeppoly", "alpha-crown"):
        assert chunk_sizes(SPECS["cnn3-tiny"], method, 3, 3, None, 2000) != (3, 3)


@pytest.mark.parametrize("net", ["mlp", "cifar-like", "cnn3-tiny"])
@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_sequential_matches_spec_and_theta(net: str, case: str) -> None:
    spec, params, x, C = _setup(net, 3, 2, seed=13)
    module = gls_core.to_sequential(spec, params[0])
    assert isinstance(module[0], InputNormalization) == (net == "cifar-like")
    expected = bounds(spec, x, 0.1, case, C=C, params=params[0])
    got = bounds(module, x, 0.1, case, C=C)
    assert got[0].shape == expected[0].shape == (2, C.shape[1])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)
    # A Sequential with a population in parameters_to_vector layout bounds that population.
    population = bounds(spec, x, 0.1, case, C=C, params=params)
    via_module = bounds(module, x, 0.1, case, C=C, params=params)
    for a, b in zip(via_module, population, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)


def test_sequential_with_one_vector_gives_single_network_shape() -> None:
    """README: a D vector (or no params) gives B x K, also when net is a Sequential.

    The NetSpec path returns B x K for a D vector; the Sequential path returns 1 x B x K.
    """
    spec, params, x, _ = _setup("mlp", 1, 2, seed=14)
    module = gls_core.to_sequential(spec, params[0])
    theta = nn.utils.parameters_to_vector(module.parameters()).detach()
    own_l, _ = gls_core.compute_bounds(module, x, 0.1, "ibp")
    spec_l, _ = gls_core.compute_bounds(spec, x, 0.1, "ibp", params=theta)
    vector_l, _ = gls_core.compute_bounds(module, x, 0.1, "ibp", params=theta)
    assert own_l.shape == spec_l.shape == (2, 4)
    assert vector_l.shape == (2, 4), f"Sequential + D-vector params gave {tuple(vector_l.shape)}, expected (2, 4)"


def test_sequential_without_biases_refuses_params_with_a_clear_error() -> None:
    """The flat layout has a bias for every affine layer; a bias-free module's own vector is refused by name."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    theta = nn.utils.parameters_to_vector(module.parameters()).detach()
    x = torch.rand(2, 4)
    with pytest.raises(ValueError, match="lack biases"):
        gls_core.compute_bounds(module, x, 0.1, "deeppoly", params=theta.unsqueeze(0))
    # Its own weights still work, with zero biases inserted by from_sequential.
    spec, flat = gls_core.from_sequential(module, (4,))
    expected = gls_core.compute_bounds(module, x, 0.1, "deeppoly")
    got = gls_core.compute_bounds(spec, x, 0.1, "deeppoly", params=flat)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)


def test_float64_population_matches_float32() -> None:
    spec, params, x, C = _setup("cnn", 2, 2, seed=15)
    for case in METHOD_CASES:
        single = bounds(spec, x, 0.05, case, C=C, params=params)
        double = bounds(spec, x.double(), 0.05, case, C=C.double(), params=params.double())
        assert double[0].dtype == torch.float64
        for a, b in zip(single, double, strict=True):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eps", [0.7, torch.tensor(0.7, dtype=torch.float64)])
def test_float64_region_keeps_eps_in_float64(eps: float | torch.Tensor) -> None:
    """A float64 population bounds the float64 region: eps is not rounded to float32 on the way.

    On y = x with x = 0.25, eps = 0.7 the exact upper bound is 0.95; rounding eps to float32
    (0.699999988...) shrinks the region by 1.2e-8, which is unsound at float64 precision.
    """
    spec = NetSpec((1,), (Linear(1, 1),), name="identity")
    theta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    x = torch.tensor([[0.25]], dtype=torch.float64)
    for method in ("ibp", "deeppoly"):
        lower, upper = gls_core.compute_bounds(spec, x, eps, method, params=theta)
        assert upper.dtype == torch.float64
        assert lower.item() == 0.0
        assert upper.item() == pytest.approx(0.25 + 0.7, rel=0, abs=1e-12), method
