"""A training job as a list of stages (an optional warm-up, then the main estimator).

The stage list is a pure function of the config: the local trainer and a remote coordinator build
the same stages, estimators, objectives and schedules from the same config.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ScheduleConfig, TrainConfig
from .estimators import Estimator, make_estimator
from .objective import Objective
from .schedules import Schedule, StepHyper


@dataclass(frozen=True)
class Stage:
    name: str
    estimator: Estimator
    objective: Objective
    schedule: Schedule
    epochs: int
    sigma_decay: float = 1.0

    def hyper(self, step_in_stage: int) -> StepHyper:
        return self.schedule.at(step_in_stage, self.sigma_decay)


def objective_for(config: TrainConfig, estimator: str) -> Objective:
    attack = config.pgd
    if estimator == "pgd":
        return Objective("adversarial", pgd_steps=attack.steps, pgd_step_size=attack.step_size,
                         pgd_restarts=attack.restarts)
    if config.relaxation is None:
        return Objective("standard")
    return Objective("certified", config.relaxation, config.relaxation_options())


def build_stages(config: TrainConfig, steps_per_epoch: int) -> list[Stage]:
    stages: list[Stage] = []
    if config.warmup is not None:
        warm = config.warmup
        schedule = ScheduleConfig(epochs=warm.epochs, lr=warm.lr, lr_milestones=[], lr_decay=1.0,
                                  eps_zero_epochs=warm.eps_zero_epochs, eps_ramp_epochs=warm.eps_ramp_epochs,
                                  eps_ramp="linear", grad_clip=config.schedule.grad_clip,
                                  steps_per_epoch=config.schedule.steps_per_epoch)
        estimator = make_estimator(warm.estimator, grad_clip=config.schedule.grad_clip, pgpe=config.pgpe,
                                   rgs=config.rgs)
        objective = objective_for(config.model_copy(update={"relaxation": None}), warm.estimator)
        stages.append(Stage("warmup", estimator, objective, Schedule(schedule, config.eps, steps_per_epoch),
                            warm.epochs))
    main = make_estimator(config.estimator, grad_clip=config.schedule.grad_clip, pgpe=config.pgpe, rgs=config.rgs)
    sigma_decay = config.rgs.sigma_decay if config.estimator == "rgs" else 1.0
    stages.append(Stage("main", main, objective_for(config, config.estimator),
                        Schedule(config.schedule, config.eps, steps_per_epoch), config.schedule.epochs, sigma_decay))
    return stages
