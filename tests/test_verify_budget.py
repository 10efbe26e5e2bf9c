"""The time split between the branch and bound and the whole-region MILP (gls_core/verify/budget.py).

The clock is moved by hand, so the decisions are checked on exact times, never on wall time.
"""

from __future__ import annotations

import pytest
import torch

from gls_core import forward, kaiming_uniform
from gls_core.nets import fully_connected
from gls_core.verify import VerifyOptions, robustness, verify_property
from gls_core.verify.budget import Budget
from gls_core.verify.deadline import Deadline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _budget(policy: str) -> tuple[Clock, Budget]:
    clock = Clock()
    return clock, Budget(Deadline.start(100.0, clock), policy, earliest=0.1)


def test_a_small_root_goes_to_the_milp_at_once_under_either_policy() -> None:
    for policy in ("adaptive", "fixed"):
        _, budget = _budget(policy)
        assert budget.milp_now(root_unstable=10, small=32)
        assert not budget.milp_now(root_unstable=33, small=32)


def test_a_root_too_large_for_the_milp_keeps_the_search_under_either_policy() -> None:
    for policy in ("adaptive", "fixed"):
        clock, budget = _budget(policy)
        for t, worst in ((2.0, -1.0), (10.0, -0.99), (20.0, -0.98), (24.0, -0.98), (27.0, -0.98), (30.0, -0.98)):
            clock.now = t
            budget.record(worst)
        assert budget.milp_now(500, 32) and not budget.milp_now(500, 32, large=400)


def test_the_fixed_policy_hands_over_at_its_share_whatever_the_progress() -> None:
    clock, budget = _budget("fixed")
    clock.now = 9.0
    assert not budget.milp_now(100, 0)
    clock.now = 10.5
    assert budget.milp_now(100, 0)


def test_the_adaptive_policy_keeps_a_search_whose_bound_rises_fast_enough() -> None:
    clock, budget = _budget("adaptive")
    for t, worst in ((2.0, -1.0), (10.0, -0.8), (14.0, -0.7), (17.0, -0.6), (20.0, -0.5)):  # +0.03/s: reaches 0
        clock.now = t
        budget.record(worst)
    assert not budget.milp_now(100, 0)


def test_the_adaptive_policy_hands_a_stalled_search_to_the_milp() -> None:
    clock, budget = _budget("adaptive")
    for t, worst in ((2.0, -1.0), (10.0, -0.99), (20.0, -0.98)):  # +0.001/s: would end near -0.9
        clock.now = t
        budget.record(worst)
    assert not budget.milp_now(100, 0)  # two batches in the second half: too few to judge by
    for t, worst in ((24.0, -0.979), (27.0, -0.978), (30.0, -0.977)):
        clock.now = t
        budget.record(worst)
    assert budget.milp_now(100, 0)
    clock2, early = _budget("adaptive")
    clock2.now = 5.0
    early.record(-1.0)
    assert not early.milp_now(100, 0)  # before its earliest share the search keeps the time


@pytest.mark.parametrize("budget", ["adaptive", "fixed"])
def test_both_policies_decide_a_property_the_root_bound_leaves_open(budget: str) -> None:
    spec = fully_connected((6,), [48, 48], 5)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(2)).double()
    x = torch.rand(6, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    label = int(forward(spec, theta.view(1, -1), x.view(1, -1))[0, 0].argmax())
    prop = robustness(spec, x, label, 0.1)  # holds (tests/test_verify_deadline.py), and the root bound leaves it open
    verdict = verify_property(spec, theta, prop, VerifyOptions(timeout=60, budget=budget, milp_root_unstable=0))
    assert verdict.status == "verified" and verdict.subdomains > 1
