"""Rate and remaining time of work done in stages whose steps cost differently (a PGD warm-up, then PGPE).

The rate is the current stage's own: the steps of that stage done in the last ``window_s`` seconds
(at least its latest step), so fast warm-up steps never make the main stage look fast, and a stage
that slows down (a loaded machine, a larger eps) shows within one window. The remaining time is
the current stage's remaining steps at that rate, plus the later stages' steps at the same rate:
a stage that has not started has no timing of its own, so the estimate names those stages
(:attr:`Estimate.untimed`) and whoever shows it says that they were counted at the current rate.
Times come from the caller (``observe(completed, now)``), so the arithmetic is tested without a clock.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

DEFAULT_WINDOW_S = 60.0


@dataclass(frozen=True)
class Estimate:
    """``rate`` (steps/s of ``stage``, recently) and the ``seconds`` left; ``untimed``: later stages, at that rate."""

    stage: str
    rate: float
    seconds: float
    untimed: tuple[str, ...]


class StageRates:
    """The recent rate of the current stage and the time left, from ``observe(completed, now)`` calls.

    ``stages`` are (name, steps) in the order they run; empty when the total is unknown (a rate,
    no estimate). ``completed`` steps are done when observing starts, at time ``now``.
    """

    def __init__(self, stages: Sequence[tuple[str, int]], completed: int, now: float,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self.plan(stages)
        self._stage = self.stage_of(completed)
        self._samples: deque[tuple[int, float]] = deque([(completed, now)])

    def plan(self, stages: Sequence[tuple[str, int]]) -> None:
        """Set (or change, when the total becomes known) the stages and their steps."""
        self.names = [name for name, _ in stages]
        self.ends = list(accumulate(steps for _, steps in stages))

    def stage_of(self, completed: int) -> int:
        """The stage of step number ``completed`` (counted from 1; 0 steps done is the first stage's start)."""
        if not self.ends:
            return 0
        return min(bisect.bisect_left(self.ends, max(completed, 1)), len(self.ends) - 1)

    def observe(self, completed: int, now: float) -> None:
        """``completed`` steps are done at time ``now``."""
        if completed == self._samples[-1][0]:
            return
        stage = self.stage_of(completed)
        if stage != self._stage:  # a new stage is timed from the end of the previous one's last step seen
            self._samples = deque([self._samples[-1]])
            self._stage = stage
        self._samples.append((completed, now))
        while len(self._samples) > 2 and now - self._samples[1][1] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Steps per second of the current stage over the window; None before its first step is done."""
        (first_step, first_time), (last_step, last_time) = self._samples[0], self._samples[-1]
        if last_step <= first_step or last_time <= first_time:
            return None
        return (last_step - first_step) / (last_time - first_time)

    def estimate(self) -> Estimate | None:
        """The time left; None while the total is unknown or the current stage has no step timed yet."""
        rate = self.rate()
        if rate is None or not self.ends:
            return None
        completed = self._samples[-1][0]
        untimed = tuple(self.names[index] for index in range(self._stage + 1, len(self.ends))
                        if self.ends[index] > self.ends[index - 1])
        return Estimate(self.names[self._stage], rate, max(self.ends[-1] - completed, 0) / rate, untimed)
