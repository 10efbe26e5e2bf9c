"""`gls train`: train in this process, with progress for people and for logs, checkpoints and resuming.

Ctrl-C or SIGTERM (a scheduler's stop) lets the current step finish, writes a checkpoint and says
how to resume; a second Ctrl-C stops at once. ``--resume`` on a finished run changes nothing;
resuming with more epochs or later milestones extends the run (see
:mod:`gls_core.training.extend`), naming every field that changed.
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .console import Reporter, console, epoch_line, fail, out, result_table

if TYPE_CHECKING:
    from gls_core.training import TrainConfig
    from gls_core.training.checkpoint import Position

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _step_status(row: dict[str, Any]) -> str:
    return f"{row['stage']} loss {row['loss']:.4f} eps {row['eps']:.4g} lr {row['lr']:.3g}"


class StopRequest:
    """Set by SIGINT/SIGTERM; the trainer checks it between steps."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        def handle(number: int, frame: FrameType | None) -> None:
            if self.signal is not None:  # asked twice: stop now, without a checkpoint
                raise KeyboardInterrupt
            self.signal = signal.Signals(number)
            console.print(f"\n{self.signal.name}: finishing the current step, then writing a checkpoint "
                          "(press Ctrl-C again to stop at once)", markup=False)

        previous = {number: signal.signal(number, handle) for number in EXIT_CODES}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)


def _resume_command(config: Path, out_dir: Path, overrides: list[str]) -> str:
    sets = " ".join(f"--set {shlex.quote(item)}" for item in overrides)
    return f"gls train {shlex.quote(str(config))} --out {shlex.quote(str(out_dir))} --resume {sets}".rstrip()


def _resumable(out_dir: Path, settings: TrainConfig) -> tuple[Position, dict[str, tuple[Any, Any]]]:
    """The run's position and the config changes a resume makes; typer.Exit with the reason otherwise.

    Every file of the checkpoint is read and checked first, so a damaged run is refused before
    anything in it is rewritten.
    """
    from gls_core.training import ConfigError
    from gls_core.training.checkpoint import CONFIG_FILE, POSITION_FILE, load_checkpoint, read_config
    from gls_core.training.extend import check_extension

    if not (out_dir / CONFIG_FILE).is_file() or not (out_dir / POSITION_FILE).is_file():
        raise fail(f"no run to resume in {out_dir} (no {CONFIG_FILE} and {POSITION_FILE}); start it without --resume")
    try:
        run_config = read_config(out_dir)
        _, position = load_checkpoint(out_dir, run_config)
    except (FileNotFoundError, ValueError) as error:  # ConfigError is a ValueError
        raise fail(f"cannot resume: {error}") from None
    try:
        return position, check_extension(run_config, settings, position)
    except ConfigError as error:
        raise fail(str(error)) from None


def train(config: Annotated[Path, typer.Argument(help="training config (YAML)")],
          out_dir: Annotated[Path, typer.Option("--out", help="run directory")],
          overrides: Annotated[list[str] | None, typer.Option("--set", help="override a field: key.path=value")] = None,
          resume: Annotated[bool, typer.Option(help="continue the run in --out from its checkpoint; with "
                                                    "--set schedule.epochs=N, extend it")] = False,
          force: Annotated[bool, typer.Option(help="overwrite an existing run in --out")] = False) -> None:
    """Train in this process; writes model.safetensors, config.yaml, metrics.jsonl and curves.png to --out."""
    from gls_core.training.config import ConfigError, config_warnings, load_config

    overrides = overrides or []
    try:  # before torch is imported: a config error comes back at once
        settings = load_config(config, overrides)
    except (ConfigError, FileNotFoundError) as error:
        raise fail(str(error)) from None

    import torch

    from gls_core.training import Trainer
    from gls_core.training.checkpoint import MODEL_FILE, write_config
    from gls_core.training.extend import main_epochs_done
    from gls_core.training.plots import PLOT_FILE
    from gls_core.training.storage import DirectoryStorage
    from gls_core.training.trainer import starting_weights

    changes: dict[str, tuple[Any, Any]] = {}
    resumed_at = 0  # the rate and ETA count only the steps trained in this process, per stage
    if resume:
        position, changes = _resumable(out_dir, settings)
        if position.finished and main_epochs_done(settings, position) >= settings.schedule.epochs:
            out.print(f"{out_dir} finished training at step {position.step}; nothing to do. To train longer, "
                      f"resume with --set schedule.epochs=N (N > {settings.schedule.epochs}).")
            return
        resumed_at = position.step
    elif (out_dir / MODEL_FILE).exists() and not force:
        raise fail(f"{out_dir} already holds a run; pass --resume to continue it or --force to overwrite it")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        trainer = Trainer(settings, out_dir)
        if not resume:  # model.checkpoint: read and checked before anything is written
            trainer.initial_theta = starting_weights(settings, trainer.spec)
    except (FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    for warning in [*config_warnings(settings), *trainer.data.warnings]:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    if changes:
        write_config(out_dir, settings)
        for path, (before, after) in changes.items():
            console.print(f"resuming with {path}: {before!r} -> {after!r}", markup=False)
    stop = StopRequest()
    stages = [(stage.name, stage.epochs * trainer.steps_per_epoch) for stage in trainer.stages]
    with stop.installed(), Reporter(settings.name or config.stem, trainer.total_steps, completed=resumed_at,
                                    stages=stages) as bar:

        def show(step: int, total: int, row: dict[str, Any]) -> None:
            if row["kind"] == "epoch":
                bar.note(epoch_line(row))
            else:
                bar.update(step, _step_status(row))

        trainer.progress = show
        try:
            result = trainer.run(resume=resume, should_stop=stop)
        except KeyboardInterrupt:
            console.print(f"stopped without a new checkpoint; resume from the last one with:\n  "
                          f"{_resume_command(config, out_dir, overrides)}", markup=False)
            raise typer.Exit(130) from None
    assert isinstance(trainer.storage, DirectoryStorage)
    # the final checkpoint has drawn the curves; a run stopped early gets them drawn now
    plot = out_dir / PLOT_FILE if result.position.finished else trainer.storage.plot()
    if stop.signal is not None and not result.position.finished:
        console.print(f"stopped at step {result.position.step} of {trainer.total_steps}; checkpoint written to "
                      f"{out_dir}. Resume with:\n  {_resume_command(config, out_dir, overrides)}", markup=False)
        raise typer.Exit(EXIT_CODES[stop.signal])
    if result.final is not None:
        out.print(result_table(result.final.to_dict(), f"final evaluation ({out_dir})"))
    out.print(f"wrote {out_dir / MODEL_FILE}, {out_dir / 'metrics.jsonl'}, {plot}")
