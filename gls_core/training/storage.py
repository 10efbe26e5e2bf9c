"""Where a run keeps its checkpoint and metrics: a local directory here, Redis in the services.

The trainer only talks to this interface, so the in-process run and the coordinator's run execute
the same loop and give the same weights. ``log`` records a row; ``commit`` stores a checkpoint (with
the run's kernel plan) and makes every row logged before it durable together with it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import torch

from ..bounds import KernelPlan
from .checkpoint import (
    METRICS_FILE,
    Position,
    append_metrics,
    load_checkpoint,
    read_kernel_plan,
    read_metrics,
    save_checkpoint,
    truncate_metrics,
    write_config,
)
from .config import TrainConfig
from .plots import PLOT_FILE, plot_curves

State = dict[str, torch.Tensor]


class RunStorage(Protocol):
    def begin(self, config: TrainConfig) -> None:
        """Start a fresh run (forget any earlier one)."""

    def resume(self) -> tuple[State, Position, KernelPlan | None]:
        """The last committed state, position and kernel plan (None: not made yet; empty for a checkpoint
        written before plans were stored); rows logged after it are dropped."""

    def log(self, row: dict[str, Any]) -> None:
        """Record a metrics row."""

    def commit(self, state: State, position: Position, kernel_plan: KernelPlan | None) -> None:
        """Checkpoint: the state, the position, the kernel plan and all rows logged so far become durable together."""

    def rows(self) -> list[dict[str, Any]]:
        """All rows of this run, committed or not."""


class DirectoryStorage:
    """A run directory (model.safetensors, state.safetensors, state.json, config.yaml, metrics.jsonl, curves.png).

    The curves are redrawn with the checkpoint (at most every ``plot_every_s`` seconds, and always
    at the end), so an interrupted or running job has a current figure too.
    """

    def __init__(self, run_dir: str | Path, config: TrainConfig, plot_every_s: float | None = 30.0) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.plot_every_s = plot_every_s
        self._plotted = time.monotonic()

    def begin(self, config: TrainConfig) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_config(self.run_dir, config)
        (self.run_dir / METRICS_FILE).write_text("")

    def resume(self) -> tuple[State, Position, KernelPlan | None]:
        state, position = load_checkpoint(self.run_dir, self.config)
        truncate_metrics(self.run_dir, position.step)
        return state, position, read_kernel_plan(self.run_dir)

    def log(self, row: dict[str, Any]) -> None:
        append_metrics(self.run_dir, row)

    def commit(self, state: State, position: Position, kernel_plan: KernelPlan | None) -> None:
        save_checkpoint(self.run_dir, self.config, state, position, kernel_plan)
        if self.plot_every_s is not None and (position.finished
                                              or time.monotonic() - self._plotted >= self.plot_every_s):
            self.plot()

    def plot(self) -> Path:
        self._plotted = time.monotonic()
        return plot_curves(self.rows(), self.run_dir / PLOT_FILE, self.config)

    def rows(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir)
