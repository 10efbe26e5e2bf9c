"""Per-tenant quotas on a real uvicorn and a real redis-server: queued or running jobs, and stored bytes.

Two gateways share one Redis, as several gateway processes would, so the counts come from Redis alone.
A job's progress is written through the Store as the coordinator writes it (its documented contract),
so no coordinator or bound worker runs.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from test_gateway_support import Stack, start_stack

from gls_core.nets.zoo import network
from gls_core.training.checkpoint import model_bytes
from services.gateway import RunningGateway, serve
from services.store import JOB_STREAM, JobStatus

MAX_JOBS = 2
MAX_STORED_MB = 1
LIMIT_BYTES = MAX_STORED_MB * 1024 * 1024
TENANTS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace")
JOB: dict[str, Any] = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05,
                       "data": {"dataset": "digits", "batch_size": 32}, "model": {"arch": "fc-16"},
                       "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01, "lr_milestones": []}}
EXAMPLES = 1500
"""Float pixels that are not k/255 are stored as float32: 1500 x 64 x 4 + 1500 x 8 = 396,000 bytes, so two
such datasets fit in 1 MiB and a third does not."""
DATASET_BYTES = EXAMPLES * 64 * 4 + EXAMPLES * 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tokens = ",".join(f"{name}-token={name}" for name in TENANTS)
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=0, tokens=tokens, max_upload_mb=1,
                          tenant_max_jobs=MAX_JOBS, tenant_max_stored_mb=MAX_STORED_MB)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def second_gateway(stack: Stack) -> Iterator[RunningGateway]:
    """Another gateway on the same Redis and settings: what a second gateway process sees."""
    running = serve(stack.settings)
    yield running
    running.stop(grace=1)


def http(stack: Stack, tenant: str, url: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url or stack.url, headers={"Authorization": f"Bearer {tenant}-token"}, timeout=60)


def refused(response: httpx.Response, quota: str, limit: int, usage: int) -> str:
    """The 429's message, after checking that its body names the quota, the limit and the usage."""
    assert response.status_code == 429, response.text
    body = response.json()
    setting = {"jobs": "GLS_TENANT_MAX_JOBS", "stored_bytes": "GLS_TENANT_MAX_STORED_MB"}[quota]
    assert body["quota"] == {"quota": quota, "setting": setting, "limit": limit, "usage": usage}
    assert setting in body["detail"] and "location" not in response.headers
    return str(body["detail"])


def fields_of(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    return {item["field"] for item in response.json()["detail"]}


def dataset_file(seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.001, 0.999, (EXAMPLES, 1, 8, 8)).astype(np.float32)
    y = np.arange(EXAMPLES) % 10
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue(), x, y


def upload_dataset(client: httpx.Client, seed: int) -> httpx.Response:
    content, _, _ = dataset_file(seed)
    return client.post("/v1/datasets", files={"file": (f"data-{seed}.npz", content)})


def model_file(seed: int) -> bytes:
    theta = torch.randn(network("fc-16", "digits").num_params, generator=torch.Generator().manual_seed(seed))
    return model_bytes(theta, "fc-16", "digits")


def quota(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/quota")
    assert response.status_code == 200, response.text
    return dict(response.json())


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[int]:
    """Run the calls in threads released together by a barrier; their status codes."""
    barrier = threading.Barrier(len(calls))
    statuses: list[int] = [0] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        statuses[index] = calls[index]().status_code

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return statuses


# ---------------------------------------------------------------------------------------------- jobs

def test_a_full_job_quota_refuses_that_tenant_only_until_a_job_stops(stack: Stack) -> None:
    alice, bob, store = http(stack, "alice"), http(stack, "bob"), stack.store()
    assert quota(alice)["jobs"] == {"quota": "jobs", "setting": "GLS_TENANT_MAX_JOBS", "limit": MAX_JOBS, "usage": 0}
    first, second = (alice.post("/v1/jobs", json=JOB).json() for _ in range(MAX_JOBS))
    queued = stack.redis.client().xlen(JOB_STREAM)

    message = refused(alice.post("/v1/jobs", json=JOB), "jobs", MAX_JOBS, MAX_JOBS)
    assert message.startswith(f"tenant alice has {MAX_JOBS} queued or running jobs; the limit is {MAX_JOBS} "
                              "(GLS_TENANT_MAX_JOBS)")
    assert [job["id"] for job in alice.get("/v1/jobs").json()] == [first["id"], second["id"]]
    assert stack.redis.client().xlen(JOB_STREAM) == queued  # nothing was queued for the refused one
    assert fields_of(alice.post("/v1/jobs", json={**JOB, "eps": -1})) == {"eps"}  # a bad config is still a 422
    assert bob.post("/v1/jobs", json=JOB).status_code == 201
    assert quota(alice)["jobs"]["usage"] == MAX_JOBS and quota(bob)["jobs"]["usage"] == 1

    # a running job counts until it has stopped, also while its cancel is pending
    store.update_job(first["id"], status=JobStatus.RUNNING, coordinator="c1")
    assert alice.delete(f"/v1/jobs/{first['id']}").json()["cancel_requested"] is True
    refused(alice.post("/v1/jobs", json=JOB), "jobs", MAX_JOBS, MAX_JOBS)
    store.update_job(first["id"], status=JobStatus.CANCELLED)  # the coordinator stops it after its step
    third = alice.post("/v1/jobs", json=JOB)
    assert third.status_code == 201, third.text

    # a queued job is cancelled at once and frees its slot at once; finished and failed jobs do not count
    assert alice.delete(f"/v1/jobs/{second['id']}").json()["status"] == "cancelled"
    fourth = alice.post("/v1/jobs", json=JOB).json()
    refused(alice.post("/v1/jobs", json=JOB), "jobs", MAX_JOBS, MAX_JOBS)
    store.update_job(third.json()["id"], status=JobStatus.SUCCEEDED)
    store.update_job(fourth["id"], status=JobStatus.FAILED, error="boom")
    assert quota(alice)["jobs"]["usage"] == 0
    assert all(alice.post("/v1/jobs", json=JOB).status_code == 201 for _ in range(MAX_JOBS))
    assert len(alice.get("/v1/jobs").json()) == 6 and alice.get(f"/v1/jobs/{first['id']}").json()["status"] == \
        "cancelled"


def test_simultaneous_submits_at_the_last_slot_let_exactly_one_through(stack: Stack,
                                                                       second_gateway: RunningGateway) -> None:
    assert http(stack, "carol").post("/v1/jobs", json=JOB).status_code == 201
    clients = [http(stack, "carol", url) for url in [stack.url, second_gateway.url] * 4]
    statuses = at_once([lambda client=client: client.post("/v1/jobs", json=JOB) for client in clients])
    assert sorted(statuses) == [201] + [429] * (len(clients) - 1)
    assert quota(clients[1])["jobs"]["usage"] == MAX_JOBS == len(stack.store().list_jobs("carol"))


# --------------------------------------------------------------------------------------- stored bytes

def test_an_upload_over_the_storage_quota_is_refused_and_deleting_frees_space(stack: Stack) -> None:
    dave, erin, store = http(stack, "dave"), http(stack, "erin"), stack.store()
    first, second = (upload_dataset(dave, seed).json() for seed in (1, 2))
    assert quota(dave)["stored_bytes"] == {"quota": "stored_bytes", "setting": "GLS_TENANT_MAX_STORED_MB",
                                           "limit": LIMIT_BYTES, "usage": 2 * DATASET_BYTES}
    keys = sorted(stack.redis.client().keys("gls:dataset:*"))

    message = refused(upload_dataset(dave, 3), "stored_bytes", LIMIT_BYTES, 2 * DATASET_BYTES)
    assert message.startswith(f"tenant dave stores {2 * DATASET_BYTES} bytes (0.76 MiB) of uploaded models and "
                              f"datasets; this upload needs {DATASET_BYTES} bytes more, over the limit of "
                              f"{LIMIT_BYTES} bytes (1.00 MiB, GLS_TENANT_MAX_STORED_MB)")
    assert sorted(stack.redis.client().keys("gls:dataset:*")) == keys  # the refused upload wrote nothing
    assert [item["id"] for item in dave.get("/v1/datasets").json()] == [first["id"], second["id"]]
    for info, seed in ((first, 1), (second, 2)):  # the earlier uploads are intact
        _, x, y = dataset_file(seed)
        _, stored_x, stored_y = store.dataset_arrays(info["id"], "dave")
        assert torch.equal(stored_x, torch.from_numpy(x)) and torch.equal(stored_y, torch.from_numpy(y))
    assert upload_dataset(erin, 3).status_code == 201  # another tenant's quota is its own

    # models count too; a model that fits is stored, and its delete gives back exactly its bytes
    model = dave.post("/v1/models", files={"file": ("model.safetensors", model_file(0))})
    assert model.status_code == 201, model.text
    model_size = len(store.model_data(model.json()["id"], "dave"))
    assert quota(dave)["stored_bytes"]["usage"] == 2 * DATASET_BYTES + model_size
    assert dave.delete(f"/v1/models/{model.json()['id']}").status_code == 200
    assert dave.delete(f"/v1/models/{model.json()['id']}").status_code == 404  # gives nothing back twice
    assert quota(dave)["stored_bytes"]["usage"] == 2 * DATASET_BYTES

    assert dave.delete(f"/v1/datasets/{first['id']}").status_code == 200
    assert quota(dave)["stored_bytes"]["usage"] == DATASET_BYTES
    third = upload_dataset(dave, 3)
    assert third.status_code == 201, third.text
    assert quota(dave)["stored_bytes"]["usage"] == 2 * DATASET_BYTES


def test_trained_models_are_not_counted(stack: Stack) -> None:
    data = model_file(1)
    stack.store().put_model("frank", data, "fc-16", "digits", network("fc-16", "digits").num_params)  # as a job does
    frank = http(stack, "frank")
    assert quota(frank)["stored_bytes"]["usage"] == 0 and len(frank.get("/v1/models").json()) == 1
    for model in frank.get("/v1/models").json():
        assert frank.delete(f"/v1/models/{model['id']}").status_code == 200
    assert quota(frank)["stored_bytes"]["usage"] == 0


def test_simultaneous_uploads_at_the_last_bytes_let_exactly_one_through(stack: Stack,
                                                                        second_gateway: RunningGateway) -> None:
    assert upload_dataset(http(stack, "grace"), 4).status_code == 201  # one more fits, not two
    content, _, _ = dataset_file(5)
    clients = [http(stack, "grace", url) for url in [stack.url, second_gateway.url] * 2]
    statuses = at_once([lambda client=client: client.post("/v1/datasets", files={"file": ("d.npz", content)})
                        for client in clients])
    assert sorted(statuses) == [201] + [429] * (len(clients) - 1)
    assert quota(clients[0])["stored_bytes"]["usage"] == 2 * DATASET_BYTES
    assert len(clients[0].get("/v1/datasets").json()) == 2
