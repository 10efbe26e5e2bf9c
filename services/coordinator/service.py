"""The coordinator process: claim jobs from the Redis consumer group, run them, keep the claim alive.

Several coordinators share the stream; a job whose coordinator stops refreshing its claim for
``job_stale_s`` is taken over by another one, which resumes from the job's last checkpoint. The
takeover moves the job's owner record, so the silent one, should it wake up, can commit nothing more
(:class:`services.store.LostClaim`) and stops the job without acknowledging it. A job that has run
for ``job_slice_s`` yields its turn to a waiting tenant with fewer running jobs (services/scheduling.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from ..settings import Settings
from ..store import JobStatus, LostClaim, NotFound, Store, owner_token, warn_if_not_durable
from ..worker_client import NoWorkersError, WorkerPool
from .runner import JobRunner, Outcome

log = logging.getLogger("gls.coordinator")


class Coordinator:
    def __init__(self, settings: Settings, consumer: str | None = None) -> None:
        self.settings = settings
        self.consumer = consumer or settings.coordinator_id or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(redis.Redis.from_url(settings.redis_url))
        self.pool = WorkerPool(settings, self.store.redis)
        self.runner = JobRunner(self.store, self.pool, settings, self.consumer)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()

    def run_forever(self) -> None:
        warn_if_not_durable(self.store.redis, log)
        log.info("coordinator %s waiting for jobs", self.consumer)
        while not self.stopping.is_set():
            try:
                claimed = self.store.claim_job(self.consumer, block_ms=1000,
                                               stale_ms=int(self.settings.job_stale_s * 1000))
                if claimed is not None:
                    self.handle(*claimed)
            except redis.RedisError as error:
                log.warning("redis unavailable (%s); retrying", error)
                self.stopping.wait(1.0)

    def _keep_claim(self, message_id: str, job_id: str, done: threading.Event, lost: threading.Event) -> None:
        """Refresh the claim every quarter of ``job_stale_s``; once another coordinator owns the job, set ``lost``."""
        interval = max(0.2, self.settings.job_stale_s / 4)
        while not done.wait(interval):
            try:
                if not self.store.keep_claim(self.consumer, message_id, job_id):
                    lost.set()
                    return
            except redis.RedisError as error:
                log.warning("could not refresh the claim on %s: %s", message_id, error)

    def handle(self, message_id: str, job_id: str) -> None:
        try:
            job = self.store.get_job(job_id)
        except NotFound:
            self.store.ack(message_id, job_id)
            return
        if job.status.finished:
            self.store.ack(message_id, job_id)
            return
        if job.cancel_requested:
            self.store.update_job(job_id, status=JobStatus.CANCELLED)
            self.store.ack(message_id, job_id)
            return
        owner = owner_token(self.consumer, message_id)
        done, lost = threading.Event(), threading.Event()
        keeper = threading.Thread(target=self._keep_claim, args=(message_id, job_id, done, lost), daemon=True)
        keeper.start()
        try:
            outcome = self._run_until_settled(job_id, owner, lost)
        except LostClaim as error:  # taken over after a stall: the new owner resumes; acknowledge nothing
            log.warning("job %s: %s; leaving it to its new owner", job_id, error)
            return
        finally:
            done.set()
            keeper.join()
        if outcome.status == JobStatus.QUEUED:
            try:
                self.store.yield_job(owner, message_id, job_id, outcome.note)
                log.info("job %s %s", job_id, outcome.note)
            except LostClaim as error:
                log.warning("job %s: %s; leaving it to its new owner", job_id, error)
        elif outcome.status != JobStatus.RUNNING:
            self.store.ack(message_id, job_id)

    def _run_until_settled(self, job_id: str, owner: str, lost: threading.Event) -> Outcome:
        """Run the job; without workers, wait for some and resume from the last checkpoint."""

        def should_stop() -> bool:
            return self.stopping.is_set() or lost.is_set()

        while True:
            job = self.store.get_job(job_id)
            try:
                log.info("running job %s (%s)", job_id, job.name or job.config.get("estimator"))
                return self.runner.run(job, should_stop, owner)
            except NoWorkersError as error:
                log.warning("job %s: %s; waiting for workers", job_id, error)
                self.store.update_job(job_id, error=f"waiting for workers: {error}")
                if self.stopping.wait(2.0) or lost.is_set():
                    return Outcome(JobStatus.RUNNING)
                if self.store.cancel_requested(job_id):
                    self.store.update_job(job_id, status=JobStatus.CANCELLED)
                    return Outcome(JobStatus.CANCELLED)
            except (redis.RedisError, LostClaim):
                raise
            except Exception as error:  # a job that cannot run must not take the coordinator down
                log.exception("job %s failed", job_id)
                self.store.update_job(job_id, status=JobStatus.FAILED, error=f"{type(error).__name__}: {error}")
                return Outcome(JobStatus.FAILED)


def wait_ready(settings: Settings, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(settings.redis_url)
    while True:
        try:
            client.ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
