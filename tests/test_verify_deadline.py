"""The per-input time limit is one deadline that every phase of a verification obeys.

Time is a clock injected into ``verify_property`` and moved by the test, so each check is exact
and does not depend on the machine's speed: the clock jumps past the deadline inside one phase
(the untargeted attack, the targeted attack, the root bound's slope steps, the branch and bound,
the MILP) and the test asserts that this phase takes no further step and nothing after it runs.
The slack this leaves in real time (one unit of work) is measured in docs/verification.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

import gls_core.verify.attack as attack_module
import gls_core.verify.bab as bab
import gls_core.verify.subdomains as subdomains
from gls_core import forward, kaiming_uniform
from gls_core.nets import NetSpec, fully_connected
from gls_core.verify import Property, VerifyOptions, robustness, verify_property
from gls_core.verify.deadline import Deadline
from gls_core.verify.milp import LeafAnswer

TIMEOUT = 1.0


class Clock:
    """Seconds that pass only when the test says so (``tick`` per reading, or a jump)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 100.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def _hard(eps: float) -> tuple[NetSpec, torch.Tensor, Property]:
    """A robustness property of a random 6-48-48-5 network that the root bound leaves open.

    At eps 0.1 it holds (the branch and bound proves it), so no attack can falsify it; at 0.12 and
    0.15 the search does not decide it quickly.
    """
    spec = fully_connected((6,), [48, 48], 5)
    theta = kaiming_uniform(spec, torch.Generator().manual_seed(2)).double()
    x = torch.rand(6, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    label = int(forward(spec, theta.view(1, -1), x.view(1, -1))[0, 0].argmax())
    return spec, theta, robustness(spec, x, label, eps)


def _no_milp(*args: Any, **kwargs: Any) -> LeafAnswer:
    raise AssertionError("the MILP ran after the deadline")


@pytest.mark.parametrize("which", ["untargeted", "targeted"])
def test_the_attacks_take_no_step_after_the_deadline(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    spec, theta, prop = _hard(0.1)
    clock = Clock()
    deadline_at = clock.now + TIMEOUT
    calls: list[int] = []  # objective evaluations per PGD run: each attack's diversifying run, then its margin run
    original = attack_module.projected_ascent

    def counted(objective: Callable, *args: Any, **kwargs: Any) -> Any:
        calls.append(0)
        run = len(calls) - 1

        def evaluate(point: torch.Tensor) -> Any:
            calls[run] += 1
            if run == (0 if which == "untargeted" else 2) and calls[run] == 3:
                clock.now = deadline_at + 0.01  # the deadline passes during the third evaluation
            return objective(point)

        return original(evaluate, *args, **kwargs)

    monkeypatch.setattr(attack_module, "projected_ascent", counted)
    monkeypatch.setattr(bab, "solve_row", _no_milp)
    options = VerifyOptions(timeout=TIMEOUT, attack_steps=50, attack_diversify=5)
    verdict = verify_property(spec, theta, prop, options, clock=clock)
    assert (verdict.status, verdict.decided_by) == ("unknown", "timeout")
    if which == "untargeted":
        assert calls == [3] and verdict.subdomains == 0  # no step after it, no margin run, no search
    else:  # the full first attack; the root bound; 3 evaluations of the targeted one's diversifying run
        assert calls == [6, 51, 3] and verdict.subdomains == 1
    assert verdict.seconds == pytest.approx(TIMEOUT + 0.01)


def test_the_root_bound_takes_no_slope_step_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, theta, prop = _hard(0.12)
    clock = Clock()
    polls: list[bool] = []
    original = bab.bound_subdomains

    def counted(*args: Any, should_stop: Callable[[], bool], **kwargs: Any) -> Any:
        def poll() -> bool:
            if len(polls) == 2:
                clock.now += 2 * TIMEOUT  # the deadline passes during the second slope step
            polls.append(should_stop())
            return polls[-1]

        return original(*args, should_stop=poll, **kwargs)

    monkeypatch.setattr(bab, "bound_subdomains", counted)
    monkeypatch.setattr(bab, "solve_row", _no_milp)
    options = VerifyOptions(timeout=TIMEOUT, attack_steps=0, root_alpha_steps=20)
    verdict = verify_property(spec, theta, prop, options, clock=clock)
    assert polls == [False, False, True]  # two steps, then none
    assert (verdict.status, verdict.decided_by, verdict.subdomains) == ("unknown", "timeout", 1)


def test_the_branch_and_bound_bounds_no_batch_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, theta, prop = _hard(0.12)
    clock = Clock()
    batches: list[int] = []
    original = bab.bound_subdomains

    def counted(*args: Any, **kwargs: Any) -> Any:
        bounded = original(*args, **kwargs)
        batches.append(bounded.lower.shape[0])
        if len(batches) == 3:
            clock.now += 2 * TIMEOUT  # the deadline passes while the second batch of children is bounded
        return bounded

    monkeypatch.setattr(bab, "bound_subdomains", counted)
    monkeypatch.setattr(bab, "solve_row", _no_milp)
    options = VerifyOptions(timeout=TIMEOUT, attack_steps=0, milp_below=16, milp_after=1.0)
    verdict = verify_property(spec, theta, prop, options, clock=clock)
    assert len(batches) == 3  # the root and two batches of children, then none (and no small-subdomain MILP)
    assert (verdict.status, verdict.decided_by, verdict.subdomains) == ("unknown", "timeout", sum(batches))


def test_the_last_batches_shrink_to_the_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch cannot be interrupted: near the deadline it takes only as many parents as the last pace allows."""
    spec, theta, prop = _hard(0.12)
    clock = Clock()
    per_child = 0.002
    batches: list[int] = []
    original = bab.bound_subdomains

    def paced(*args: Any, **kwargs: Any) -> Any:
        bounded = original(*args, **kwargs)
        batches.append(bounded.lower.shape[0])
        clock.now += per_child * bounded.lower.shape[0]
        return bounded

    monkeypatch.setattr(bab, "bound_subdomains", paced)
    options = VerifyOptions(timeout=TIMEOUT, attack_steps=0, milp_below=0, milp_after=1.0, batch=8)
    verdict = verify_property(spec, theta, prop, options, clock=clock)
    assert (verdict.status, verdict.decided_by) == ("unknown", "timeout")
    assert max(batches) == 16 and batches[-1] < 16, batches  # full batches, then smaller ones
    assert verdict.seconds <= TIMEOUT + 2 * per_child + 1e-9  # at most one parent (two children) past the deadline


def test_the_milp_gets_the_time_left_and_none_starts_after_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    spec, theta, prop = _hard(0.15)
    clock = Clock()
    original = bab.bound_subdomains

    def root_takes_a_quarter(*args: Any, **kwargs: Any) -> Any:
        clock.now += 0.25 * TIMEOUT
        return original(*args, **kwargs)

    limits: list[float] = []

    def solver(*args: Any) -> LeafAnswer:
        limits.append(args[-1])
        clock.now += TIMEOUT  # the first row's MILP uses its whole limit
        return LeafAnswer("unknown", -1.0, None)

    monkeypatch.setattr(bab, "bound_subdomains", root_takes_a_quarter)
    monkeypatch.setattr(bab, "solve_row", solver)
    options = VerifyOptions(timeout=TIMEOUT, attack_steps=0, milp_below=0, milp_after=0.1, budget="fixed")
    verdict = verify_property(spec, theta, prop, options, clock=clock)
    root = original(spec, theta, prop, subdomains.no_splits(spec), "alpha-crown", options.root_alpha_steps)
    assert int((root.lower[0] <= 0).sum()) >= 2  # two open rows: the second one's MILP never starts
    assert limits == [pytest.approx(0.75 * TIMEOUT)]  # the whole-region MILP: the time left after the root bound
    assert (verdict.status, verdict.decided_by) == ("unknown", "timeout")


def test_a_hard_input_ends_within_a_few_clock_readings_of_its_deadline() -> None:
    """Every phase reads the clock; with each reading worth 10 ms none may run on after the deadline."""
    spec, theta, prop = _hard(0.12)
    clock = Clock(tick=0.01)
    verdict = verify_property(spec, theta, prop, VerifyOptions(timeout=TIMEOUT), clock=clock)
    assert (verdict.status, verdict.decided_by) == ("unknown", "timeout")
    assert TIMEOUT <= verdict.seconds <= TIMEOUT + 0.05


def test_the_deadline_counts_from_its_start_on_its_clock() -> None:
    clock = Clock()
    deadline = Deadline.start(2.0, clock)
    assert deadline.remaining() == 2.0 and not deadline.passed() and not deadline.share_passed(0.5)
    clock.now += 1.5
    assert deadline.remaining() == 0.5 and deadline.share_passed(0.5) and deadline.elapsed() == 1.5
    clock.now += 0.5
    assert deadline.passed()


def test_a_cancelled_search_is_not_a_timeout() -> None:
    spec, theta, prop = _hard(0.12)
    verdict = verify_property(spec, theta, prop, dataclasses.replace(VerifyOptions(timeout=TIMEOUT), attack_steps=0),
                              should_stop=lambda: True, clock=Clock())
    assert (verdict.status, verdict.decided_by) == ("unknown", "cancelled")
