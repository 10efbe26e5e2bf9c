"""Terminal and log output of the CLI: one progress reporter for people (a rich bar) and for logs (plain lines).

A run under nohup or a batch scheduler has no terminal: a bar would print nothing until the end, so
the reporter writes a plain line (step, rate, ETA and the caller's status) every ``GLS_LOG_EVERY_S``
seconds (30) instead, and notes (one per epoch) as lines in both cases. The rate and the ETA are
the current stage's recent ones (:mod:`gls_core.cli.eta`), in the bar as in the lines.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .eta import Estimate, StageRates

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
DEFAULT_LOG_EVERY_S = 30.0


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (2: bad usage or input)."""
    console.print("error:", message, style="red", markup=False, highlight=False)
    return typer.Exit(code)


def output_file(path: Path, option: str = "--out") -> Path:
    """``path`` ready to be written: its folders made; typer.Exit (2) naming the option if it is a directory."""
    if path.is_dir():
        raise fail(f"{option} {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise fail(f"{option} {path}: cannot create {path.parent} ({error.strerror or error})") from None
    return path


def duration(seconds: float) -> str:
    """``1h 02m``, ``3m 07s``, ``12s``: short enough for a log line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def eta_text(estimate: Estimate | None) -> str:
    """``ETA 3m 07s``, naming the later stages it counts at the current stage's rate (they have not run yet)."""
    if estimate is None:
        return ""
    text = f"ETA {duration(estimate.seconds)}"
    if estimate.untimed:
        verb = "runs" if len(estimate.untimed) == 1 else "run"
        text += f" if {' and '.join(estimate.untimed)} {verb} at {estimate.stage}'s rate"
    return text


class Reporter:
    """Progress of ``total`` units: a bar on a terminal, else a plain line every ``every`` seconds.

    ``stages`` ((name, units) in order, summing to ``total``) time each stage on its own; without
    them the whole task is one stage. ``clock`` gives the times the rate is measured with.
    """

    def __init__(self, description: str, total: int | None, *, completed: int = 0, unit: str = "step",
                 every: float | None = None, stream: Console | None = None,
                 stages: Sequence[tuple[str, int]] | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.stream = stream or console
        self.every = every if every is not None else float(os.environ.get("GLS_LOG_EVERY_S", DEFAULT_LOG_EVERY_S))
        self.completed = self.start_completed = completed
        self.status = ""
        self.stages = stages
        self.clock = clock
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_line = clock()
        self.rates = StageRates(self._plan(), completed, self._last_line)
        self._line_state: tuple[int, str] | None = None  # what the last line said: the same is not said twice

    def _plan(self) -> Sequence[tuple[str, int]]:
        if self.stages is not None:
            return self.stages
        return [(self.description, self.total)] if self.total else []

    def __enter__(self) -> Reporter:
        if self.stream.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[eta]}"), console=self.stream)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.completed, status="",
                                            eta="")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, trace)
        elif kind is None and self.completed != self.start_completed and not self._said():
            self._line()

    def update(self, completed: int | None = None, status: str | None = None, total: int | None = None) -> None:
        now = self.clock()
        if total is not None and total != self.total:
            self.total = total
            self.rates.plan(self._plan())
        if completed is not None:
            self.completed = completed
            self.rates.observe(completed, now)
        if status is not None:
            self.status = status
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, status=self.status, total=self.total,
                             eta=eta_text(self.rates.estimate()))
        elif now - self._last_line >= self.every and not self._said():
            self._line()

    def note(self, text: str) -> None:
        """A line that stays (above the bar on a terminal)."""
        self.stream.print(text, markup=False, highlight=False)

    def _said(self) -> bool:
        """Whether the last plain line already said the current count and status."""
        return self._line_state == (self.completed, self.status)

    def _line(self) -> None:
        self._last_line = self.clock()
        self._line_state = (self.completed, self.status)
        where = f"{self.unit} {self.completed}" + (f"/{self.total} ({self.completed / self.total:.1%})"
                                                   if self.total else "")
        status = f" {self.status}" if self.status else ""
        rate = self.rates.rate()
        timing = f" | {rate:.2f} {self.unit}s/s" if rate is not None else ""
        eta = eta_text(self.rates.estimate())
        timing += f", {eta}" if eta else ""
        self.note(f"{time.strftime('%H:%M:%S')} {self.description} {where}{status}{timing}")


def epoch_line(row: dict[str, Any]) -> str:
    """One line per evaluated epoch: the accuracies and what they were measured with."""
    extra = f", train loss {row['train_loss']:.4f}" if "train_loss" in row else ""
    took = f", {row['epoch_time_s']:.0f} s" if "epoch_time_s" in row else ""
    return (f"{row['stage']} epoch {row['epoch']} (step {row['step']}): natural {percent(row['natural_acc'])}, "
            f"adversarial {percent(row['adversarial_acc'])}, certified {percent(row['certified_acc'])} "
            f"({row['method']}, eps {row['eps']:g}, {row['n']} test inputs){extra}{took}")


def result_table(result: dict[str, Any], title: str) -> Table:
    """An evaluation result (n, eps, method, the three accuracies) as a one-row table."""
    keys = ("n", "eps", "method", "natural_acc", "adversarial_acc", "certified_acc")
    table = Table(title=title)
    for key in keys:
        table.add_column(key)
    table.add_row(*(percent(result[k]) if k.endswith("_acc") else str(result[k]) for k in keys))
    return table
