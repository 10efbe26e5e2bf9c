"""Per-step hyper-parameters (App. E): eps annealing, learning-rate step decay, RGS sigma decay.

Schedules are pure functions of the step, so a resumed run or a remote coordinator computes the same
values as an uninterrupted in-process run.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from .config import ScheduleConfig

SMOOTH_MID_POINT = 0.25  # Shi et al. (2021): polynomial growth over the first quarter, then linear
SMOOTH_BETA = 4.0


@dataclass(frozen=True)
class StepHyper:
    """What one step needs from the schedule."""

    lr: float
    eps: float
    sigma_scale: float  # multiplies the RGS sigma (decays with the learning rate)


def smooth_ramp(step: float, start: float, length: float, final: float) -> float:
    """Shi et al.'s eps schedule: 0 until ``start``, exponential-like growth, then linear to ``final``.

    The two pieces meet with equal slope at the mid point, so eps has no kink.
    """
    if length <= 0 or step >= start + length:
        return final if step >= start else 0.0
    if step <= start:
        return 0.0
    mid = start + length * SMOOTH_MID_POINT
    end = start + length
    t = (mid - start) ** (SMOOTH_BETA - 1)
    alpha = final / ((end - mid) * SMOOTH_BETA * t + (mid - start) * t)
    if step < mid:
        return alpha * (step - start) ** SMOOTH_BETA
    mid_value = alpha * (mid - start) ** SMOOTH_BETA
    return mid_value + (final - mid_value) * (step - mid) / (end - mid)


def linear_ramp(step: float, start: float, length: float, final: float) -> float:
    if step < start:
        return 0.0
    if length <= 0 or step >= start + length:
        return final
    return final * (step - start) / length


@dataclass(frozen=True)
class Schedule:
    """The schedule of one training stage, in steps from the stage's start."""

    config: ScheduleConfig
    eps: float
    steps_per_epoch: int
    anneal_eps: bool = True

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def eps_at(self, step: int) -> float:
        if not self.anneal_eps:
            return self.eps
        start = self.config.eps_zero_epochs * self.steps_per_epoch
        length = self.config.eps_ramp_epochs * self.steps_per_epoch
        ramp = smooth_ramp if self.config.eps_ramp == "smooth" else linear_ramp
        return ramp(step, start, length, self.eps)

    def decays_at(self, step: int) -> int:
        """How many learning-rate milestones have passed: milestones are epochs after which to decay."""
        return bisect_right(self.config.lr_milestones, self.epoch_of(step))

    def at(self, step: int, sigma_decay: float = 1.0) -> StepHyper:
        decays = self.decays_at(step)
        return StepHyper(lr=self.config.lr * self.config.lr_decay**decays, eps=self.eps_at(step),
                         sigma_scale=sigma_decay**decays)
