"""The coordinator with real Redis and real gRPC workers: same weights as in process, failures included."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from servers import RedisServer

from gls_core.training import Trainer, parse_config
from gls_core.training.checkpoint import model_from_bytes
from services.bound_worker import serve
from services.bound_worker.server import RunningWorker
from services.coordinator import Coordinator
from services.settings import Settings
from services.store import JobStatus, Store

CONFIG: dict[str, Any] = {
    "seed": 5, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny", "init": "kaiming"},
    "schedule": {"epochs": 2, "lr": 0.01, "lr_milestones": [1], "eps_ramp_epochs": 1, "steps_per_epoch": 3},
    "pgpe": {"popsize": 16, "sigma_init": 0.01},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
    "block_members": 4,
    "device": "cpu",
}


def settings_for(redis_server: RedisServer, **fields: Any) -> Settings:
    values: dict[str, Any] = {"redis_url": redis_server.url, "worker_port": 0, "worker_host": "127.0.0.1",
                              "heartbeat_s": 0.2, "heartbeat_ttl_s": 1.0, "job_stale_s": 2.0, "rpc_timeout_s": 30.0,
                              "device": "cpu", **fields}
    return Settings(**values)


@pytest.fixture
def cluster(redis_server: RedisServer) -> Iterator[tuple[Settings, list[RunningWorker]]]:
    settings = settings_for(redis_server)
    workers = [serve(settings) for _ in range(2)]
    yield settings, workers
    for worker in workers:
        worker.stop()


def in_process(tmp_path: Path, config: dict[str, Any]) -> torch.Tensor:
    return Trainer(parse_config(config), tmp_path / "local").run().theta


def run_coordinator(settings: Settings) -> tuple[Coordinator, threading.Thread]:
    coordinator = Coordinator(settings)
    thread = threading.Thread(target=coordinator.run_forever, daemon=True)
    thread.start()
    return coordinator, thread


def wait_for(store: Store, job_id: str, predicate: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate(store.get_job(job_id)):
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: {store.get_job(job_id)}")


def trained_weights(store: Store, job_id: str) -> torch.Tensor:
    job = store.get_job(job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    return model_from_bytes(store.model_data(job.model_id, job.tenant))[1]


def test_a_job_through_two_workers_equals_the_in_process_run(cluster: tuple[Settings, list[RunningWorker]],
                                                             tmp_path: Path) -> None:
    settings, workers = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    job = store.submit_job("alice", CONFIG)
    coordinator, thread = run_coordinator(settings)
    try:
        wait_for(store, job.id, lambda j: j.status.finished)
    finally:
        coordinator.stop()
        thread.join(10)
    assert torch.equal(trained_weights(store, job.id), in_process(tmp_path, CONFIG))
    rows = store.metrics(job.id)
    assert [row["stage"] for row in rows if row["kind"] == "epoch"] == ["init", "main", "main"]
    assert len([row for row in rows if row["kind"] == "step"]) == 6
    assert store.get_job(job.id).total_steps == 6
    assert all(worker.service.in_flight == 0 for worker in workers)


def test_a_worker_killed_mid_job_changes_nothing(cluster: tuple[Settings, list[RunningWorker]],
                                                 tmp_path: Path) -> None:
    settings, workers = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    job = store.submit_job("alice", CONFIG)
    coordinator, thread = run_coordinator(settings)
    try:
        wait_for(store, job.id, lambda j: j.step >= 2)
        workers[0].stop()
        wait_for(store, job.id, lambda j: j.status.finished)
    finally:
        coordinator.stop()
        thread.join(10)
    assert torch.equal(trained_weights(store, job.id), in_process(tmp_path, CONFIG))


def test_cancel_is_honoured_within_a_step(cluster: tuple[Settings, list[RunningWorker]]) -> None:
    settings, _ = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    long = {**CONFIG, "schedule": {**CONFIG["schedule"], "epochs": 50}}
    job = store.submit_job("alice", long)
    coordinator, thread = run_coordinator(settings)
    try:
        wait_for(store, job.id, lambda j: j.step >= 1)
        store.request_cancel(job.id, "alice")
        step_at_cancel = store.get_job(job.id).step
        wait_for(store, job.id, lambda j: j.status.finished, timeout=30)
    finally:
        coordinator.stop()
        thread.join(10)
    final = store.get_job(job.id)
    assert final.status == JobStatus.CANCELLED
    assert final.step <= step_at_cancel + 1


def test_a_long_step_shows_its_members_and_a_cancel_stops_it_within_the_step(
        cluster: tuple[Settings, list[RunningWorker]]) -> None:
    """A step of 4,096 members (many seconds): the job shows the members done, and a cancel abandons the step
    in progress (the job ends at the step it was in), the workers stopping between blocks."""
    settings, workers = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    long_steps = {**CONFIG, "pgpe": {"popsize": 4096, "sigma_init": 0.01}}
    job = store.submit_job("alice", long_steps)
    coordinator, thread = run_coordinator(settings)
    try:
        wait_for(store, job.id, lambda j: 0 < j.members_done < j.members)
        in_step = store.get_job(job.id)
        store.request_cancel(job.id, "alice")
        wait_for(store, job.id, lambda j: j.status.finished, timeout=30)
        wait_for(store, job.id, lambda j: all(worker.service.in_flight == 0 for worker in workers), timeout=30)
    finally:
        coordinator.stop()
        thread.join(10)
    final = store.get_job(job.id)
    assert in_step.members == 4096 and in_step.status == JobStatus.RUNNING
    assert final.status == JobStatus.CANCELLED and final.step == in_step.step
    assert sum(worker.service.abandoned for worker in workers) >= 1


def test_a_coordinator_that_goes_silent_is_replaced_and_the_result_is_unchanged(
        cluster: tuple[Settings, list[RunningWorker]], tmp_path: Path) -> None:
    settings, _ = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    job = store.submit_job("alice", CONFIG)
    first, first_thread = run_coordinator(settings_for_consumer(settings, "first"))
    wait_for(store, job.id, lambda j: j.step >= 2)
    first.stop()  # stops after its current step without acknowledging the job: a takeover must resume it
    first_thread.join(30)
    assert not store.get_job(job.id).status.finished
    second, second_thread = run_coordinator(settings_for_consumer(settings, "second"))
    try:
        wait_for(store, job.id, lambda j: j.status.finished)
    finally:
        second.stop()
        second_thread.join(10)
    assert store.get_job(job.id).coordinator == "second"
    assert torch.equal(trained_weights(store, job.id), in_process(tmp_path, CONFIG))


def settings_for_consumer(settings: Settings, name: str) -> Settings:
    return settings.model_copy(update={"coordinator_id": name})


def test_a_job_that_cannot_run_fails_with_its_reason(cluster: tuple[Settings, list[RunningWorker]]) -> None:
    settings, _ = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    job = store.submit_job("alice", {**CONFIG, "model": {"arch": "cnn3-tiny", "checkpoint_id": "model-missing"}})
    coordinator, thread = run_coordinator(settings)
    try:
        wait_for(store, job.id, lambda j: j.status.finished)
    finally:
        coordinator.stop()
        thread.join(10)
    failed = store.get_job(job.id)
    assert failed.status == JobStatus.FAILED and "model-missing" in failed.error
