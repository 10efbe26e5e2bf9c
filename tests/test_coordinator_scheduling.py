"""Fencing and fair scheduling with real Redis and real gRPC workers: a coordinator that lost its claim commits
nothing more, tenants take turns, and neither changes a single weight."""

import logging
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from test_coordinator import CONFIG, cluster, in_process, run_coordinator, trained_weights, wait_for

from services.bound_worker.server import RunningWorker
from services.settings import Settings
from services.store import Store

__all__ = ["cluster"]  # the fixture, shared with tests/test_coordinator.py


def with_schedule(seed: int, epochs: int) -> dict[str, Any]:
    milestones = CONFIG["schedule"]["lr_milestones"] if epochs > 1 else []
    return {**CONFIG, "seed": seed, "schedule": {**CONFIG["schedule"], "epochs": epochs, "lr_milestones": milestones}}


def step_rows(store: Store, job_id: str) -> list[int]:
    return [row["step"] for row in store.metrics(job_id) if row["kind"] == "step"]


def status_events(store: Store, job_id: str) -> list[tuple[tuple[int, int], dict[str, Any]]]:
    """(stream id as a comparable pair, event) of the job's status changes; ids order events across jobs."""
    found = []
    for event_id, event in store.read_events(job_id, count=100_000):
        if event["type"] == "status":
            millis, seq = event_id.split("-")
            found.append(((int(millis), int(seq)), event))
    return found


def first_time(events: list[tuple[tuple[int, int], dict[str, Any]]], status: str) -> tuple[int, int]:
    return next(at for at, event in events if event.get("status") == status)


def test_a_coordinator_whose_claim_was_taken_over_commits_nothing_more(
        cluster: tuple[Settings, list[RunningWorker]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings, _ = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    config = with_schedule(7, 30)
    job = store.submit_job("alice", config)
    # "first" refreshes its claim only every 7.5 s, so to "second" (stale after 0.5 s) it looks stalled while it
    # keeps computing: the takeover happens mid-run and first's next commit must be refused. Second needs a second
    # or two to take over; 90 steps keep first busy that long even on an idle machine.
    first, first_thread = run_coordinator(settings.model_copy(update={"coordinator_id": "first", "job_stale_s": 30.0}))
    wait_for(store, job.id, lambda j: j.step >= 1)
    with caplog.at_level(logging.WARNING, logger="gls.coordinator"):
        second, second_thread = run_coordinator(settings.model_copy(update={"coordinator_id": "second",
                                                                           "job_stale_s": 0.5}))
        try:
            wait_for(store, job.id, lambda j: j.status.finished)
        finally:
            for coordinator, thread in ((first, first_thread), (second, second_thread)):
                coordinator.stop()
                thread.join(30)
    refused = [record.getMessage() for record in caplog.records if "leaving it to its new owner" in record.getMessage()]
    assert refused and "'first" in refused[0] and "'second" in refused[0]
    assert store.get_job(job.id).coordinator == "second"
    assert step_rows(store, job.id) == list(range(1, 91))  # each step once: first wrote none after the takeover
    assert torch.equal(trained_weights(store, job.id), in_process(tmp_path, config))


def test_tenants_take_turns_and_every_job_ends_with_the_undisturbed_weights(
        cluster: tuple[Settings, list[RunningWorker]], tmp_path: Path) -> None:
    settings, _ = cluster
    store = Store(redis.Redis.from_url(settings.redis_url))
    # a1 (36 steps, over a second even on an idle machine) runs many times past one 0.2 s slice, so it must
    # yield to bob before it ends; the others are short
    configs = {"a1": with_schedule(11, 12), "a2": with_schedule(12, 1), "a3": with_schedule(13, 1),
               "b1": with_schedule(21, 2)}
    jobs = {name: store.submit_job("alice" if name.startswith("a") else "bob", config)
            for name, config in configs.items()}  # alice's three, then bob's one
    coordinator, thread = run_coordinator(settings.model_copy(update={"job_slice_s": 0.2}))
    try:
        for job in jobs.values():
            wait_for(store, job.id, lambda j: j.status.finished, timeout=300)
    finally:
        coordinator.stop()
        thread.join(30)
    events = {name: status_events(store, job.id) for name, job in jobs.items()}
    assert first_time(events["b1"], "running") < first_time(events["a2"], "running")  # b's job jumped the queue
    assert first_time(events["b1"], "running") < first_time(events["a1"], "succeeded")  # a1 yielded its turn
    assert any("yielded at step" in event.get("note", "") for _, event in events["a1"])
    assert all(store.get_job(job.id).note == "" for job in jobs.values())  # cleared when each ran again
    for name, job in jobs.items():
        total = store.get_job(job.id).total_steps
        assert step_rows(store, job.id) == list(range(1, total + 1)), name
        assert torch.equal(trained_weights(store, job.id), in_process(tmp_path / name, configs[name])), name
