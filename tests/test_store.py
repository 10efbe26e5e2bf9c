"""The Redis contract, against a real redis-server: tenants, claims, atomic step commits, chunked datasets."""

import time

import pytest
import torch
from servers import RedisServer

from services.store import JobStatus, LostClaim, NotFound, Store, owner_token


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
    assert store.keep_claim("a", claim_a[0], claim_a[1])  # a is alive, b went silent
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


def test_a_coordinator_whose_claim_was_taken_over_can_commit_nothing(store: Store) -> None:
    job = store.submit_job("t", {})
    claim_a = store.claim_job("a", block_ms=10, stale_ms=60_000)
    assert claim_a is not None
    store.commit(job.id, b"state-1", {"step": 1}, [{"kind": "step", "step": 1}], owner_token("a", claim_a[0]))
    time.sleep(0.3)  # a stalls
    claim_b = store.claim_job("b", block_ms=10, stale_ms=200)
    assert claim_b == claim_a
    with pytest.raises(LostClaim, match="no longer owned"):
        store.commit(job.id, b"state-2a", {"step": 2}, [{"kind": "step", "step": 2}], owner_token("a", claim_a[0]))
    assert not store.keep_claim("a", claim_a[0], job.id)  # a's heartbeat no longer takes the entry back
    assert store.keep_claim("b", claim_b[0], job.id)
    store.commit(job.id, b"state-2b", {"step": 2}, [{"kind": "step", "step": 2}], owner_token("b", claim_b[0]))
    assert store.checkpoint(job.id) == (b"state-2b", {"step": 2})
    assert [row["step"] for row in store.metrics(job.id)] == [1, 2]
    with pytest.raises(LostClaim):
        store.yield_job(owner_token("a", claim_a[0]), claim_a[0], job.id, "yielded")
    assert store.running_by_tenant() == {"t": 1} and store.queued_jobs() == []


def test_a_free_coordinator_takes_the_tenant_with_the_fewest_running_then_least_recently_served(
        store: Store) -> None:
    a_jobs = [store.submit_job("alice", {}) for _ in range(3)]
    b_job = store.submit_job("bob", {})
    first = store.claim_job("x", block_ms=10, stale_ms=60_000)
    assert first is not None and first[1] == a_jobs[0].id  # nobody served yet: both 0 running, alice by name
    second = store.claim_job("y", block_ms=10, stale_ms=60_000)
    assert second is not None and second[1] == b_job.id  # alice has 1 running, bob none: bob's job jumps ahead
    assert [job.job_id for job in store.queued_jobs()] == [a_jobs[1].id, a_jobs[2].id]  # each once, in order
    assert store.running_by_tenant() == {"alice": 1, "bob": 1}
    assert set(store.served()) == {"alice", "bob"}
    assert store.should_yield("alice") is None  # only alice waits
    store.ack(second[0], second[1])
    store.update_job(b_job.id, status=JobStatus.SUCCEEDED)
    store.submit_job("bob", {})
    assert store.should_yield("alice") == "bob"  # bob waits with 0 running, alice runs 1


def test_a_job_that_yields_is_queued_again_and_goes_before_its_tenants_newer_jobs(store: Store) -> None:
    older = store.submit_job("alice", {})
    newer = store.submit_job("alice", {})
    claim = store.claim_job("x", block_ms=10, stale_ms=60_000)
    assert claim is not None and claim[1] == older.id
    store.yield_job(owner_token("x", claim[0]), claim[0], older.id, "yielded at step 3")
    assert store.get_job(older.id).status == JobStatus.QUEUED
    assert store.redis.hget(f"gls:job:{older.id}", "note") == b"yielded at step 3"
    assert store.get_job(older.id).note == "yielded at step 3"  # what GET /v1/jobs/{id} shows
    assert [job.job_id for job in store.queued_jobs()] == [newer.id, older.id]
    again = store.claim_job("y", block_ms=10, stale_ms=60_000)
    assert again is not None and again[1] == older.id  # the older job, read after moving the newer one back
    assert [job.job_id for job in store.queued_jobs()] == [newer.id]
    assert store.running_by_tenant() == {"alice": 1}


def test_a_crash_between_reading_and_moving_an_entry_loses_no_job(store: Store) -> None:
    job = store.submit_job("alice", {})
    store.ensure_group()
    read = store.read_next("a", None)  # a reads the entry, then dies before it moves or runs it
    assert read is not None and read[1] == job.id
    assert store.queued_jobs() == [] and store.running_by_tenant() == {"alice": 1}
    assert store.claim_job("a", block_ms=10, stale_ms=60_000) == read  # a, restarted under its name: at once
    time.sleep(0.3)
    assert store.claim_job("b", block_ms=10, stale_ms=200) == read  # or anyone, once the entry is stale
