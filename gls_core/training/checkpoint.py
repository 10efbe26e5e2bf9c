"""Run directories: weights and estimator state in safetensors (never pickle), the rest as JSON/YAML.

Layout of a run directory::

    model.safetensors   theta (the flat weight vector) + metadata naming the architecture and dataset
    state.safetensors   estimator state (optimizer moments, PGPE sigma, ...)
    state.json          position: stage, epoch, batch within the epoch, global step
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

from ..nets.spec import NetSpec
from ..nets.zoo import network
from .config import TrainConfig, dump_config, load_config

MODEL_FILE, STATE_FILE, POSITION_FILE, CONFIG_FILE, METRICS_FILE = (
    "model.safetensors", "state.safetensors", "state.json", "config.yaml", "metrics.jsonl")
FORMAT = "gls-flat-v1"


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


def load_model(path: str | Path) -> tuple[NetSpec, torch.Tensor, dict[str, str]]:
    """The network spec and flat weights of a model file (or of a run directory's model)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "theta" not in handle.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise ValueError(f"{path}: not a GLS model file (no 'theta' tensor)")
            theta = handle.get_tensor("theta")
    except (OSError, RuntimeError, SafetensorError) as error:  # a corrupt header surfaces as any of these
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if metadata.get("format") != FORMAT or "arch" not in metadata or "dataset" not in metadata:
        raise ValueError(f"{path}: missing GLS metadata (format {FORMAT!r}, arch, dataset)")
    spec = network(metadata["arch"], metadata["dataset"])
    if theta.ndim != 1 or theta.numel() != spec.num_params:
        raise ValueError(f"{path}: theta has shape {tuple(theta.shape)}, {spec.name} needs ({spec.num_params},)")
    return spec, theta.to(torch.float32), metadata


def save_checkpoint(run_dir: Path, config: TrainConfig, state: dict[str, torch.Tensor], position: Position) -> None:
    """Model, estimator state and position; the position file is written last, so it commits the step."""
    save_model(run_dir / MODEL_FILE, state["theta"], config.model.arch, config.zoo_dataset,
               {"step": str(position.step)})
    _atomic_save_tensors(run_dir / STATE_FILE, state, {"step": str(position.step)})
    _atomic_write_bytes(run_dir / POSITION_FILE, json.dumps(asdict(position)).encode())


def read_position(run_dir: Path) -> Position:
    """Where the run's last checkpoint stands (without loading its tensors)."""
    return Position(**json.loads((run_dir / POSITION_FILE).read_text()))


def load_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], Position]:
    position_file, state_file = run_dir / POSITION_FILE, run_dir / STATE_FILE
    if not position_file.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint to resume ({POSITION_FILE}, {STATE_FILE})")
    position = read_position(run_dir)
    with safe_open(str(state_file), framework="pt") as handle:
        if (handle.metadata() or {}).get("step") != str(position.step):
            raise ValueError(f"{run_dir}: {STATE_FILE} and {POSITION_FILE} disagree on the step; checkpoint is torn")
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return state, position


def write_config(run_dir: Path, config: TrainConfig) -> None:
    _atomic_write_bytes(run_dir / CONFIG_FILE, dump_config(config).encode())


def read_config(run_dir: Path) -> TrainConfig:
    return load_config(run_dir / CONFIG_FILE)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop rows logged after the checkpoint (a crash between logging and checkpointing)."""
    rows = [row for row in read_metrics(run_dir) if int(row.get("step", 0)) <= step]
    _atomic_write_bytes(run_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows).encode())


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with (run_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(row) + "\n")
