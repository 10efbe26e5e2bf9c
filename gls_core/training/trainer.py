"""The in-process trainer: propose -> evaluate -> update, with schedules, evaluation and checkpoints.

Every random draw is keyed by the job seed and the global step, batches by (seed, epoch), so a run
resumed from any checkpoint ends bit-identical to an uninterrupted one (same seed, same device).
Kernel choices are fixed for the run the same way: its first step chooses them as this process is
configured (timed, as deployed) and records them; the plan is committed with every checkpoint and
every later step and evaluation follows it, in this process, after a resume, or on any worker.
The coordinator service drives the same :func:`run_step` with evaluation spread over workers.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bounds import KernelPlan, using_plan
from ..data import Dataset, batch_generator, epoch_batches, load_dataset
from ..errors import Interrupted
from ..evaluation import EvalResult, evaluate
from ..nets.spec import NetSpec
from ..nets.zoo import DATASETS, network
from .checkpoint import Position, load_model
from .config import TrainConfig
from .estimators import Evaluated, Proposal, State
from .init import initial_weights
from .noise import generator
from .objective import Objective
from .points import evaluate_members
from .stages import Stage, build_stages
from .storage import DirectoryStorage, RunStorage

Evaluator = Callable[[Proposal, Objective, torch.Tensor, torch.Tensor, float, KernelPlan | None], Evaluated]
"""(proposal, objective, x, y, eps, kernel plan): follows the plan, or with None makes it (the kernels chosen as
configured, timed) and returns it in ``Evaluated.kernel_plan``."""
# (step, total steps, row): called with every step row and every evaluation ("epoch") row.
ProgressFn = Callable[[int, int, dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class TrainData:
    train: Dataset
    test: Dataset
    warnings: tuple[str, ...] = ()


def load_data(config: TrainConfig) -> TrainData:
    """Train and test sets; a subset larger than the set means the whole set."""
    data = config.data
    root = data.data_dir
    if data.dataset == "file" and data.path is None:
        raise ValueError("data.dataset_id names a dataset stored in the services; in process, give data.path")
    if data.dataset == "file":
        classes = DATASETS[config.zoo_dataset][1]  # a label outside the network's outputs is named with its index
        train = load_dataset("file", "train", root, path=data.path, num_classes=classes)
        test = load_dataset("file", "test", root, path=data.test_path or data.path, num_classes=classes)
    else:
        train = load_dataset(data.dataset, "train", root)
        test = load_dataset(data.dataset, "test", root)
    warnings = tuple(line for line in (_larger_than_data("data.train_subset", data.train_subset, train),
                                       _larger_than_data("data.test_subset", data.test_subset, test)) if line)
    return TrainData(first_examples(train, data.train_subset), first_examples(test, data.test_subset), warnings)


def _larger_than_data(field: str, count: int | None, dataset: Dataset) -> str | None:
    if count is None or count <= len(dataset):
        return None
    return f"{field}: {count} is more than the {len(dataset)} examples of {dataset.name}; using all {len(dataset)}"


def first_examples(dataset: Dataset, count: int | None) -> Dataset:
    if count is None or count >= len(dataset):
        return dataset
    return dataclasses.replace(dataset, x=dataset.x[:count], y=dataset.y[:count])


def spec_for(config: TrainConfig, data: TrainData) -> NetSpec:
    spec = network(config.model.arch, config.zoo_dataset)
    for part in (data.train, data.test):
        part.check_fits(spec.name, spec.input_shape, spec.num_outputs)
    return spec


def starting_weights(config: TrainConfig, spec: NetSpec) -> torch.Tensor:
    if config.model.checkpoint_id is not None:
        raise ValueError("model.checkpoint_id names a model stored in the services; in process, give model.checkpoint")
    if config.model.checkpoint is not None:
        loaded, theta, _ = load_model(config.model.checkpoint)
        if loaded.name != spec.name:
            raise ValueError(f"model.checkpoint holds {loaded.name}, the config trains {spec.name}")
        return theta
    scheme = config.warmup.init if config.warmup is not None else config.model.init
    return initial_weights(spec, scheme, generator(config.seed, "init"))


def local_evaluator(spec: NetSpec, seed: int, block: int) -> Evaluator:
    """Evaluate a proposal in this process, block by block as the bound workers would."""

    def run(proposal: Proposal, objective: Objective, x: torch.Tensor, y: torch.Tensor, eps: float,
            kernel_plan: KernelPlan | None) -> Evaluated:
        with using_plan(kernel_plan) as followed:
            evaluated = evaluate_members(spec, proposal, objective, x, y, eps, seed, block)
        return dataclasses.replace(evaluated, kernel_plan=followed)

    return run


def training_batch(config: TrainConfig, train: Dataset, epoch: int, batch: int, indices: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    return train.batch(indices, batch_generator(config.seed, epoch, batch) if config.data.augment else None)


def steps_per_epoch(config: TrainConfig, train_size: int) -> int:
    full = len(epoch_batches(train_size, config.data.batch_size, config.seed, 0, drop_last=True)) or 1
    cap = config.schedule.steps_per_epoch
    return min(full, cap) if cap else full


def run_step(stage: Stage, state: State, step: int, step_in_stage: int, seed: int, x: torch.Tensor,
             y: torch.Tensor, evaluator: Evaluator, kernel_plan: KernelPlan | None = None
             ) -> tuple[State, dict[str, float], KernelPlan]:
    """One estimator step following ``kernel_plan`` (None: the step makes it); returns the new state, the
    step's metrics and the kernel plan followed or made."""
    hyper = stage.hyper(step_in_stage)
    proposal = stage.estimator.propose(state, step, seed, hyper)
    evaluated = evaluator(proposal, stage.objective, x, y, hyper.eps, kernel_plan)
    new_state = stage.estimator.update(state, proposal, evaluated, hyper)
    metrics = {"loss": float(evaluated.losses.mean()), "lr": hyper.lr, "eps": hyper.eps,
               **stage.estimator.metrics(new_state, hyper)}
    followed = kernel_plan if kernel_plan is not None else evaluated.kernel_plan
    return new_state, metrics, {} if followed is None else followed


@dataclass
class TrainResult:
    theta: torch.Tensor
    position: Position
    final: EvalResult | None


class Trainer:
    """Runs a config to completion in ``run_dir``, resuming from its checkpoint when asked."""

    def __init__(self, config: TrainConfig, run_dir: str | Path | RunStorage, *, data: TrainData | None = None,
                 evaluator: Evaluator | None = None, progress: ProgressFn | None = None,
                 commit_every: int | None = None, initial_theta: torch.Tensor | None = None) -> None:
        self.config = config
        self.storage = DirectoryStorage(run_dir, config) if isinstance(run_dir, str | Path) else run_dir
        self.commit_every = commit_every or config.checkpoint_every_steps
        self.initial_theta = initial_theta
        self.device = resolve_device(config.device)
        self.data = data or load_data(config)
        self.spec = spec_for(config, self.data)
        self.steps_per_epoch = steps_per_epoch(config, len(self.data.train))
        self.stages = build_stages(config, self.steps_per_epoch)
        self.evaluator = evaluator or local_evaluator(self.spec, config.seed, config.block_members)
        self.progress = progress
        self.last_eval: EvalResult | None = None
        self.kernel_plan: KernelPlan | None = None  # made by the run's first step, then followed
        self.total_steps = sum(stage.epochs for stage in self.stages) * self.steps_per_epoch

    def _eval_row(self, theta: torch.Tensor, stage: str, epoch: int, step: int) -> dict[str, Any]:
        result = self.last_eval = self.evaluate(theta)
        return {"kind": "epoch", "stage": stage, "epoch": epoch, "step": step, **result.to_dict()}

    def _log_epoch(self, row: dict[str, Any]) -> None:
        self.storage.log(row)
        if self.progress:
            self.progress(row["step"], self.total_steps, row)

    def evaluate(self, theta: torch.Tensor) -> EvalResult:
        """The test metrics of ``theta``, following the run's kernel plan once its first step has made one."""
        settings = self.config.evaluation
        test = self.data.test
        eps = self.config.eps if settings.eps is None else settings.eps
        with using_plan(self.kernel_plan):
            return evaluate(self.spec, theta, test.x.to(self.device), test.y.to(self.device), eps,
                            method=settings.method, batch_size=settings.batch_size, pgd_steps=settings.pgd_steps,
                            pgd_restarts=settings.pgd_restarts, alpha_steps=settings.alpha_steps,
                            seed=self.config.seed, complete_timeout=settings.complete_timeout)

    def _start(self, resume: bool) -> tuple[State, Position]:
        if resume:
            state, position, self.kernel_plan = self.storage.resume()
            return {key: value.to(self.device) for key, value in state.items()}, self._reopened(position)
        theta = self.initial_theta if self.initial_theta is not None else starting_weights(self.config, self.spec)
        if theta.shape != (self.spec.num_params,):
            raise ValueError(f"initial weights have shape {tuple(theta.shape)}, {self.spec.name} needs "
                             f"({self.spec.num_params},)")
        self.storage.begin(self.config)  # only a run that can start writes anything
        self.kernel_plan = None
        theta = theta.to(self.device)
        position = Position()
        self._log_epoch(self._eval_row(theta, "init", 0, 0))
        return self.stages[0].estimator.init_state(theta), position

    def run(self, resume: bool = False, stop_after_steps: int | None = None,
            should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train to the end (or until ``stop_after_steps`` more steps, or ``should_stop()``).

        An evaluator that raises :class:`Interrupted` (its caller stopped it mid-step) ends the run like
        ``should_stop`` at the start of that step: the checkpoint holds the step's start, and a resume redoes it.
        """
        state, position = self._start(resume)
        done_here = 0
        train = self.data.train
        global_epoch_base = sum(stage.epochs for stage in self.stages[:position.stage])
        while not position.finished:
            stage = self.stages[position.stage]
            global_epoch = global_epoch_base + position.epoch
            batches = epoch_batches(len(train), self.config.data.batch_size, self.config.seed, global_epoch,
                                    drop_last=True)[:self.steps_per_epoch]
            epoch_start = time.perf_counter()
            losses = self._logged_losses(stage.name, global_epoch + 1) if position.batch else []
            for batch in range(position.batch, len(batches)):
                if (stop_after_steps is not None and done_here >= stop_after_steps) or (should_stop and should_stop()):
                    self.storage.commit(state, position, self.kernel_plan)
                    return TrainResult(state["theta"], position, None)
                x, y = training_batch(self.config, train, global_epoch, batch, batches[batch])
                step_in_stage = position.epoch * self.steps_per_epoch + batch
                try:
                    state, metrics, self.kernel_plan = run_step(
                        stage, state, position.step, step_in_stage, self.config.seed, x.to(self.device),
                        y.to(self.device), self.evaluator, self.kernel_plan)
                except Interrupted:  # the evaluator stopped mid-step: keep the step's start, as between steps
                    self.storage.commit(state, position, self.kernel_plan)
                    return TrainResult(state["theta"], position, None)
                position = Position(position.stage, position.epoch, batch + 1, position.step + 1)
                done_here += 1
                row = {"kind": "step", "stage": stage.name, "epoch": global_epoch + 1, **metrics, "step": position.step}
                self.storage.log(row)
                losses.append(metrics["loss"])
                if self.progress:
                    self.progress(position.step, self.total_steps, row)
                every = self.commit_every
                if every and position.step % every == 0 and batch + 1 < len(batches):
                    self.storage.commit(state, position, self.kernel_plan)
            position = self._next_epoch(position, stage)
            if position.stage != self.stages.index(stage):
                global_epoch_base += stage.epochs
                state = self.stages[position.stage].estimator.init_state(state["theta"])
            if position.finished or (global_epoch + 1) % self.config.evaluation.every_epochs == 0:
                row = self._eval_row(state["theta"], stage.name, global_epoch + 1, position.step)
                row.update(train_loss=sum(losses) / max(len(losses), 1),
                           epoch_time_s=time.perf_counter() - epoch_start)
                self._log_epoch(row)
            self.storage.commit(state, position, self.kernel_plan)
        return TrainResult(state["theta"], position, self.last_eval)

    def _reopened(self, position: Position) -> Position:
        """A finished run whose config now asks for more epochs continues with the next epoch."""
        if position.finished and position.epoch + 1 < self.stages[position.stage].epochs:
            return Position(position.stage, position.epoch + 1, 0, position.step)
        return position

    def _logged_losses(self, stage: str, epoch: int) -> list[float]:
        """Step losses an interrupted epoch logged before the checkpoint, so a resumed epoch counts every step."""
        return [row["loss"] for row in self.storage.rows()
                if row["kind"] == "step" and row["stage"] == stage and row["epoch"] == epoch]

    def _next_epoch(self, position: Position, stage: Stage) -> Position:
        if position.epoch + 1 < stage.epochs:
            return Position(position.stage, position.epoch + 1, 0, position.step)
        if position.stage + 1 < len(self.stages):
            return Position(position.stage + 1, 0, 0, position.step)
        return Position(position.stage, position.epoch, 0, position.step, finished=True)
