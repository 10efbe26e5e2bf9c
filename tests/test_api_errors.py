"""Bad inputs to the public API raise ValueError / TypeError with a message naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gls_core
from gls_core.nets import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU, fully_connected

SPEC = fully_connected((4,), [5], 3)
THETA = gls_core.kaiming_uniform(SPEC, torch.Generator().manual_seed(0))
X = torch.full((2, 4), 0.5)


def call(**changes: object) -> tuple[torch.Tensor, torch.Tensor]:
    arguments: dict[str, object] = {"net": SPEC, "x": X, "eps": 0.1, "method": "deeppoly", "params": THETA}
    arguments.update(changes)
    return gls_core.compute_bounds(**arguments)  # type: ignore[arg-type]


def test_valid_call_works() -> None:
    lower, upper = call()
    assert lower.shape == upper.shape == (2, 3)
    assert (lower <= upper).all()


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="method: unknown relaxation 'deep-poly'") as info:
        call(method="deep-poly")
    assert "deeppoly" in str(info.value)  # and the valid choices are listed


@pytest.mark.parametrize(("x", "match"), [
    (torch.full((2, 4), 1.5), r"x: must lie in \[0, 1\]"),
    (torch.full((2, 4), -0.01), r"x: must lie in \[0, 1\]"),
    (torch.full((2, 5), 0.5), r"x: must have shape \[B, 4\]"),
    (torch.full((4,), 0.5), r"x: must have shape \[B, 4\]"),
    (torch.full((2, 1, 4), 0.5), r"x: must have shape \[B, 4\]"),
    (torch.full((0, 4), 0.5), "x: is an empty batch"),
    (torch.tensor([[0.5, float("nan"), 0.5, 0.5]]), "x: contains NaN"),
    (torch.tensor([[0.5, float("inf"), 0.5, 0.5]]), "x: contains NaN or inf"),
])
def test_bad_x(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(x=x)


def test_x_that_is_not_a_tensor() -> None:
    """A nested list or a numpy array is refused with ValueError/TypeError naming x (not AttributeError)."""
    for x in ([[0.5] * 4] * 2, np.full((2, 4), 0.5, dtype=np.float32)):
        with pytest.raises((ValueError, TypeError), match="x"):
            call(x=x)


def test_x_of_wrong_shape_for_a_sequential() -> None:
    module = gls_core.to_sequential(SPEC, THETA)
    with pytest.raises(ValueError, match="Linear expects"):
        gls_core.compute_bounds(module, torch.full((2, 5), 0.5), 0.1, "ibp")


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), torch.tensor([0.1, -0.1])])
def test_bad_eps(eps: object) -> None:
    with pytest.raises(ValueError, match="eps: must be finite and >= 0"):
        call(eps=eps)


def test_eps_of_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"eps: must be a scalar or have shape \[2\]"):
        call(eps=torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="eps: must be a scalar"):
        call(eps=torch.full((2, 1), 0.1))


@pytest.mark.parametrize(("C", "match"), [
    (torch.zeros(3, 2, 3), r"C must have shape \(B=2, K, 3\)"),  # batch mismatch
    (torch.zeros(2, 2, 4), r"C must have shape \(B=2, K, 3\)"),  # classes mismatch
    (torch.zeros(2, 3), r"C must have shape \(B=2, K, 3\)"),  # missing the row axis
    (torch.zeros(2, 0, 3), r"C has no rows"),
    (torch.full((2, 2, 3), float("nan")), r"C contains NaN"),
    ([[[1.0, -1.0, 0.0]]] * 2, r"C must have shape"),
])
def test_bad_specification_matrix(C: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(C=C)


def test_params_errors() -> None:
    D = SPEC.num_params
    with pytest.raises(ValueError, match=rf"params: must have shape \[P, {D}\]"):
        call(params=torch.zeros(3, D - 1))
    with pytest.raises(ValueError, match=rf"params: must have shape \[P, {D}\]"):
        call(params=torch.zeros(D + 2))
    with pytest.raises(ValueError, match="params .* is required"):
        call(params=None)
    with pytest.raises(ValueError, match="params: contains NaN"):
        call(params=torch.full((1, D), float("nan")))
    with pytest.raises(ValueError, match="params: must be floating point"):
        call(params=torch.zeros(1, D, dtype=torch.int32))
    with pytest.raises(TypeError, match="params must be a torch.Tensor"):
        call(params=THETA.tolist())


def test_net_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="net must be a NetSpec or torch.nn.Sequential, got Linear"):
        call(net=torch.nn.Linear(4, 3))


@pytest.mark.parametrize("method", ["ibp", "hbox", "crown-ibp", "deeppoly", "crown"])
def test_options_for_a_method_without_options(method: str) -> None:
    with pytest.raises(ValueError, match=rf"steps: \['steps'\] only apply to alpha-crown, not {method}"):
        call(method=method, steps=3)


@pytest.mark.parametrize("init", [-0.1, 1.5, float("nan")])
def test_alpha_init_out_of_range(init: float) -> None:
    with pytest.raises(ValueError, match=r"init: must be \'deeppoly\' or a number in \[0, 1\]"):
        call(method="alpha-crown", init=init)


def test_alpha_init_that_is_not_a_number_is_named() -> None:
    with pytest.raises(ValueError, match="init"):
        call(method="alpha-crown", init="area")


def test_alpha_bad_steps_and_unknown_option() -> None:
    with pytest.raises(ValueError, match="steps: must be an integer >= 0"):
        call(method="alpha-crown", steps=-1)
    with pytest.raises(ValueError, match=r"step_size: must be a number in \[0, 10\]"):
        call(method="alpha-crown", step_size=-0.5)
    with pytest.raises(ValueError, match=r"lr: alpha-crown options are \[.steps., .step_size., .init.\], got unknown"):
        call(method="alpha-crown", lr=0.1)
    lower, upper = call(method="alpha-crown", init=1.0, steps=2, step_size=0.25)  # valid edge values
    assert (lower <= upper).all()


@pytest.mark.parametrize(("y", "classes", "match"), [
    (torch.tensor([0, 3]), 3, r"y.1: label 3 is not a class of the network \(0..2\)"),
    (torch.tensor([-1, 2]), 3, r"y.0: label -1 is not a class"),
    (torch.tensor([0.0, 1.0]), 3, "y: must be integer class labels, got float32"),
    (torch.tensor([[0, 1]]), 3, r"y: must have shape \[B\]"),
    (torch.tensor([0]), 1, "num_classes must be >= 2"),
])
def test_margin_spec_errors(y: torch.Tensor, classes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        gls_core.margin_spec(y, classes)


def test_margin_spec_rows() -> None:
    C = gls_core.margin_spec(torch.tensor([0, 2]), 3)
    expected = torch.tensor([
        [[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]],  # label 0: y1 - y0, y2 - y0
        [[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]],  # label 2: y0 - y2, y1 - y2
    ])
    assert torch.equal(C, expected)
    assert torch.equal(gls_core.margin_spec([1], 2), torch.tensor([[[1.0, -1.0]]]))


@pytest.mark.parametrize(("layers", "match"), [
    ((Linear(4, 5), ReLU(), Linear(5, 3), ReLU()), "last layer must be Linear"),
    ((Linear(4, 5), Linear(5, 3)), "layer 1: every affine layer after the first must follow a ReLU"),
    ((ReLU(), Linear(4, 3)), "layer 0: a ReLU before the first affine layer"),
])
def test_unsupported_architectures(layers: tuple[object, ...], match: str) -> None:
    spec = NetSpec((4,), layers)  # type: ignore[arg-type]
    theta = torch.zeros(spec.num_params)
    for method in ("ibp", "deeppoly"):
        with pytest.raises(ValueError, match=match):
            gls_core.compute_bounds(spec, X, 0.1, method, params=theta)


def test_normalize_after_the_first_layer_is_refused() -> None:
    spec = NetSpec((1, 4, 4), (Conv2d(1, 1, 1), ReLU(), Normalize((0.5,), (0.2,)), Flatten(), Linear(16, 2)))
    with pytest.raises(ValueError, match="Normalize is only supported as the first layer"):
        gls_core.compute_bounds(spec, torch.rand(1, 1, 4, 4), 0.1, "ibp", params=torch.zeros(spec.num_params))
