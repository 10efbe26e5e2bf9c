"""The Redis contract, against a real redis-server: tenants, claims, atomic step commits, chunked datasets."""

import time

import pytest
import torch
from servers import RedisServer

from services.store import JobStatus, NotFound, Store


@pytest.fixture
def store(redis_server: RedisServer) -> Store:
    return Store(redis_server.client())


def test_jobs_are_per_tenant(store: Store) -> None:
    job = store.submit_job("alice", {"estimator": "pgpe"}, name="a")
    assert store.get_job(job.id, "alice").config == {"estimator": "pgpe"}
    with pytest.raises(NotFound):
        store.get_job(job.id, "bob")
    with pytest.raises(NotFound):
        store.request_cancel(job.id, "bob")
    assert [j.id for j in store.list_jobs("alice")] == [job.id] and store.list_jobs("bob") == []
    assert store.request_cancel(job.id, "alice").status == JobStatus.CANCELLED


def test_claims_are_shared_and_stale_claims_are_taken_over(store: Store) -> None:
    first = store.submit_job("t", {})
    second = store.submit_job("t", {})
    claim_a = store.claim_job("a", block_ms=10, stale_ms=60_000)
    claim_b = store.claim_job("b", block_ms=10, stale_ms=60_000)
    assert claim_a is not None and claim_b is not None
    assert {claim_a[1], claim_b[1]} == {first.id, second.id}
    assert store.claim_job("c", block_ms=10, stale_ms=60_000) is None
    time.sleep(0.3)
    store.keep_claim("a", claim_a[0])  # a is alive, b went silent
    taken = store.claim_job("c", block_ms=10, stale_ms=200)
    assert taken == claim_b
    store.ack(claim_a[0])
    store.ack(taken[0])
    time.sleep(0.3)
    assert store.claim_job("d", block_ms=10, stale_ms=200) is None


def test_a_coordinator_resumes_the_job_it_left_without_waiting_for_its_claim_to_go_stale(store: Store) -> None:
    job = store.submit_job("t", {})
    claim = store.claim_job("a", block_ms=10, stale_ms=60_000)
    assert claim is not None and claim[1] == job.id
    assert store.claim_job("b", block_ms=10, stale_ms=60_000) is None  # another coordinator waits for staleness
    assert store.claim_job("a", block_ms=10, stale_ms=60_000) == claim  # its own run, abandoned: at once
    store.ack(claim[0])
    assert store.claim_job("a", block_ms=10, stale_ms=60_000) is None  # finished: nothing left


def test_commit_is_atomic_and_survives_a_redis_restart(redis_server: RedisServer) -> None:
    store = Store(redis_server.client())
    job = store.submit_job("t", {})
    store.commit(job.id, b"state-1", {"step": 1}, [{"kind": "step", "step": 1, "loss": 2.0}])
    store.commit(job.id, b"state-2", {"step": 2}, [{"kind": "step", "step": 2, "loss": 1.5}])
    redis_server.kill()
    redis_server.start()
    store = Store(redis_server.client())
    assert store.checkpoint(job.id) == (b"state-2", {"step": 2})
    assert [row["loss"] for row in store.metrics(job.id)] == [2.0, 1.5]
    assert store.get_job(job.id).step == 2
    events = [event for _, event in store.read_events(job.id)]
    assert [event["step"] for event in events if event["type"] == "metrics"] == [1, 2]


def test_datasets_round_trip_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.store.DATASET_CHUNK_BYTES", 1000)
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (50,))
    info = store.put_dataset("alice", "mine", x, y, 10)
    assert info.chunks > 3
    _, images, labels = store.dataset_arrays(info.id, "alice")
    assert torch.equal(images, x.float() / 255) and torch.equal(labels, y)
    with pytest.raises(NotFound):
        store.dataset_arrays(info.id, "bob")
    store.delete_dataset(info.id, "alice")
    with pytest.raises(NotFound):
        store.dataset_info(info.id)


def test_models_are_per_tenant(store: Store) -> None:
    info = store.put_model("alice", b"bytes", "cnn3", "mnist", 5170)
    assert store.model_data(info.id, "alice") == b"bytes"
    assert [m.id for m in store.list_models("alice")] == [info.id]
    with pytest.raises(NotFound):
        store.model_data(info.id, "bob")
    with pytest.raises(NotFound):
        store.delete_model(info.id, "bob")
    store.delete_model(info.id, "alice")
    assert store.list_models("alice") == []
