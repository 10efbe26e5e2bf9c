"""Run directories: weights and estimator state in safetensors (never pickle), the rest as JSON/YAML.

Layout of a run directory::

    model.safetensors   theta (the flat weight vector) + metadata naming the architecture and dataset
    state.safetensors   estimator state (optimizer moments, PGPE sigma, ...)
    state.json          position: stage, epoch, batch within the epoch, global step; the run's kernel plan
    config.yaml         the validated training config
    metrics.jsonl       one JSON object per logged step or epoch

Every file is written to a temporary name and renamed, so a crash never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file

from ..bounds import KernelPlan
from ..nets.spec import NetSpec
from ..nets.zoo import network
from .config import TrainConfig, dump_config, load_config

MODEL_FILE, STATE_FILE, POSITION_FILE, CONFIG_FILE, METRICS_FILE = (
    "model.safetensors", "state.safetensors", "state.json", "config.yaml", "metrics.jsonl")
FORMAT = "gls-flat-v1"
KERNEL_PLAN_KEY = "kernel_plan"  # in state.json


@dataclass(frozen=True)
class Position:
    """Where training stands: the next batch to run is (stage, epoch, batch); ``step`` counts all steps."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0
    finished: bool = False


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(tmp), metadata)
    os.replace(tmp, path)


def save_model(path: Path, theta: torch.Tensor, arch: str, dataset: str, extra: dict[str, str] | None = None) -> None:
    _atomic_write_bytes(path, model_bytes(theta, arch, dataset, extra))


def model_bytes(theta: torch.Tensor, arch: str, dataset: str, extra: dict[str, str] | None = None) -> bytes:
    """A model file's bytes, for storage outside the filesystem (Redis, HTTP downloads)."""
    metadata = {"format": FORMAT, "arch": arch, "dataset": dataset, "num_params": str(theta.numel()),
                **(extra or {})}
    return save_tensors({"theta": theta.detach().cpu().contiguous()}, metadata)


def model_from_bytes(data: bytes, source: str = "model") -> tuple[NetSpec, torch.Tensor, dict[str, str]]:
    """Parse model bytes with the same checks as :func:`load_model`."""
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(data)
        handle.flush()
        try:
            return load_model(handle.name)
        except ValueError as error:
            raise ValueError(str(error).replace(handle.name, source)) from None


def _read_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; ValueError naming the file when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (OSError, RuntimeError, SafetensorError) as error:  # a corrupt header surfaces as any of these
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return metadata, tensors


def load_model(path: str | Path) -> tuple[NetSpec, torch.Tensor, dict[str, str]]:
    """The network spec and flat weights of a model file (or of a run directory's model)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    if path.suffix == ".onnx":
        raise ValueError(f"{path}: an ONNX file, not a GLS model (a run directory or its {MODEL_FILE}); "
                         "gls verify reads ONNX")
    metadata, tensors = _read_tensors(path)
    if "theta" not in tensors:
        raise ValueError(f"{path}: not a GLS model file (no 'theta' tensor)")
    theta = tensors["theta"]
    if metadata.get("format") != FORMAT or "arch" not in metadata or "dataset" not in metadata:
        raise ValueError(f"{path}: missing GLS metadata (format {FORMAT!r}, arch, dataset)")
    spec = network(metadata["arch"], metadata["dataset"])
    if theta.ndim != 1 or theta.numel() != spec.num_params:
        raise ValueError(f"{path}: theta has shape {tuple(theta.shape)}, {spec.name} needs ({spec.num_params},)")
    return spec, theta.to(torch.float32), metadata


def save_checkpoint(run_dir: Path, config: TrainConfig, state: dict[str, torch.Tensor], position: Position,
                    kernel_plan: KernelPlan | None = None) -> None:
    """Model, estimator state, position and kernel plan (None: not made yet); the position file is written
    last, so it commits the step."""
    save_model(run_dir / MODEL_FILE, state["theta"], config.model.arch, config.zoo_dataset,
               {"step": str(position.step)})
    _atomic_save_tensors(run_dir / STATE_FILE, state, {"step": str(position.step)})
    _atomic_write_bytes(run_dir / POSITION_FILE,
                        json.dumps({**asdict(position), KERNEL_PLAN_KEY: kernel_plan}).encode())


def _position_json(run_dir: Path) -> tuple[Path, Any]:
    path = run_dir / POSITION_FILE
    try:
        return path, json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def read_kernel_plan(run_dir: Path) -> KernelPlan | None:
    """The run's kernel plan from state.json: None before the first step made it, empty for a run checkpointed
    before plans were stored (its kernels are then chosen without timing); ValueError if it is damaged."""
    path, data = _position_json(run_dir)
    if not isinstance(data, dict) or KERNEL_PLAN_KEY not in data:
        return {}
    plan = data[KERNEL_PLAN_KEY]
    if plan is not None and (not isinstance(plan, dict)
                             or not all(isinstance(value, str) for value in plan.values())):
        raise ValueError(f"{path}: {KERNEL_PLAN_KEY} must be null or an object of kernel names, got "
                         f"{json.dumps(plan)[:64]}")
    return plan


def read_position(run_dir: Path) -> Position:
    """Where the run's last checkpoint stands (without loading its tensors); ValueError if state.json is damaged."""
    path, data = _position_json(run_dir)
    fields = {name: type(value) for name, value in asdict(Position()).items()}
    if not isinstance(data, dict) or set(data) - {KERNEL_PLAN_KEY} != set(fields):
        raise ValueError(f"{path}: expected a JSON object with the keys {', '.join(fields)}")
    data = {name: data[name] for name in fields}
    for name, kind in fields.items():
        value = data[name]
        if type(value) is not kind or (kind is int and value < 0):
            expected = "true or false" if kind is bool else "a whole number >= 0"
            raise ValueError(f"{path}: {name} must be {expected}, got {value!r}")
    return Position(**data)


def load_checkpoint(run_dir: Path, config: TrainConfig | None = None) -> tuple[dict[str, torch.Tensor], Position]:
    """The committed estimator state and position, after checking every file a resume reads or rewrites.

    A damaged or inconsistent file (state.json with its kernel plan, state.safetensors, model.safetensors,
    metrics.jsonl; with ``config``, a model or stage the config does not train) raises ValueError naming
    the file and what is wrong, before anything is written: a resume must not overwrite what it cannot read.
    """
    position_file, state_file, model_file = run_dir / POSITION_FILE, run_dir / STATE_FILE, run_dir / MODEL_FILE
    if not position_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint to resume ({POSITION_FILE}, {STATE_FILE})")
    position = read_position(run_dir)
    read_kernel_plan(run_dir)
    metadata, state = _read_tensors(state_file)
    if metadata.get("step") != str(position.step):
        raise ValueError(f"{state_file} is at step {metadata.get('step', '(none)')}, {position_file} at step "
                         f"{position.step}: they disagree on the step, the checkpoint is torn")
    theta = state.get("theta")
    if theta is None or theta.ndim != 1:
        raise ValueError(f"{state_file}: no flat 'theta' tensor")
    spec, _, model_metadata = load_model(model_file)
    if theta.numel() != spec.num_params:
        raise ValueError(f"{state_file}: theta has {theta.numel()} weights, {model_file} holds {spec.name} with "
                         f"{spec.num_params}")
    model_step = model_metadata.get("step", "")
    if not model_step.isdigit() or int(model_step) < position.step:  # written first: a torn write leaves it ahead
        raise ValueError(f"{model_file}: holds step {model_step or '(none)'}, older than the checkpoint's step "
                         f"{position.step}")
    if config is not None:
        trained = network(config.model.arch, config.zoo_dataset).name
        if spec.name != trained:
            raise ValueError(f"{model_file} holds {spec.name}, but {CONFIG_FILE} trains {trained}")
        stages = ["warmup", "main"] if config.warmup is not None else ["main"]
        if position.stage >= len(stages):
            raise ValueError(f"{position_file} is in stage {position.stage}, but {CONFIG_FILE} has only "
                             f"{' and '.join(stages)} (stage 0{' and 1' if len(stages) > 1 else ''})")
    logged = max((row["step"] for row in read_metrics(run_dir) if isinstance(row.get("step"), int)), default=0)
    if logged < position.step:  # every step logs its row before the checkpoint that commits it
        raise ValueError(f"{run_dir / METRICS_FILE}: rows end at step {logged}, the checkpoint is at step "
                         f"{position.step}")
    return state, position


def write_config(run_dir: Path, config: TrainConfig) -> None:
    _atomic_write_bytes(run_dir / CONFIG_FILE, dump_config(config).encode())


def read_config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir / CONFIG_FILE)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The logged rows; a torn last line (an append cut short, never committed) is dropped, any other bad line
    raises ValueError naming the file and line."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint (a crash between logging and checkpointing)."""
    rows = [row for row in read_metrics(run_dir) if int(row.get("step", 0)) <= step]
    _atomic_write_bytes(run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows).encode())


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(row) + "\n")
