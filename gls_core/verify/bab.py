"""Complete verification: attack, bound, branch on unstable ReLUs, decide the leaves exactly.

For one property the procedure is: a PGD attack on the property rows (a counterexample ends it);
alpha-CROWN bounds of the whole region; then, while some subdomain is undecided and time is left,
the worst subdomains (lowest bound) are split on one unstable ReLU each and all their children are
bounded in one batched call. A subdomain with few unstable ReLUs left goes to the exact MILP
(``milp.py``), which either proves it or returns an input that is checked by a plain forward pass.
``verified`` therefore means every subdomain was proven; ``falsified`` always carries a checked
counterexample; ``unknown`` means the time ran out (or a solver answer could not be confirmed).

The time limit is one :class:`~.deadline.Deadline` per property that every phase reads before each
unit of work it cannot interrupt: a PGD step, a slope step of a bound, a batch of subdomains (its
branching and its DeepPoly walk), one MILP (which gets the remaining time as HiGHS's time limit).
A property therefore ends at most one such unit after its deadline (docs/verification.md).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..bounds import kernels
from ..bounds.types import Box
from ..nets.spec import NetSpec
from ..relaxations import ALPHA_CROWN
from .attack import attack, checked
from .branching import BRANCHING, DEFAULT_BRANCHING, Choice, Problem
from .budget import POLICIES, Budget
from .deadline import Clock, Deadline
from .milp import AffineBlock, affine_blocks, solve_row
from .property import Property, robustness
from .subdomains import BOUND_METHODS, PRECISIONS, Bounded, Splits, bound_subdomains, no_splits

Status = Literal["verified", "falsified", "unknown"]
INTERMEDIATE = ("parent", "walk")


@dataclass(frozen=True)
class VerifyOptions:
    """How hard to try. ``timeout`` is per property, attacks and MILP included (see :mod:`.deadline`)."""

    timeout: float = 30.0
    method: str = ALPHA_CROWN  # bounds of each subdomain: one of subdomains.BOUND_METHODS
    root_alpha_steps: int = 20
    alpha_steps: int = 8
    batch: int = 64  # subdomains split per bounding call (each gives two children)
    branching: str = DEFAULT_BRANCHING
    milp_below: int = 16  # a subdomain with at most this many unstable ReLUs is decided by the MILP
    milp_after: float = 0.1  # share of the timeout before which the search keeps the time (budget.py)
    budget: str = "adaptive"  # "adaptive": the whole-region MILP when the search stalls; "fixed": at milp_after
    milp_root_unstable: int = 32  # at most this many unstable ReLUs at the root: the whole-region MILP at once
    milp_max_unstable: int = 400  # more than this many at the root: never the whole-region MILP (budget.py)
    attack_steps: int = 50
    attack_restarts: int = 32  # the first (untargeted) attack's restarts, one batch: 32 cost about what 8 do
    targeted_restarts: int = 8  # per group the root bound leaves open, all groups in one batch
    attack_diversify: int = 5  # output-diversified steps before each attack's PGD steps
    search_attacks: float = 0.2  # share of the limit between attacks during the search (0: none)
    max_subdomains: int = 100_000  # queue length at which the search gives up (memory)
    intermediate: str = "parent"  # a child's ReLU input bounds: its parent's with the split ("parent") or a new walk
    precision: str = "float32"  # of the subdomain bounds (the search, MILP and checks are float64): subdomains.py

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.method not in BOUND_METHODS:
            raise ValueError(f"method must be one of {BOUND_METHODS}, got {self.method!r}")
        if self.branching not in BRANCHING:
            raise ValueError(f"branching must be one of {sorted(BRANCHING)}, got {self.branching!r}")
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {INTERMEDIATE}, got {self.intermediate!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.budget not in POLICIES:
            raise ValueError(f"budget must be one of {POLICIES}, got {self.budget!r}")
        if not 0 <= self.search_attacks <= 1:
            raise ValueError(f"search_attacks must lie in [0, 1], got {self.search_attacks}")
        if not 0 <= self.milp_after <= 1:
            raise ValueError(f"milp_after must lie in [0, 1], got {self.milp_after}")
        for name in ("root_alpha_steps", "alpha_steps", "milp_below", "attack_steps", "attack_diversify",
                     "milp_root_unstable", "milp_max_unstable"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch", "attack_restarts", "targeted_restarts", "max_subdomains"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Verdict:
    """The answer for one property, with what it cost."""

    status: Status
    seconds: float
    subdomains: int  # subdomains bounded (the root included)
    bound: float  # verified: the smallest proven row minimum; otherwise the best lower bound left
    decided_by: str  # "attack", "bounds", "branch-and-bound", "milp", "timeout", "subdomain-limit", "unconfirmed"
    counterexample: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 4), "subdomains": self.subdomains,
                               "bound": self.bound if math.isfinite(self.bound) else None,
                               "decided_by": self.decided_by}
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample.reshape(-1).tolist()
        return out


@dataclass(order=True)
class _Domain:
    priority: float  # the subdomain's lowest row bound: the worst is split first
    order: int
    splits: dict[int, torch.Tensor] = field(compare=False)  # per ReLU layer: [*shape] int8
    pre_relu: dict[int, Box] = field(compare=False)
    lower: torch.Tensor = field(compare=False)  # [K]


def _unstable_count(pre_relu: dict[int, Box]) -> int:
    return sum(int(((b.lower < 0) & (b.upper > 0)).sum()) for b in pre_relu.values())


class _Search:
    """The branch and bound over one property."""

    def __init__(self, spec: NetSpec, theta: torch.Tensor, prop: Property, options: VerifyOptions,
                 deadline: Deadline, generator: torch.Generator | None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.spec, self.theta, self.prop, self.options = spec, theta, prop, options
        self.generator = generator
        self.should_stop = should_stop or (lambda: False)
        self.root: dict[int, Box] = {}
        self.deadline = deadline
        self.queue: list[_Domain] = []
        self.counter = itertools.count()
        self.bounded = 0
        self.proven = math.inf  # smallest proven row minimum over closed subdomains
        self.unconfirmed = False
        self.blocks: dict[int, AffineBlock] | None = None
        self.problem = Problem(spec, theta, prop)
        self.open_bound = -math.inf  # the best bound of the subdomains handed to the whole-region MILP
        self.per_parent = 0.0  # seconds the last batch took per parent (branching and bounding)
        self.budget = Budget(deadline, options.budget, options.milp_after)
        self.root_unstable = 0
        self.last_attack = 0.0  # elapsed seconds at the end of the last attack

    def verdict(self, status: Status, decided_by: str, counterexample: torch.Tensor | None = None) -> Verdict:
        bound = self.proven if status == "verified" else min((d.priority for d in self.queue),
                                                             default=self.open_bound)
        return Verdict(status, self.deadline.elapsed(), self.bounded, bound, decided_by, counterexample)

    def _undecided(self) -> Verdict:
        """``unknown`` once the search has to stop: the deadline, or a caller that has gone."""
        return self.verdict("unknown", "timeout" if self.deadline.passed() else "cancelled")

    def run(self) -> Verdict:
        if self._out_of_time():
            return self._undecided()
        root_splits = no_splits(self.spec)
        root = bound_subdomains(self.spec, self.theta, self.prop, root_splits, self.options.method,
                                self.options.root_alpha_steps, should_stop=self._out_of_time,
                                precision=self.options.precision)
        self.bounded = 1
        undecided = (self.prop.margins(root.lower[0]) <= 0).nonzero().view(-1).tolist()
        if undecided and self.options.attack_steps > 0 and not self._out_of_time():
            found = attack(self.spec, self.theta, self.prop, self.options.attack_steps,
                           self.options.targeted_restarts, self.generator, undecided, should_stop=self._out_of_time,
                           diversify=self.options.attack_diversify)
            if found is not None:
                return self.verdict("falsified", "attack", found)
        self.root = {index: Box(b.lower[0], b.upper[0]) for index, b in root.pre_relu.items()}
        self.root_unstable = _unstable_count(self.root)
        self.last_attack = self.deadline.elapsed()
        found = self._settle(root, [{i: s[0] for i, s in root_splits.items()}])
        if found is not None:
            return self.verdict("falsified", "branch-and-bound", found)
        if not self.queue and not self.unconfirmed:
            return self.verdict("verified", "bounds" if self.bounded == 1 else "branch-and-bound")
        while self.queue:
            if self._out_of_time():
                return self._undecided()
            if self.budget.milp_now(self.root_unstable, self.options.milp_root_unstable,
                                    self.options.milp_max_unstable):
                return self._whole_milp()
            if len(self.queue) > self.options.max_subdomains:
                return self.verdict("unknown", "subdomain-limit")
            parents = [heapq.heappop(self.queue) for _ in range(min(self._batch_size(), len(self.queue)))]
            began = self.deadline.clock()
            choices = BRANCHING[self.options.branching](parents, self.problem)
            splits, children = self._children(parents, choices)
            inherited = None if self.options.intermediate == "walk" else {
                index: Box(torch.stack([p.pre_relu[index].lower for p in parents]).repeat_interleave(2, 0),
                           torch.stack([p.pre_relu[index].upper for p in parents]).repeat_interleave(2, 0))
                for index in parents[0].pre_relu}
            bounded = bound_subdomains(self.spec, self.theta, self.prop, splits, self.options.method,
                                       self.options.alpha_steps, should_stop=self._out_of_time, parents=inherited,
                                       precision=self.options.precision)
            self.per_parent = (self.deadline.clock() - began) / len(parents)
            self.bounded += len(children)
            found = self._settle(bounded, children)
            if found is not None:
                return self.verdict("falsified", "branch-and-bound", found)
            if self.queue:
                self.budget.record(self.queue[0].priority)
            found = self._attack_worst()
            if found is not None:
                return self.verdict("falsified", "attack", found)
        if self.unconfirmed:
            return self._undecided() if self._out_of_time() else self.verdict("unknown", "unconfirmed")
        return self.verdict("verified", "branch-and-bound")

    def _attack_worst(self) -> torch.Tensor | None:
        """Every ``search_attacks`` of the limit, a targeted attack with fresh restarts on the groups that the worst
        open subdomain leaves open: the search points at the groups most likely to fail. A checked point or None."""
        every = self.options.search_attacks
        if (not self.queue or every <= 0 or self.options.attack_steps == 0 or self._out_of_time()
                or self.deadline.elapsed() - self.last_attack < every * self.deadline.seconds):
            return None
        found = attack(self.spec, self.theta, self.prop, self.options.attack_steps, self.options.targeted_restarts,
                       self.generator, self._open_groups(self.queue[0].lower), should_stop=self._out_of_time,
                       diversify=self.options.attack_diversify)
        self.last_attack = self.deadline.elapsed()
        return found

    def _batch_size(self) -> int:
        """``options.batch``, or fewer parents when the last batch's pace says a full one would overrun the deadline.

        A batch's branching and DeepPoly walk cannot be interrupted (only its slope steps can), so near the
        deadline the batch shrinks to what the time left allows, at least one parent.
        """
        if self.per_parent <= 0:
            return self.options.batch
        return max(1, min(self.options.batch, int(self.deadline.remaining() / self.per_parent)))

    def _out_of_time(self) -> bool:
        """Polled before each unit of work (PGD step, slope step, batch, MILP): the deadline, or a gone caller."""
        return self.deadline.passed() or self.should_stop()

    def _whole_milp(self) -> Verdict:
        """The search did not finish in its share of the time: one exact MILP over the whole region decides."""
        groups = sorted({group for domain in self.queue for group in self._open_groups(domain.lower)})
        self.open_bound = min(domain.priority for domain in self.queue)  # what an unknown verdict reports
        self.queue.clear()
        self.unconfirmed = False
        found = self._exact(self.root, groups)
        if found is not None:
            return self.verdict("falsified", "milp", found)
        if self.unconfirmed:
            return self._undecided() if self._out_of_time() else self.verdict("unknown", "unconfirmed")
        return self.verdict("verified", "milp")

    def _children(self, parents: list[_Domain], choices: list[Choice]) -> tuple[Splits, list[dict[int, torch.Tensor]]]:
        children: list[dict[int, torch.Tensor]] = []
        for parent, (layer, neuron) in zip(parents, choices):
            for sign in (1, -1):
                child = {i: s.clone() for i, s in parent.splits.items()}
                child[layer].view(-1)[neuron] = sign
                children.append(child)
        stacked = {i: torch.stack([c[i] for c in children]) for i in children[0]}
        return stacked, children

    def _settle(self, bounded: Bounded, splits: list[dict[int, torch.Tensor]]) -> torch.Tensor | None:
        """Close proven subdomains, decide small ones exactly, queue the rest; a checked counterexample or None."""
        margins = self.prop.margins(bounded.lower)
        for i, domain_splits in enumerate(splits):
            lower = bounded.lower[i]
            if bool((margins[i] > 0).all()):
                self.proven = min(self.proven, float(margins[i].min()))
                continue
            pre_relu = {index: Box(b.lower[i], b.upper[i]) for index, b in bounded.pre_relu.items()}
            if _unstable_count(pre_relu) <= self.options.milp_below and not self._out_of_time():
                found = self._exact(pre_relu, self._open_groups(lower))
                if found is not None:
                    return found
                continue
            heapq.heappush(self.queue, _Domain(float(margins[i].min()), next(self.counter), domain_splits, pre_relu,
                                               lower))
        return None

    def _open_groups(self, lower: torch.Tensor) -> list[int]:
        """The groups of the property whose margin a subdomain's row bounds ``lower`` [K] leave at or below 0."""
        return (self.prop.margins(lower) <= 0).nonzero().view(-1).tolist()

    def _exact(self, pre_relu: dict[int, Box], groups: list[int]) -> torch.Tensor | None:
        """Decide ``groups`` on one subdomain by MILP; a checked counterexample, or None (proven or unconfirmed).

        Each group's MILP gets the time left as HiGHS's time limit; a group reached after the deadline is not
        started (the subdomain stays unconfirmed).
        """
        for group in groups:
            if self._out_of_time():
                self.unconfirmed = True
                return None
            if self.blocks is None:
                self.blocks = affine_blocks(self.spec, self.theta)
            remaining = self.deadline.remaining()
            rows = self.prop.group_rows(group)
            answer = solve_row(self.spec, self.blocks, self.prop.lower, self.prop.upper, pre_relu,
                               self.prop.C[rows], self.prop.d[rows], remaining)
            if answer.status == "verified":
                self.proven = min(self.proven, answer.value)
                continue
            if answer.point is not None:
                found = checked(self.spec, self.theta.to(self.prop.lower.dtype), self.prop, answer.point.unsqueeze(0))
                if found is not None:
                    return found
            self.unconfirmed = True  # the solver's answer could not be confirmed, or it ran out of time
        return None


def verify_property(spec: NetSpec, theta: torch.Tensor, prop: Property, options: VerifyOptions | None = None,
                    generator: torch.Generator | None = None,
                    should_stop: Callable[[], bool] | None = None, clock: Clock = time.monotonic) -> Verdict:
    """Decide one property: ``verified``, ``falsified`` (with a checked counterexample) or ``unknown``.

    ``should_stop`` is polled with the deadline, before each unit of work (a cancelled call answers
    ``unknown``). ``clock`` (seconds, ``time.monotonic`` by default) is what the deadline is read on.
    """
    options = options or VerifyOptions()
    deadline = Deadline.start(options.timeout, clock)
    theta = theta.detach()
    if theta.shape != (spec.num_params,):
        raise ValueError(f"theta must have shape ({spec.num_params},), got {tuple(theta.shape)}")
    if prop.C.shape[1] != spec.num_outputs:
        raise ValueError(f"property rows have {prop.C.shape[1]} columns, the network has {spec.num_outputs} outputs")
    with kernels.untimed():  # the batch of subdomains changes size every call: timing each size costs seconds
        if options.attack_steps > 0:
            found = attack(spec, theta, prop, options.attack_steps, options.attack_restarts, generator,
                           should_stop=lambda: deadline.passed() or bool(should_stop and should_stop()),
                           diversify=options.attack_diversify)
            if found is not None:
                return Verdict("falsified", deadline.elapsed(), 0, -math.inf, "attack", found)
        return _Search(spec, theta, prop, options, deadline, generator, should_stop).run()


def verify_cases(spec: NetSpec, theta: torch.Tensor, cases: list[Property], options: VerifyOptions | None = None,
                 generator: torch.Generator | None = None, clock: Clock = time.monotonic) -> Verdict:
    """Decide properties that must all hold (a VNN-LIB file with several input boxes) within one time limit.

    Each is given the time the others left; the first counterexample decides, and ``verified`` needs
    every one verified. Subdomain counts add up.
    """
    options = options or VerifyOptions()
    deadline = Deadline.start(options.timeout, clock)
    verdicts: list[Verdict] = []
    for prop in cases:
        remaining = deadline.remaining()
        if remaining <= 0:
            break
        verdict = verify_property(spec, theta, prop, dataclasses.replace(options, timeout=remaining), generator,
                                  clock=clock)
        verdicts.append(verdict)
        if verdict.status != "verified":
            break
    subdomains = sum(v.subdomains for v in verdicts)
    last = verdicts[-1] if verdicts else None
    if last is not None and (last.status == "falsified" or len(verdicts) == len(cases)
                             and all(v.status == "verified" for v in verdicts)):
        bound = min(v.bound for v in verdicts)
        return Verdict(last.status, deadline.elapsed(), subdomains, bound, last.decided_by, last.counterexample)
    decided_by = last.decided_by if last is not None and last.status == "unknown" else "timeout"
    return Verdict("unknown", deadline.elapsed(), subdomains, -math.inf if last is None else last.bound, decided_by)


def verify_each(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
                options: VerifyOptions | None = None, seed: int = 0,
                should_stop: Callable[[], bool] | None = None) -> Iterator[Verdict]:
    """Verdicts on L_inf robustness of each input (x [B, ...], y [B]), yielded as decided.

    ``eps`` is one radius or one per input [B]. Input i's attacks draw from a generator seeded with
    ``seed + i``, so a verdict does not depend on which other inputs share the call. The search runs
    in float64 on the CPU, where the MILP leaves are solved anyway; subdomains are bounded in
    ``options.precision`` (float32 by default, widened back to float64: see :mod:`.subdomains`).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} inputs but y has {y.shape[0]} labels")
    theta = theta.detach().double().cpu()
    for i in range(x.shape[0]):
        radius = float(eps[i]) if isinstance(eps, torch.Tensor) and eps.dim() > 0 else float(eps)
        prop = robustness(spec, x[i].detach().double().cpu(), int(y[i]), radius)
        yield verify_property(spec, theta, prop, options, torch.Generator().manual_seed(seed + i), should_stop)


def verify(spec: NetSpec, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
           options: VerifyOptions | None = None, seed: int = 0) -> list[Verdict]:
    """Complete verification of L_inf robustness at radius eps for each input of a batch (x [B, ...], y [B])."""
    return list(verify_each(spec, theta, x, y, eps, options, seed))
