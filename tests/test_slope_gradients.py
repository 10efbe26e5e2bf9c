"""alpha-CROWN's closed-form slope gradients equal autograd's through the walk, and so do its bounds."""

from __future__ import annotations

import pytest
import torch
from helpers import random_inputs, random_population, random_spec_matrix

import gls_core
from gls_core.bounds.alpha_crown import _alpha_relaxation, _autograd_gradients, optimise_slopes
from gls_core.bounds.layerwise import Walk, backsub_intersect_bounds, final_bounds, walk
from gls_core.bounds.region import input_box
from gls_core.bounds.relu import deeppoly_relaxation
from gls_core.bounds.slope_gradients import bounds_and_slope_gradients
from gls_core.nets import NetSpec, fully_connected
from gls_core.nets.zoo import build_cnn
from gls_core.verify.subdomains import with_splits

NETS = {
    "mlp": lambda: fully_connected((1, 5, 5), [7, 6, 5], 4, "mlp"),
    "cnn": lambda: build_cnn("cnn", (2, 9, 9), 3, [(3, 3, 2, 1), (2, 3, 1, 1)], [6]),
    "normalized-cnn": lambda: build_cnn("cnn", (3, 8, 8), 3, [(2, 3, 2, 1), (3, 2, 1, 0)], [5],
                                        normalize=((0.4, 0.5, 0.45), (0.2, 0.25, 0.3))),
    "cnn3-tiny": lambda: gls_core.network("cnn3-tiny", "mnist"),
}


def problem(name: str, dtype: torch.dtype, seed: int = 0) -> tuple[NetSpec, torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = NETS[name]()
    generator = torch.Generator().manual_seed(seed)
    params = random_population(spec, 3, generator, 1.0).to(dtype)
    x = random_inputs(spec, 4, generator).to(dtype)
    C = random_spec_matrix("margin", 4, spec.num_outputs, generator).to(dtype)
    return spec, params, x, C


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("sides", ["upper", "lower", "both"])
@pytest.mark.parametrize("init", [0.5, "deeppoly", 0.2])
def test_gradients_equal_autograd(name: str, sides: str, init: float | str) -> None:
    spec, params, x, C = problem(name, torch.float64)
    box = input_box(spec, x, 0.1)
    with torch.no_grad():
        state = walk(spec, params, box, deeppoly_relaxation, backsub_intersect_bounds)
    rows = (2 if sides == "both" else 1) * C.shape[1]
    alphas = {}
    for index, pre in state.pre_relu.items():
        shape = (*pre.lower.shape[:2], rows, 1, *pre.lower.shape[2:])
        start = torch.rand(shape, generator=torch.Generator().manual_seed(index), dtype=torch.float64)
        alphas[index] = start if init == 0.2 else torch.full(shape, 0.5, dtype=torch.float64)
    relaxations = {i: _alpha_relaxation(state.pre_relu[i], a) for i, a in alphas.items()}
    closed, grads, _ = bounds_and_slope_gradients(spec, params, state, C, relaxations, sides)
    for tensor in alphas.values():
        tensor.requires_grad_(True)
    traced = final_bounds(spec, params, state, C, {i: _alpha_relaxation(state.pre_relu[i], a)
                                                   for i, a in alphas.items()}, sides)
    expected = _autograd_gradients(traced, sides, list(alphas.values()))
    torch.testing.assert_close(closed.lower, traced.lower.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(closed.upper, traced.upper.detach(), rtol=1e-10, atol=1e-10)
    unstable = {i: ((pre.lower < 0) & (pre.upper > 0)).unsqueeze(2).unsqueeze(3).expand_as(alphas[i])
                for i, pre in state.pre_relu.items()}
    assert any(bool((grads[i][unstable[i]] != 0).any()) for i in grads), "nothing to optimise: proves nothing"
    for index, gradient in zip(alphas, expected):
        assert gradient is not None  # only unstable neurons' slopes matter (and move)
        torch.testing.assert_close(grads[index][unstable[index]], gradient[unstable[index]], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("init", [0.5, "deeppoly"])
def test_optimised_bounds_equal_autograd_path(name: str, steps: int, init: float | str) -> None:
    spec, params, x, C = problem(name, torch.float64, seed=1)
    box = input_box(spec, x, 0.1)
    with torch.no_grad():
        state = walk(spec, params, box, deeppoly_relaxation, backsub_intersect_bounds)
    closed = optimise_slopes(spec, params, state, C, steps, 0.5 if steps == 1 else 0.1, init, "both")
    traced = optimise_slopes(spec, params, state, C, steps, 0.5 if steps == 1 else 0.1, init, "both",
                             closed_form=False)
    torch.testing.assert_close(closed.lower, traced.lower, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(closed.upper, traced.upper, rtol=1e-9, atol=1e-10)


def test_paper_setting_in_float32_equals_autograd_path() -> None:
    """Init 0.5, one step of 0.5 (the training setting) on CNN3-tiny: the same bounds as autograd's in float32.

    (With init "deeppoly" many coefficients are exactly zero and a float32 sum's sign at such a tie can
    differ between summation orders, so a slope may step the other way: both are valid ascent steps.)
    """
    spec, params, x, C = problem("cnn3-tiny", torch.float32, seed=2)
    box = input_box(spec, x, 0.1)
    with torch.no_grad():
        state = walk(spec, params, box, deeppoly_relaxation, backsub_intersect_bounds)
    closed = optimise_slopes(spec, params, state, C, 1, 0.5, 0.5, "upper")
    traced = optimise_slopes(spec, params, state, C, 1, 0.5, 0.5, "upper", closed_form=False)
    torch.testing.assert_close(closed.upper, traced.upper, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("members", [3, 32])
@pytest.mark.parametrize("with_offset", [True, False])
def test_native_relaxed_forward_equals_the_step_by_step_path(members: int, with_offset: bool) -> None:
    """The native sweep (gradient on the ReLU's map, then the convolution above) against torch's ops."""
    from gls_core.bounds import native
    from gls_core.bounds.rules import At
    from gls_core.bounds.slope_gradients import _relax_forward_native
    from gls_core.bounds.types import RowwiseRelaxation
    from gls_core.members import conv_forward

    spec = gls_core.network("cnn3-tiny", "mnist")
    assert native.usable(torch.zeros(1)), "the native kernels must build here"
    generator = torch.Generator().manual_seed(members)
    params = random_population(spec, members, generator)
    batch, rows, shape = 5, 3, spec.shapes[2]  # the first ReLU's map, below the second convolution
    coefficient = torch.randn(members, batch, rows, 1, *shape, generator=generator)
    coefficient[coefficient.abs() < 0.3] = 0.0  # ties: a zero coefficient takes the upper line
    mu = torch.randn(members, batch, rows, 1, *shape, generator=generator)
    alpha = torch.rand(members, batch, rows, 1, *shape, generator=generator)
    upper = torch.rand(members, batch, *shape, generator=generator)
    offset = torch.rand(members, batch, *shape, generator=generator) if with_offset else None
    fused = _relax_forward_native(At(spec, params, 2), coefficient, mu, RowwiseRelaxation(alpha, None, upper, offset))
    assert fused is not None
    grad, following = fused
    upper_line = upper.unsqueeze(2).unsqueeze(3) * mu + (0 if offset is None else offset.unsqueeze(2).unsqueeze(3))
    relaxed = torch.where(coefficient > 0, alpha * mu, upper_line).reshape(members, batch * rows, *shape)
    conv = spec.layers[2]
    expected = conv_forward(relaxed, spec.weight(params, 2), spec.bias(params, 2), conv)
    torch.testing.assert_close(grad, coefficient.clamp(min=0) * mu, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(following, expected, rtol=1e-5, atol=1e-5)


def split_problem(name: str, seed: int, dtype: torch.dtype = torch.float64, skip_first: bool = False
                  ) -> tuple[NetSpec, torch.Tensor, torch.Tensor, dict[int, torch.Tensor], Walk]:
    """One network (P = 1, as the branch and bound bounds it), 6 subdomains of one input region, each with
    about a third of the unstable neurons split active or inactive at random, walked with the splits applied.
    ``skip_first``: nothing split at the first ReLU (its rows then take the native last step, in float32)."""
    spec, params, x, C = problem(name, dtype, seed)
    params, count = params[:1], 6
    box = input_box(spec, x[:1].expand(count, *x.shape[1:]), 0.1)
    with torch.no_grad():
        plain = walk(spec, params, box, deeppoly_relaxation, backsub_intersect_bounds)
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for index, pre in plain.pre_relu.items():
        unstable = (pre.lower[0] < 0) & (pre.upper[0] > 0)
        chosen = unstable & (torch.rand(unstable.shape, generator=generator) < 0.35)
        if skip_first and index == min(plain.pre_relu):
            chosen = torch.zeros_like(chosen)
        side = torch.where(torch.rand(unstable.shape, generator=generator) < 0.5, 1, -1)
        splits[index] = (chosen * side).to(torch.int8)
    assert sum(int((s != 0).sum()) for s in splits.values()) > 0, "no split: proves nothing"
    with torch.no_grad():
        state = walk(spec, params, box, deeppoly_relaxation, with_splits(backsub_intersect_bounds, splits))
    return spec, params, C[:1].expand(count, *C.shape[1:]), splits, state


SPLIT_CASES = [(name, torch.float64, False, 1e-9) for name in sorted(NETS)] + [
    ("cnn3-tiny", torch.float32, True, 1e-4),  # the native last step below, the bound read above the terms
    ("cnn3-tiny", torch.float32, False, 1e-4)]


@pytest.mark.parametrize("name,dtype,skip_first,tolerance", SPLIT_CASES)
@pytest.mark.parametrize("sides", ["lower", "both"])
def test_split_term_gradients_equal_autograd(name: str, dtype: torch.dtype, skip_first: bool, tolerance: float,
                                             sides: str) -> None:
    """beta-CROWN's terms on split neurons: the bound with them and its derivative in each term's entry (the rows'
    pre-activations at x*) equal autograd's through the walk."""
    spec, params, C, splits, state = split_problem(name, 3, dtype, skip_first)
    rows = (2 if sides == "both" else 1) * C.shape[1]
    generator = torch.Generator().manual_seed(4)
    alphas, terms = {}, {}
    for index, pre in state.pre_relu.items():
        shape = (*pre.lower.shape[:2], rows, 1, *pre.lower.shape[2:])
        alphas[index] = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
        sign = splits[index].to(dtype).unsqueeze(0).unsqueeze(2).unsqueeze(3)
        if bool((sign != 0).any()):  # as the branch and bound: terms only where a layer has a split neuron
            terms[index] = -torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype) * sign
    relaxations = {i: _alpha_relaxation(state.pre_relu[i], a, terms.get(i)) for i, a in alphas.items()}
    closed, _, term_grads = bounds_and_slope_gradients(spec, params, state, C, relaxations, sides)
    for tensor in terms.values():
        tensor.requires_grad_(True)
    traced = final_bounds(spec, params, state, C, {i: _alpha_relaxation(state.pre_relu[i], a, terms.get(i))
                                                   for i, a in alphas.items()}, sides)
    expected = _autograd_gradients(traced, sides, list(terms.values()))
    torch.testing.assert_close(closed.lower, traced.lower.detach(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(closed.upper, traced.upper.detach(), rtol=tolerance, atol=tolerance)
    assert set(term_grads) == set(terms) and (min(state.pre_relu) not in terms) == skip_first
    for index, gradient in zip(terms, expected):
        assert gradient is not None
        torch.testing.assert_close(term_grads[index].expand_as(gradient), gradient, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("steps", [1, 5])
def test_optimised_bounds_with_splits_equal_autograd_path(name: str, steps: int) -> None:
    """The branch and bound's subdomain bound (slopes from DeepPoly's, split terms from 0, lower side): the
    closed-form steps take the same path as autograd's and end at the same bounds."""
    spec, params, C, splits, state = split_problem(name, 5)
    closed = optimise_slopes(spec, params, state, C, steps, 0.1, "deeppoly", "lower", splits=splits)
    traced = optimise_slopes(spec, params, state, C, steps, 0.1, "deeppoly", "lower", splits=splits,
                             closed_form=False)
    torch.testing.assert_close(closed.lower, traced.lower, rtol=1e-9, atol=1e-10)
    no_terms = optimise_slopes(spec, params, state, C, steps, 0.1, "deeppoly", "lower")
    assert not torch.allclose(closed.lower, no_terms.lower), "the split terms moved nothing: proves nothing"
