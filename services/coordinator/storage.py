"""A job's checkpoint and metrics in Redis: the trainer's RunStorage for the services."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from gls_core.bounds import KernelPlan
from gls_core.training.checkpoint import Position
from gls_core.training.config import TrainConfig
from gls_core.training.storage import State

from ..store import Store


class RedisStorage:
    """Rows are buffered until the next commit, then written with the checkpoint in one transaction
    (fenced by ``owner``: :class:`services.store.LostClaim` once another coordinator owns the job)."""

    def __init__(self, store: Store, job_id: str, owner: str | None = None) -> None:
        self.store = store
        self.job_id = job_id
        self.owner = owner
        self.pending: list[dict[str, Any]] = []
        self.committed: list[dict[str, Any]] | None = None

    def begin(self, config: TrainConfig) -> None:
        self.pending = []
        self.committed = []

    def has_checkpoint(self) -> bool:
        return self.store.checkpoint(self.job_id) is not None

    def resume(self) -> tuple[State, Position, KernelPlan | None]:
        found = self.store.checkpoint(self.job_id)
        if found is None:
            raise FileNotFoundError(f"job {self.job_id} has no checkpoint")
        data, position = found
        self.pending = []
        self.committed = self.store.metrics(self.job_id)
        return load_tensors(data), Position(**position), self.store.kernel_plan(self.job_id)

    def log(self, row: dict[str, Any]) -> None:
        self.pending.append(row)

    def commit(self, state: State, position: Position, kernel_plan: KernelPlan | None) -> None:
        data = save_tensors({key: value.detach().cpu().contiguous() for key, value in state.items()})
        self.store.commit(self.job_id, data, asdict(position), self.pending, self.owner, kernel_plan)
        if self.committed is not None:
            self.committed.extend(self.pending)
        self.pending = []

    def rows(self) -> list[dict[str, Any]]:
        if self.committed is None:
            self.committed = self.store.metrics(self.job_id)
        return [*self.committed, *self.pending]
