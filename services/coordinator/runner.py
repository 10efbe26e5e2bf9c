"""Run one claimed job: the local trainer's loop with evaluation on the workers and storage in Redis."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import torch

from gls_core.bounds import KernelPlan
from gls_core.nets.spec import NetSpec
from gls_core.training.checkpoint import model_bytes, model_from_bytes
from gls_core.training.config import TrainConfig, parse_config
from gls_core.training.estimators import Evaluated, Proposal
from gls_core.training.objective import Objective
from gls_core.training.trainer import Evaluator, Trainer, spec_for

from ..settings import Settings
from ..store import Job, JobStatus, Store
from ..worker_client import WorkerPool
from .data import job_data
from .storage import RedisStorage

log = logging.getLogger("gls.coordinator")


class StepProgress:
    """Members done in the step in progress, written to the job (``members_done`` of ``members``): a long
    step shows that it moves. A step shorter than ``interval_s`` writes nothing; a longer one writes at most
    every ``interval_s`` and when its last share comes back."""

    def __init__(self, store: Store, job_id: str, interval_s: float = 1.0) -> None:
        self.store, self.job_id, self.interval_s = store, job_id, interval_s
        self._began = self._written = -math.inf

    def begin(self) -> None:
        self._began = time.monotonic()

    def __call__(self, done: int, members: int) -> None:
        now = time.monotonic()
        if now - self._began < self.interval_s or (done < members and now - self._written < self.interval_s):
            return
        self._written = now
        try:
            self.store.update_job(self.job_id, members_done=done, members=members)
        except redis.RedisError as error:  # progress is a courtesy: the step goes on
            log.warning("job %s: could not record progress (%s)", self.job_id, error)


def remote_evaluator(pool: WorkerPool, spec: NetSpec, seed: int, block: int,
                     should_stop: Callable[[], bool] | None = None, progress: StepProgress | None = None
                     ) -> Evaluator:
    """Evaluate each step's proposal on the live workers, split at block boundaries, all following the job's
    kernel plan; the first step (no plan yet) starts with one block on one worker, whose choices become the
    plan. ``should_stop`` and ``progress`` reach into the step (:meth:`WorkerPool.evaluate`)."""

    def run(proposal: Proposal, objective: Objective, x: torch.Tensor, y: torch.Tensor, eps: float,
            kernel_plan: KernelPlan | None) -> Evaluated:
        if progress is not None:
            progress.begin()
        return pool.evaluate(spec, proposal, objective, x, y, eps, seed, block, kernel_plan,
                             make_plan=kernel_plan is None, should_stop=should_stop, progress=progress)

    return run


def warm_start(store: Store, config: TrainConfig, tenant: str, spec: NetSpec) -> torch.Tensor | None:
    model_id = config.model.checkpoint_id
    if model_id is None:
        return None
    loaded, theta, _ = model_from_bytes(store.model_data(model_id, tenant), f"model {model_id}")
    if loaded.name != spec.name:
        raise ValueError(f"model.checkpoint_id {model_id} holds {loaded.name}, the job trains {spec.name}")
    return theta


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a finished status, RUNNING (asked to stop; resumed later) or QUEUED (yielded, ``note``)."""

    status: JobStatus
    note: str = ""


class JobRunner:
    """Runs (or resumes) a job until it finishes, is cancelled, yields its turn, or ``should_stop`` says so."""

    def __init__(self, store: Store, pool: WorkerPool, settings: Settings, consumer: str) -> None:
        self.store, self.pool, self.settings, self.consumer = store, pool, settings, consumer

    def run(self, job: Job, should_stop: Callable[[], bool], owner: str | None = None) -> Outcome:
        """Every commit is fenced by ``owner``: :class:`services.store.LostClaim` once another coordinator
        owns the job. After ``job_slice_s`` the job yields at a step boundary (:meth:`Store.should_yield`)."""
        config = parse_config(job.config, f"job {job.id}")
        data = job_data(self.store, config, job.tenant, self.settings.data_dir)
        storage = RedisStorage(self.store, job.id, owner)
        resume = storage.has_checkpoint()
        spec = spec_for(config, data)
        started = time.monotonic()
        ended: dict[str, str] = {}

        def cancelled() -> bool:
            if self.store.cancel_requested(job.id):
                ended["cancelled"] = "yes"
                return True
            return False

        def abandon() -> bool:
            """Within a step: cancelled, or this coordinator stops (shutdown, a lost claim)."""
            try:
                if cancelled():
                    return True
            except redis.RedisError as error:  # asked again within a second; the step goes on meanwhile
                log.warning("job %s: could not read the cancel flag (%s)", job.id, error)
            return should_stop()

        evaluator = remote_evaluator(self.pool, spec, config.seed, config.block_members, abandon,
                                     StepProgress(self.store, job.id))
        trainer = Trainer(config, storage, data=data, commit_every=self.settings.checkpoint_every_steps,
                          evaluator=evaluator,
                          initial_theta=None if resume else warm_start(self.store, config, job.tenant, spec))
        self.store.update_job(job.id, status=JobStatus.RUNNING, total_steps=trainer.total_steps,
                              coordinator=self.consumer, error="", note="")

        def stop() -> bool:
            """At a step boundary: as :func:`abandon` (a Redis error here fails the sitting), or the job's slice
            is over and another tenant waits."""
            if cancelled() or should_stop():
                return True
            slice_s = self.settings.job_slice_s
            if slice_s and time.monotonic() - started >= slice_s:
                other = self.store.should_yield(job.tenant)
                if other is not None:
                    ended["yielded"] = other
                    return True
            return False

        result = trainer.run(resume=resume, should_stop=stop)
        if "cancelled" in ended:
            self.store.update_job(job.id, status=JobStatus.CANCELLED)
            return Outcome(JobStatus.CANCELLED)
        if not result.position.finished:
            if "yielded" in ended:
                return Outcome(JobStatus.QUEUED, f"yielded at step {result.position.step} after "
                                                 f"{time.monotonic() - started:.1f} s to tenant {ended['yielded']}")
            return Outcome(JobStatus.RUNNING)  # asked to stop (shutdown): resumed later from the checkpoint
        data_bytes = model_bytes(result.theta, config.model.arch, config.zoo_dataset, {"job": job.id})
        extra: dict[str, Any] = {} if result.final is None else result.final.to_dict()
        self.store.put_model(job.tenant, data_bytes, config.model.arch, config.zoo_dataset, trainer.spec.num_params,
                             source=f"job {job.id}", model_id=job.id,
                             extra={key: str(value) for key, value in extra.items()})
        self.store.update_job(job.id, status=JobStatus.SUCCEEDED, model_id=job.id)
        return Outcome(JobStatus.SUCCEEDED)
