"""Complete verification against exact answers: every verdict agrees with enumerating activation patterns.

The reference is independent of the verifier: the network is read as ``nn.Sequential`` (torch's own
layers), every activation pattern of its few ReLUs is a linear region, and the exact minimum of each
property row is the smallest LP optimum over the feasible regions (scipy's HiGHS).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from gls_core import forward, kaiming_uniform, to_sequential
from gls_core.bounds.types import Box
from gls_core.nets import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU, fully_connected
from gls_core.verify import Property, VerifyOptions, robustness, verify, verify_property
from gls_core.verify.attack import checked
from gls_core.verify.milp import affine_blocks
from gls_core.verify.subdomains import bound_subdomains, no_splits

EXACT = VerifyOptions(timeout=60, attack_steps=0, milp_below=2, batch=4, milp_root_unstable=0)  # the search decides


def _affine_maps(net: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """('affine', W, b) for each Conv2d/Linear and ('relu', ...) for each ReLU, read through torch's modules."""
    maps: list[tuple[str, np.ndarray, np.ndarray]] = []
    shape = input_shape
    for module in net:
        if isinstance(module, nn.ReLU):
            maps.append(("relu", np.empty(0), np.empty(0)))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            size = math.prod(shape)
            with torch.no_grad():
                zero = module(torch.zeros(1, *shape, dtype=torch.float64))
                basis = module(torch.eye(size, dtype=torch.float64).view(size, *shape)) - zero
            maps.append(("affine", basis.reshape(size, -1).T.numpy(), zero.reshape(-1).numpy()))
            shape = tuple(zero.shape[1:])
        elif isinstance(module, nn.Flatten):
            shape = (math.prod(shape),)
    return maps


def _linear_regions(net: nn.Sequential, input_shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """(A, b, A_ub, b_ub) per activation pattern: on {x: A_ub x <= b_ub} the network is A x + b."""
    maps = _affine_maps(net.double(), input_shape)
    relu_sizes = []
    size = math.prod(input_shape)
    for kind, matrix, _ in maps:
        if kind == "affine":
            size = matrix.shape[0]
        else:
            relu_sizes.append(size)
    for pattern in itertools.product((0, 1), repeat=sum(relu_sizes)):
        flags = np.array(pattern, dtype=np.float64)
        A, b = np.eye(math.prod(input_shape)), np.zeros(math.prod(input_shape))  # current activation = A x + b
        rows, limits, used = [], [], 0
        for kind, matrix, offset in maps:
            if kind == "affine":
                A, b = matrix @ A, matrix @ b + offset
                continue
            on = flags[used:used + A.shape[0]]
            used += A.shape[0]
            sign = np.where(on > 0, -1.0, 1.0)  # active: -z <= 0; inactive: z <= 0
            rows.append(sign[:, None] * A)
            limits.append(-sign * b)
            A, b = on[:, None] * A, on * b
        yield (A, b, *((np.vstack(rows), np.concatenate(limits)) if rows else (None, None)))  # no ReLU: one region


def exact_minima(net: nn.Sequential, input_shape: tuple[int, ...], prop: Property) -> np.ndarray:
    """The exact minimum of every property row over the box: [K]."""
    lower, upper = prop.lower.reshape(-1).double().numpy(), prop.upper.reshape(-1).double().numpy()
    C, d = prop.C.double().numpy(), prop.d.double().numpy()
    best = np.full(C.shape[0], np.inf)
    for A, b, A_ub, b_ub in _linear_regions(net, input_shape):
        for k in range(C.shape[0]):
            result = linprog(C[k] @ A, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lower, upper)), method="highs")
            if result.status == 0:
                best[k] = min(best[k], result.fun + C[k] @ b + d[k])
    return best


def exact_group_margins(net: nn.Sequential, input_shape: tuple[int, ...], prop: Property) -> np.ndarray:
    """The exact minimum over the box of every group's margin (its largest row): [G], one LP per region and group."""
    lower, upper = prop.lower.reshape(-1).double().numpy(), prop.upper.reshape(-1).double().numpy()
    C, d = prop.C.double().numpy(), prop.d.double().numpy()
    best = np.full(prop.num_groups, np.inf)
    for A, b, A_ub, b_ub in _linear_regions(net, input_shape):
        for g in range(prop.num_groups):
            rows = prop.group_rows(g)
            # min t over (x, t) with every row <= t: C_r (A x + b) + d_r - t <= 0
            margin_rows = np.hstack([C[rows] @ A, -np.ones((len(rows), 1))])
            region = margin_rows if A_ub is None else np.vstack([np.hstack([A_ub, np.zeros((A_ub.shape[0], 1))]),
                                                                 margin_rows])
            limits = -(C[rows] @ b + d[rows]) if A_ub is None else np.concatenate([b_ub, -(C[rows] @ b + d[rows])])
            cost = np.zeros(lower.size + 1)
            cost[-1] = 1.0
            result = linprog(cost, A_ub=region, b_ub=limits, bounds=[*zip(lower, upper), (None, None)],
                             method="highs")
            if result.status == 0:
                best[g] = min(best[g], result.fun)
    return best


def _cases(spec: NetSpec, seeds: range, inputs: int, radii: tuple[float, ...]):
    """Robustness properties of the predicted label on boxes around points spread over [-2, 2]^n."""
    for seed in seeds:
        theta = torch.randn(spec.num_params, generator=torch.Generator().manual_seed(seed))
        x = 4 * torch.rand(inputs, *spec.input_shape, generator=torch.Generator().manual_seed(100 + seed),
                           dtype=torch.float64) - 2
        y = forward(spec, theta.double().view(1, -1), x)[0].argmax(1)
        for i, radius in itertools.product(range(inputs), radii):
            base = robustness(spec, x[i].clamp(0, 1), int(y[i]), 0.0)
            yield theta, Property(x[i] - radius, x[i] + radius, base.C, base.d)


@functools.cache
def _exact_cases(kind: str) -> tuple[NetSpec, list[tuple[torch.Tensor, Property, np.ndarray]]]:
    """The properties of each test network with their exact row minima (computed once for every branching rule)."""
    if kind == "fully-connected":
        spec = fully_connected((3,), [3, 3], 3)
        cases = _cases(spec, range(4), 4, (0.1, 0.5, 1.5))
    else:
        spec = NetSpec((1, 4, 4), (Conv2d(1, 2, 3, 2, 0), ReLU(), Flatten(), Linear(2, 3), ReLU(), Linear(3, 3)))
        cases = _cases(spec, range(3), 4, (0.2, 1.0))
    return spec, [(theta, prop, exact_minima(to_sequential(spec, theta), spec.input_shape, prop))
                  for theta, prop in cases]


def _check_against_exact(kind: str, branching: str) -> dict[str, int]:
    spec, cases = _exact_cases(kind)
    counts = {"verified": 0, "falsified": 0, "unknown": 0}
    for theta, prop, minima in cases:
        verdict = verify_property(spec, theta.double(), prop, dataclasses.replace(EXACT, branching=branching))
        counts[verdict.status] += 1
        if verdict.status == "verified":
            assert minima.min() > 0, f"verified, but the exact minimum is {minima.min()}"
            assert verdict.bound <= minima.min() + 1e-6
        elif verdict.status == "falsified":
            assert verdict.counterexample is not None and prop.contains(verdict.counterexample)
            rows = prop.rows(spec, theta.double(), verdict.counterexample.unsqueeze(0))
            assert float(rows.min()) <= 0
            assert minima.min() <= 1e-9
    return counts


# widest-early differs from widest by a weight only
EXACT_RULES = ("widest", "babsr", "fsb")


@pytest.mark.parametrize("branching", EXACT_RULES)
def test_fully_connected_verdicts_equal_the_exact_answer(branching: str) -> None:
    counts = _check_against_exact("fully-connected", branching)
    assert counts["unknown"] == 0, counts
    assert counts["verified"] >= 10 and counts["falsified"] >= 10, counts


@pytest.mark.parametrize("branching", EXACT_RULES)
def test_convolutional_verdicts_equal_the_exact_answer(branching: str) -> None:
    counts = _check_against_exact("convolutional", branching)
    assert counts["unknown"] == 0, counts
    assert counts["verified"] >= 5 and counts["falsified"] >= 5, counts


def test_subdomains_bounded_by_a_new_walk_give_the_exact_answer_too() -> None:
    """The default search keeps each parent's intermediate bounds; a fresh walk per subdomain must agree."""
    spec, cases = _exact_cases("fully-connected")
    for theta, prop, minima in cases:
        verdict = verify_property(spec, theta.double(), prop, dataclasses.replace(EXACT, intermediate="walk"))
        assert verdict.status == ("verified" if minima.min() > 0 else "falsified"), (verdict, minima.min())


def _grouped(prop: Property) -> Property:
    """The robustness rows in groups of two: a case is unsafe only where both of its classes reach the label."""
    groups = torch.arange(prop.C.shape[0]) // 2
    return Property(prop.lower, prop.upper, prop.C, prop.d, groups)


@pytest.mark.parametrize("options", [EXACT, VerifyOptions(timeout=60, batch=4),
                                     VerifyOptions(timeout=60, batch=4, milp_root_unstable=0, milp_below=0,
                                                   search_attacks=1e-9, attack_steps=10)],
                         ids=["exact-path", "default", "attack-after-every-batch"])
def test_verdicts_on_groups_of_rows_equal_the_exact_answer(options: VerifyOptions) -> None:
    spec, cases = _exact_cases("fully-connected")
    counts = {"verified": 0, "falsified": 0, "unknown": 0}
    for theta, single, _ in cases:
        prop = _grouped(single)
        margins = exact_group_margins(to_sequential(spec, theta), spec.input_shape, prop)
        verdict = verify_property(spec, theta.double(), prop, options)
        counts[verdict.status] += 1
        if verdict.status == "verified":
            assert margins.min() > 0 and verdict.bound <= margins.min() + 1e-6
        elif verdict.status == "falsified":
            assert verdict.counterexample is not None and prop.contains(verdict.counterexample)
            assert float(prop.worst(prop.rows(spec, theta.double(), verdict.counterexample.unsqueeze(0)))) <= 0
            assert margins.min() <= 1e-9
    assert counts["unknown"] == 0 and counts["verified"] >= 5 and counts["falsified"] >= 3, counts


@pytest.mark.parametrize("branching", EXACT_RULES)
def test_branch_and_bound_decides_what_the_bounds_cannot(branching: str) -> None:
    spec = fully_connected((4,), [16, 16], 3)
    decided_by_search = 0
    options = VerifyOptions(timeout=60, attack_steps=0, milp_below=0, branching=branching, milp_root_unstable=0)
    for theta, prop in _cases(spec, range(3), 8, (0.15,)):
        verdict = verify_property(spec, theta.double(), prop, options)
        assert verdict.status != "unknown"
        decided_by_search += verdict.subdomains > 1
    assert decided_by_search >= 3


def _inside(spec: NetSpec, theta: torch.Tensor, points: torch.Tensor, splits: dict[int, torch.Tensor]) -> torch.Tensor:
    """Which points satisfy the splits (by the ReLU inputs of a plain forward pass)."""
    keep = torch.ones(points.shape[0], dtype=torch.bool)
    h = points
    for index, module in enumerate(to_sequential(spec, theta).double()):
        if isinstance(module, nn.ReLU):
            split = splits[index].reshape(1, -1)
            value = h.reshape(h.shape[0], -1)
            keep &= ((split > 0) <= (value >= 0)).all(1) & ((split < 0) <= (value <= 0)).all(1)
        h = module(h)
    return keep


@pytest.mark.parametrize("method", ["deeppoly", "alpha-crown"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_split_bounds_are_sound_and_batch_equals_one_at_a_time(method: str, precision: str) -> None:
    spec = NetSpec((1, 3, 3), (Conv2d(1, 3, 2, 1, 0), ReLU(), Flatten(), Linear(12, 8), ReLU(), Linear(8, 4)))
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(3)).double()
    x = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    prop = robustness(spec, x, int(forward(spec, theta.view(1, -1), x.unsqueeze(0))[0, 0].argmax()), 0.5)
    root = bound_subdomains(spec, theta, prop, no_splits(spec), method, precision=precision)
    generator = torch.Generator().manual_seed(5)
    splits = no_splits(spec, 6)
    for index, bounds in root.pre_relu.items():  # two random unstable neurons per layer, each split either way
        unstable = ((bounds.lower < 0) & (bounds.upper > 0)).reshape(-1).nonzero().view(-1)
        for n in range(6):
            picked = unstable[torch.randperm(unstable.numel(), generator=generator)[:2]]
            signs = torch.randint(0, 2, (2,), generator=generator, dtype=torch.int8) * 2 - 1
            splits[index][n].view(-1)[picked] = signs
    assert sum(int((s != 0).sum()) for s in splits.values()) >= 18
    batched = bound_subdomains(spec, theta, prop, splits, method, precision=precision)
    tolerance = 1e-9 if precision == "float64" else 1e-3  # float32: within its slack
    points = prop.lower + (prop.upper - prop.lower) * torch.rand(50000, *prop.lower.shape, generator=generator,
                                                                 dtype=torch.float64)
    rows = prop.rows(spec, theta, points)
    sampled = 0
    for n in range(6):
        alone = bound_subdomains(spec, theta, prop, {i: s[n:n + 1] for i, s in splits.items()}, method,
                                 precision=precision)
        torch.testing.assert_close(alone.lower[0], batched.lower[n], rtol=tolerance, atol=tolerance)
        inside = _inside(spec, theta, points, {i: s[n] for i, s in splits.items()})
        sampled += int(inside.sum())
        if bool(inside.any()):
            assert bool((rows[inside] >= batched.lower[n] - 1e-9).all()), "a split bound is violated"
        for index, bounds in batched.pre_relu.items():  # split neurons carry their split in their bounds
            split = splits[index][n]
            assert bool((bounds.lower[n][split > 0] >= 0).all()) and bool((bounds.upper[n][split < 0] <= 0).all())
    assert sampled > 100
    assert bool((batched.lower.min(1).values >= root.lower.min() - tolerance).all()), "splitting loosened a bound"


def test_float32_bounds_are_widened_once_and_keep_the_splits_exact() -> None:
    """Children of float32 bounds inherit their parents' (already widened) ReLU input bounds without paying the
    slack again, split neurons keep 0 exactly, and every float32 bound is at most its float64 counterpart."""
    spec = NetSpec((1, 4, 4), (Conv2d(1, 3, 2, 1, 0), ReLU(), Flatten(), Linear(27, 10), ReLU(), Linear(10, 3)))
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(6)).double()
    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    prop = robustness(spec, x, int(forward(spec, theta.view(1, -1), x.unsqueeze(0))[0, 0].argmax()), 0.3)
    root = bound_subdomains(spec, theta, prop, no_splits(spec), "alpha-crown", precision="float32")
    splits = no_splits(spec, 2)
    for index, bounds in root.pre_relu.items():
        unstable = ((bounds.lower < 0) & (bounds.upper > 0)).reshape(-1).nonzero().view(-1)
        assert unstable.numel() > 0
        splits[index][0].view(-1)[unstable[0]], splits[index][1].view(-1)[unstable[0]] = 1, -1
    parents = {i: Box(b.lower.expand(2, *b.lower.shape[1:]), b.upper.expand(2, *b.upper.shape[1:]))
               for i, b in root.pre_relu.items()}
    children = {p: bound_subdomains(spec, theta, prop, splits, "alpha-crown", parents=parents, precision=p)
                for p in ("float32", "float64")}
    for index, bounds in children["float32"].pre_relu.items():
        assert bool((bounds.lower >= parents[index].lower).all()) and bool((bounds.upper <= parents[index].upper).all())
        assert bool((bounds.lower[splits[index] > 0] == 0).all()) and bool((bounds.upper[splits[index] < 0] == 0).all())
        exact = children["float64"].pre_relu[index]
        assert bool((bounds.lower <= exact.lower).all()) and bool((bounds.upper >= exact.upper).all())
    assert bool((children["float32"].lower <= children["float64"].lower).all())


def test_counterexamples_are_checked_by_a_forward_pass() -> None:
    spec = fully_connected((2,), [4], 2)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(0)).double()
    prop = Property(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64),
                    torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    grid = torch.cartesian_prod(torch.linspace(0, 1, 41), torch.linspace(0, 1, 41)).double()
    rows = prop.rows(spec, theta, grid)
    found = checked(spec, theta, prop, grid)
    if bool((rows <= 0).any()):
        assert found is not None and float(prop.rows(spec, theta, found.unsqueeze(0)).min()) <= 0
    assert checked(spec, theta, prop, grid[(rows > 0).all(1)]) is None


def test_batch_interface_and_misclassified_inputs() -> None:
    spec = fully_connected((3,), [6], 3)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(1)).double()
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    predicted = forward(spec, theta.view(1, -1), x)[0].argmax(1)
    wrong = (predicted + 1) % 3
    verdicts = verify(spec, theta, x, wrong, 0.0, VerifyOptions(timeout=10))
    assert all(v.status == "falsified" and v.counterexample is not None for v in verdicts)
    assert [v.to_dict()["status"] for v in verify(spec, theta, x, predicted, 0.0)] == ["verified"] * 4


@pytest.mark.parametrize("bad, message", [
    ({"timeout": 0}, "timeout"), ({"method": "ibp"}, "method"), ({"branching": "random"}, "branching"),
    ({"batch": 0}, "batch"), ({"milp_below": -1}, "milp_below"), ({"precision": "float16"}, "precision"),
])
def test_options_are_validated(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VerifyOptions(**bad)


def test_evaluate_with_the_complete_method_certifies_at_least_what_the_relaxations_do() -> None:
    from gls_core.evaluation import evaluate

    spec = fully_connected((1, 4, 4), [12, 12], 4)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(7))
    x = torch.rand(24, 1, 4, 4, generator=torch.Generator().manual_seed(8))
    y = forward(spec, theta.view(1, -1), x)[0].argmax(1)
    complete = evaluate(spec, theta, x, y, 0.08, method="complete", complete_timeout=20)
    deeppoly = evaluate(spec, theta, x, y, 0.08, method="deeppoly")
    assert complete.method == "complete" and complete.n == 24
    assert deeppoly.certified_acc <= complete.certified_acc <= complete.adversarial_acc
    assert complete.certified_acc > deeppoly.certified_acc or complete.certified_acc == complete.adversarial_acc


def test_a_stop_request_ends_the_slope_steps_with_sound_deeppoly_bounds() -> None:
    spec = NetSpec((1, 3, 3), (Conv2d(1, 3, 2, 1, 0), ReLU(), Flatten(), Linear(12, 8), ReLU(), Linear(8, 4)))
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(3)).double()
    x = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    prop = robustness(spec, x, int(forward(spec, theta.view(1, -1), x.unsqueeze(0))[0, 0].argmax()), 0.5)
    polls: list[int] = []

    def stop_now() -> bool:
        polls.append(1)
        return True

    stopped = bound_subdomains(spec, theta, prop, no_splits(spec), "alpha-crown", alpha_steps=50, should_stop=stop_now)
    deeppoly = bound_subdomains(spec, theta, prop, no_splits(spec), "deeppoly")
    optimised = bound_subdomains(spec, theta, prop, no_splits(spec), "alpha-crown", alpha_steps=50)
    assert polls == [1]  # asked once, before the first step
    torch.testing.assert_close(stopped.lower, deeppoly.lower, rtol=1e-9, atol=1e-9)
    assert bool((optimised.lower >= stopped.lower - 1e-9).all()) and bool((optimised.lower > stopped.lower).any())


def test_a_network_without_relus_is_decided_exactly() -> None:
    spec = NetSpec((3,), (Linear(3, 2),))
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(5)).double()
    x = torch.rand(3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    label = int(forward(spec, theta.view(1, -1), x.view(1, 3))[0, 0].argmax())
    statuses = set()
    for radius in (0.01, 2.0):
        prop = Property(x - radius, x + radius, robustness(spec, x, label, 0.0).C, robustness(spec, x, label, 0.0).d)
        verdict = verify_property(spec, theta, prop, VerifyOptions(timeout=10, attack_steps=0))
        minima = exact_minima(to_sequential(spec, theta), spec.input_shape, prop)
        assert verdict.status == ("verified" if minima.min() > 0 else "falsified"), (verdict, minima)
        statuses.add(verdict.status)
    assert statuses == {"verified", "falsified"}


def test_milp_blocks_of_a_network_with_input_normalisation_compute_its_forward_pass() -> None:
    spec = NetSpec((2, 2, 2), (Normalize((0.5, 0.1), (0.25, 2.0)), Flatten(), Linear(8, 5), ReLU(), Linear(5, 3)))
    theta = torch.randn(spec.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    blocks = affine_blocks(spec, theta)
    x = torch.rand(2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value = x.reshape(-1).numpy()
    for index, layer in enumerate(spec.layers):
        if isinstance(layer, ReLU):
            value = np.maximum(value, 0)
        elif index in blocks:
            value = blocks[index].matrix @ value + blocks[index].offset
    np.testing.assert_allclose(value, forward(spec, theta.view(1, -1), x.unsqueeze(0))[0, 0].numpy(), rtol=1e-9)
    prop = robustness(spec, x, int(np.argmax(value)), 0.05)
    verdict = verify_property(spec, theta, prop, VerifyOptions(timeout=30, attack_steps=0))  # 5 ReLUs: one MILP
    assert verdict.status in ("verified", "falsified") and verdict.decided_by in ("bounds", "milp")
