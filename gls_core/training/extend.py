"""Which config changes a resumed run may take: more epochs and later milestones, not a different experiment.

A run is extended by resuming it with a changed config (``--resume --set schedule.epochs=100``).
What has already happened must stay true of the new config, so the training that continues is the
training an uninterrupted run of the new config would have done: the epochs done and the
milestones already passed cannot change, nor can anything that shaped the steps taken (data,
model, estimator, relaxation, eps schedule, seed). Evaluation and operational fields may change.
"""

from __future__ import annotations

from typing import Any

from .checkpoint import Position
from .config import ConfigError, TrainConfig

# Fields that change only how the run is observed or executed, never the steps it takes.
FREE_PREFIXES = ("evaluation.", "threads", "device", "checkpoint_every_steps", "name", "data.data_dir",
                 "data.test_subset", "data.test_path")
SCHEDULE_EPOCHS, MILESTONES = "schedule.epochs", "schedule.lr_milestones"


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def changed_fields(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted field path -> (old value, new value) for every field that differs."""
    before, after = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return {path: (before.get(path), after.get(path)) for path in sorted(set(before) | set(after))
            if before.get(path) != after.get(path)}


def main_epochs_done(config: TrainConfig, position: Position) -> int:
    """Epochs of the main stage already begun (a partly done epoch counts: its steps happened)."""
    main_stage = 1 if config.warmup is not None else 0
    if position.stage < main_stage:
        return 0
    if position.finished:
        return position.epoch + 1
    return position.epoch + (1 if position.batch else 0)


def check_extension(old: TrainConfig, new: TrainConfig, position: Position) -> dict[str, tuple[Any, Any]]:
    """The changes a resume with ``new`` makes to a run of ``old`` at ``position``; ConfigError if not allowed."""
    changes = changed_fields(old, new)
    done = main_epochs_done(old, position)
    problems = []
    for path, (before, after) in changes.items():
        if path.startswith(FREE_PREFIXES):
            continue
        if path == SCHEDULE_EPOCHS:
            if after < done:
                problems.append(f"{path}: the run has already trained {done} epochs; cannot end at {after}")
        elif path == MILESTONES:
            passed = [m for m in before if m <= done]
            if [m for m in after if m <= done] != passed:
                problems.append(f"{path}: milestones up to epoch {done} have passed ({passed}); only later ones "
                                f"can change (run has {before}, config has {after})")
        else:
            problems.append(f"{path}: cannot change when resuming (run has {before!r}, config has {after!r})")
    if problems:
        allowed = "only schedule.epochs, later lr milestones and evaluation or execution fields may change"
        if len(problems) == 1:
            raise ConfigError(f"cannot resume with this config: {problems[0]}; {allowed}")
        raise ConfigError(f"cannot resume with this config; {allowed}:\n" + "\n".join(problems))
    return changes
