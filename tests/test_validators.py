"""gls_core's validators: each field and each reason, the InvalidInput they raise, and its bounded value."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

import gls_core
from gls_core.errors import MAX_VALUE, InvalidInput, bounded_repr
from gls_core.nets import fully_connected
from gls_core.validation import (
    check_count,
    check_eps,
    check_finite,
    check_inputs,
    check_labels,
    check_members,
    check_params,
    check_radius,
)

SPEC = fully_connected((4,), [5], 3)
X = torch.full((2, 4), 0.5)


def invalid(call: object, *args: object, **kwargs: object) -> InvalidInput:
    assert callable(call)
    with pytest.raises(InvalidInput) as raised:
        call(*args, **kwargs)
    return raised.value


def test_invalid_input_is_a_value_error_naming_its_field() -> None:
    error = InvalidInput("perturbation.eps", "must be finite and >= 0, got -1.0", -1.0)
    assert isinstance(error, ValueError) and isinstance(gls_core.InvalidInput("x", "r"), ValueError)
    assert str(error) == "perturbation.eps: must be finite and >= 0, got -1.0"
    assert (error.field, error.reason, error.value) == ("perturbation.eps", "must be finite and >= 0, got -1.0", "-1.0")
    assert error.violations() == [("perturbation.eps", "must be finite and >= 0, got -1.0")]
    nested = InvalidInput("spec.name", "has 300 characters").within("inline")
    assert (nested.field, str(nested)) == ("inline.spec.name", "inline.spec.name: has 300 characters")
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), back.field, back.reason, back.value, str(back)) == (
        InvalidInput, error.field, error.reason, error.value, str(error))
    assert InvalidInput("x", "r").value is None  # no value given: none reported


def test_the_value_is_a_bounded_repr() -> None:
    assert bounded_repr(0.5) == "0.5"
    long = bounded_repr("z" * 10_000)
    assert long.endswith("(10000 characters)") and len(long) <= MAX_VALUE + 30
    assert bounded_repr(torch.zeros(1000, 1000)) == "tensor of shape [1000, 1000] and dtype float32"
    assert len(bounded_repr(list(range(1000)))) == MAX_VALUE
    error = invalid(check_inputs, SPEC, torch.full((1000, 4), 2.0))
    assert error.value == "tensor of shape [1000, 4] and dtype float32"


@pytest.mark.parametrize(("eps", "reason"), [
    (-0.1, "must be finite and >= 0, got -0.1"),
    (math.nan, "must be finite and >= 0, got nan"),
    (math.inf, "must be finite and >= 0, got inf"),
    ("0.1", "must be a number, got str"),
    (True, "must be a number, got bool"),
])
def test_radius(eps: object, reason: str) -> None:
    assert check_radius(0.25) == 0.25 and check_radius(np.float32(0.5)) == 0.5 and check_radius(0) == 0.0
    error = invalid(check_radius, eps, "perturbation.eps")
    assert (error.field, error.reason) == ("perturbation.eps", reason)


@pytest.mark.parametrize(("eps", "reason"), [
    (torch.tensor([0.1, -0.5]), "must be finite and >= 0, got -0.5 at index 1"),
    (torch.tensor([0.1, math.nan]), "must be finite and >= 0, got nan at index 1"),
    (torch.tensor([0.1, 0.1, 0.1]), "must be a scalar or have shape [2] (one radius per input), got shape [3]"),
    (torch.full((2, 1), 0.1), "must be a scalar or have shape [2] (one radius per input), got shape [2, 1]"),
    (torch.tensor([True, False]), "must hold real radii, got dtype bool"),
    ([0.1, 0.1], "must be a number or a tensor of 2 radii, got list"),
    (-1, "must be finite and >= 0, got -1.0"),
])
def test_eps_scalar_or_per_input(eps: object, reason: str) -> None:
    assert torch.equal(check_eps(0.1, 2), torch.tensor(0.1, dtype=torch.float64))
    assert torch.equal(check_eps(torch.tensor([0.0, 0.5]), 2), torch.tensor([0.0, 0.5], dtype=torch.float64))
    error = invalid(check_eps, eps, 2, "batch.eps")
    assert (error.field, error.reason) == ("batch.eps", reason)


@pytest.mark.parametrize(("x", "reason"), [
    (torch.full((2, 5), 0.5), "must have shape [B, 4] for fc, got [2, 5]"),
    (torch.full((4,), 0.5), "must have shape [B, 4] for fc, got [4]"),
    (torch.tensor(0.5), "must have shape [B, 4] for fc, got []"),
    (torch.full((0, 4), 0.5), "is an empty batch (no inputs: shape [0, 4])"),
    (torch.tensor([[0.5, math.nan, 0.5, 0.5]]), "contains NaN or inf"),
    (torch.tensor([[0.5, -math.inf, 0.5, 0.5]]), "contains NaN or inf"),
    (torch.tensor([[0.5, 1.5, -0.25, 0.5]]), "must lie in [0, 1] (pixels before normalisation), found values in "
                                             "[-0.25, 1.5]"),
    (torch.ones(2, 4, dtype=torch.int64), "must be a floating point torch.Tensor, got int64"),
    (np.full((2, 4), 0.5), "must be a floating point torch.Tensor, got ndarray"),
])
def test_inputs(x: object, reason: str) -> None:
    assert check_inputs(SPEC, X) is X
    error = invalid(check_inputs, SPEC, x, "batch.x")
    assert (error.field, error.reason) == ("batch.x", reason)


@pytest.mark.parametrize(("y", "batch", "field", "reason"), [
    (torch.tensor([0, 3]), 2, "labels.1", "label 3 is not a class of the network (0..2)"),
    (torch.tensor([-1, 2]), 2, "labels.0", "label -1 is not a class of the network (0..2)"),
    (torch.tensor([0.0, 1.0]), 2, "labels", "must be integer class labels, got float32"),
    (torch.tensor([True, False]), 2, "labels", "must be integer class labels, got bool"),
    ([0, 1], 2, "labels", "must be integer class labels, got list"),
    (torch.tensor([0, 1, 2]), 2, "labels", "must have shape [2] (one label per input), got [3]"),
    (torch.tensor([[0, 1]]), None, "labels", "must have shape [B] (one label per input), got [1, 2]"),
])
def test_labels(y: object, batch: int | None, field: str, reason: str) -> None:
    labels = check_labels(torch.tensor([0, 2], dtype=torch.uint8), 2, 3)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 2]
    error = invalid(check_labels, y, batch, 3, "labels")
    assert (error.field, error.reason) == (field, reason)


def test_params() -> None:
    D = SPEC.num_params
    assert check_params(SPEC, torch.zeros(D)).shape == (1, D)
    assert check_params(SPEC, torch.zeros(3, D)).shape == (3, D)
    assert check_params(SPEC, torch.zeros(1, D), single=True).shape == (1, D)
    cases = [
        ({"params": torch.zeros(3, D - 1)}, f"must have shape [P, {D}] or [{D}] (the {D} parameters of fc), "
                                            f"got [3, {D - 1}]"),
        ({"params": torch.zeros(0, D)}, f"must have shape [P, {D}] or [{D}] (the {D} parameters of fc), got [0, {D}]"),
        ({"params": torch.zeros(2, D), "single": True}, f"must have shape [{D}] (the {D} parameters of fc), "
                                                        f"got [2, {D}]"),
        ({"params": torch.zeros(1, D), "flat": True}, f"must have shape [{D}] (the {D} parameters of fc), "
                                                      f"got [1, {D}]"),
        ({"params": torch.zeros(D, dtype=torch.int64)}, "must be floating point, got int64"),
        ({"params": torch.full((D,), math.inf)}, "contains NaN or inf"),
    ]
    for arguments, reason in cases:
        error = invalid(check_params, SPEC, field="inline.theta", **arguments)
        assert (error.field, error.reason) == ("inline.theta", reason)
    with pytest.raises(TypeError, match="params must be a torch.Tensor"):  # the spec's own entry point
        SPEC.check_population([0.0] * D)  # type: ignore[arg-type]


def test_finite() -> None:
    assert check_finite(torch.tensor([1, 2]), "y").tolist() == [1, 2]  # integer tensors always pass
    for bad in (math.nan, math.inf, -math.inf):
        error = invalid(check_finite, torch.tensor([0.0, bad]), "centre")
        assert (error.field, error.reason) == ("centre", "contains NaN or inf")


def test_counts_and_member_ranges() -> None:
    assert check_count(3, "block") == 3 and check_count(np.int64(0), "steps", 0) == 0
    for value, minimum, maximum, reason in ((0, 1, None, "must be an integer >= 1, got 0"),
                                            (1001, 0, 1000, "must be an integer in [0, 1000], got 1001"),
                                            (2.0, 1, None, "must be an integer, got float"),
                                            (True, 1, None, "must be an integer, got bool")):
        error = invalid(check_count, value, "batch_size", minimum, maximum)
        assert (error.field, error.reason) == ("batch_size", reason)
    check_members(0, 8, 8, limit=8)
    for start, stop, limit, field, reason in ((4, 4, None, "stop", "member range [4, 4) is empty"),
                                              (0, 12, None, "stop", "member range [0, 12) exceeds the population of 8"),
                                              (-1, 4, None, "start", "must be an integer >= 0, got -1"),
                                              (0, 8, 4, "stop", "member range [0, 8) has more than 4 members (split "
                                                                "it over several requests)")):
        error = invalid(check_members, start, stop, 8, limit)
        assert (error.field, error.reason) == (field, reason)


def test_library_entry_points_raise_invalid_input_with_their_argument_names() -> None:
    theta = gls_core.kaiming_uniform(SPEC, torch.Generator().manual_seed(0))
    assert invalid(gls_core.compute_bounds, SPEC, X, -1.0, "ibp", params=theta).field == "eps"
    assert invalid(gls_core.compute_bounds, SPEC, X * 3, 0.1, "ibp", params=theta).field == "x"
    assert invalid(gls_core.compute_bounds, SPEC, X, 0.1, "nope", params=theta).field == "method"
    assert invalid(gls_core.compute_bounds, SPEC, X, 0.1, "ibp", params=theta, sides="left").field == "sides"
    assert invalid(gls_core.margin_spec, torch.tensor([0, 5]), 3).field == "y.1"
