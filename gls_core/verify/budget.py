"""When the whole-region MILP takes over from the branch and bound: by what the search achieves, not a fixed share.

The branch and bound and one exact MILP over the whole region are two ways to spend the same time.
The MILP is worth its time when it is small (few unstable ReLUs at the root: HiGHS decides it in a
fraction of a second) or when the search has stalled. The search is judged by its worst open bound
(the lowest subdomain bound, which a proof must lift above 0): over the second half of the time
spent so far it rose at some rate, and if that rate would not lift it to 0 in the time left, the
search hands over. Before ``earliest`` (a share of the limit), and until the second half of the
time spent holds a few batches, the search keeps the time, so the rate is measured on batches that
are full or nearly; ``policy="fixed"`` hands over at ``earliest`` whatever
the progress (the behaviour before this module).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .deadline import Deadline

POLICIES = ("adaptive", "fixed")
JUDGED_BATCHES = 4
"""Batches the second half of the time must hold before the search's rate is judged."""


@dataclass
class Budget:
    """Records the search's worst bound over time and says when the whole-region MILP should take over."""

    deadline: Deadline
    policy: str = "adaptive"
    earliest: float = 0.1  # share of the limit before which the search keeps the time
    times: list[float] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)

    def record(self, worst: float) -> None:
        """The worst open bound after a batch."""
        self.times.append(self.deadline.elapsed())
        self.bounds.append(worst)

    def milp_now(self, root_unstable: int, small: int, large: int | None = None) -> bool:
        """Whether to hand the open subdomains to one MILP over the whole region now.

        Never with more than ``large`` unstable ReLUs at the root: HiGHS does not read its time limit
        while it presolves such a program (989 unstable ReLUs of mnist-net_256x6: 42 s against a 5 s
        limit), so it would overrun the deadline and decide nothing.
        """
        if root_unstable <= small:
            return True
        if large is not None and root_unstable > large:
            return False
        if not self.deadline.share_passed(self.earliest):
            return False
        if self.policy == "fixed" or len(self.times) < 2:
            return self.policy == "fixed"
        now, worst = self.times[-1], self.bounds[-1]
        then = bisect.bisect_left(self.times, now / 2)
        if len(self.times) - then < JUDGED_BATCHES:
            return False  # too few batches in the second half (the first ones hold 1, 2, 4 parents): no rate yet
        rate = (worst - self.bounds[then]) / max(now - self.times[then], 1e-9)
        return worst + rate * self.deadline.remaining() < 0
