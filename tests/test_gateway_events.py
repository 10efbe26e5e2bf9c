"""Server-sent events of a job: replay, resume after Last-Event-ID, live follow, heartbeats and the end.

The job's progress is written the way the coordinator writes it (``Store.update_job`` for status,
``Store.commit`` for acknowledged steps), into a real Redis, and read back over a real HTTP stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from safetensors.torch import save as save_tensors
from test_gateway_support import ALICE, BOB, Stack, start_stack

from services.client import ClientError
from services.store import JobStatus

JOB = {"estimator": "grad", "data": {"dataset": "digits"}, "model": {"arch": "fc-16"}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=0)
    yield running
    running.stop()


def step(stack: Stack, job_id: str, number: int) -> None:
    """What the coordinator does when a step is durable: checkpoint and metrics in one transaction."""
    import torch

    stack.store().commit(job_id, save_tensors({"theta": torch.zeros(3)}), {"step": number},
                         [{"kind": "step", "step": number, "loss": 1.0 / number, "stage": "main"}])


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_replay_then_follow_live_until_the_job_ends(stack: Stack) -> None:
    client = stack.client()
    job = client.submit(JOB)
    store = stack.store()
    store.update_job(job["id"], status=JobStatus.RUNNING, total_steps=3)
    step(stack, job["id"], 1)

    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(client.events(job["id"])) or None, daemon=True)
    reader.start()
    wait_for(lambda: len(seen) >= 2)  # the history arrives first
    assert [event["type"] for event in seen] == ["status", "metrics"]
    step(stack, job["id"], 2)
    step(stack, job["id"], 3)
    store.update_job(job["id"], status=JobStatus.SUCCEEDED, model_id=job["id"])
    reader.join(10)
    assert not reader.is_alive()

    assert [event["type"] for event in seen] == ["status", "metrics", "metrics", "metrics", "status", "end"]
    assert [event["step"] for event in seen if event["type"] == "metrics"] == [1, 2, 3]
    assert seen[0]["status"] == "running" and seen[0]["total_steps"] == "3"
    assert seen[-1]["status"] == "succeeded" and seen[-1]["job"]["model_id"] == job["id"]
    ids = [event["event_id"] for event in seen[:-1]]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)

    # resuming after any event gives exactly the rest; a finished job's stream ends by itself
    resumed = list(client.events(job["id"], after=ids[1]))
    assert [event.get("event_id") for event in resumed] == [*ids[2:], None]
    assert [event["type"] for event in list(client.events(job["id"]))] == [event["type"] for event in seen]


def test_an_idle_stream_sends_heartbeats_and_a_cancel_ends_it(stack: Stack) -> None:
    alice = stack.http(ALICE)
    job = alice.post("/v1/jobs", json=JOB).json()
    stack.store().update_job(job["id"], status=JobStatus.RUNNING)
    lines: list[str] = []
    with alice.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        for line in response.iter_lines():
            lines.append(line)
            if lines.count(": heartbeat") == 2:  # sse_heartbeat_s is 0.2 s here
                assert alice.delete(f"/v1/jobs/{job['id']}").json()["cancel_requested"] is True
                stack.store().update_job(job["id"], status=JobStatus.CANCELLED)  # the coordinator stops
    assert lines[0] == "retry: 2000"
    assert "event: end" in lines and lines[-2].startswith("data: {\"type\":\"end\",\"status\":\"cancelled\"")


def test_resume_points_are_validated_and_tenants_separated(stack: Stack) -> None:
    alice = stack.http(ALICE)
    job = alice.post("/v1/jobs", json=JOB).json()
    bad = alice.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "drop table"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "Last-Event-ID"
    assert alice.get(f"/v1/jobs/{job['id']}/events", params={"after": "1-x"}).json()["detail"][0]["field"] == "after"
    assert stack.http(BOB).get(f"/v1/jobs/{job['id']}/events").status_code == 404
    with pytest.raises(ClientError) as error:
        list(stack.client(BOB).events(job["id"]))
    assert error.value.status == 404

    alice.delete(f"/v1/jobs/{job['id']}")
    after = alice.get(f"/v1/jobs/{job['id']}/events", params={"after": "99999999999999-0"})
    assert after.status_code == 200 and "event: end" in after.text and "event: status" not in after.text


def test_streams_end_when_the_gateway_stops(tmp_path: Any) -> None:
    stack = start_stack(tmp_path, workers=0)
    try:
        alice = stack.http(ALICE)
        job = alice.post("/v1/jobs", json=JOB).json()
        stack.store().update_job(job["id"], status=JobStatus.RUNNING)
        with alice.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            lines = response.iter_lines()
            assert next(lines) == "retry: 2000"
            started = time.monotonic()
            stack.gateway.stop(grace=1)
            try:
                rest = list(lines)
            except httpx.RemoteProtocolError:  # the server may cut the stream instead of ending it
                rest = []
        assert time.monotonic() - started < 5 and "event: end" not in rest
    finally:
        stack.stop()
