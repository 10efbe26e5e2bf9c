"""One per-input time limit that every phase of a verification reads.

The attacks, the root bound, the branching, the subdomain bounds and the MILP all ask the same
:class:`Deadline` how much time is left (``remaining = at - clock()``) before each unit of work
they cannot interrupt: a PGD step, a slope step, a batch of subdomains, one MILP (which gets the
remaining time as HiGHS's ``time_limit``). The clock is injectable, so tests can move time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Deadline:
    """``seconds`` after ``started`` on ``clock`` (``time.monotonic`` unless a test injects one)."""

    started: float
    seconds: float
    clock: Clock = time.monotonic

    @classmethod
    def start(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock(), seconds, clock)

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def remaining(self) -> float:
        """Seconds left (negative once past)."""
        return self.at - self.clock()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def share_passed(self, share: float) -> bool:
        """Whether ``share`` of the limit (0..1) has gone by."""
        return self.clock() > self.started + share * self.seconds
