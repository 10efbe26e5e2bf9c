"""Acknowledged writes survive a Redis crash: a real redis-server, started with the project's options
(``services.cluster.DURABLE_AOF``), is SIGKILLed right after the gateway answered 201 to uploads and submissions
and the Store acknowledged steps, many times; after each restart every acknowledged write is there, intact."""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from servers import RedisServer
from test_gateway_support import ALICE, Stack, digits_model, start_stack

from services.cluster import DURABLE_AOF
from services.gateway import serve
from services.settings import Settings
from services.store import durability_problem

ROUNDS = 10
JOB = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05, "data": {"dataset": "digits", "batch_size": 32},
       "model": {"arch": "fc-16"}, "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01, "lr_milestones": []}}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path / "redis", workers=0, tenant_max_stored_mb=4096, max_upload_mb=64,
                          tenant_max_jobs=1000)
    yield running
    running.stop()


@dataclass
class Acknowledged:
    models: dict[str, bytes] = field(default_factory=dict)  # id -> sha256 of its theta
    datasets: dict[str, bytes] = field(default_factory=dict)  # id -> sha256 of the pixels as uploaded
    jobs: set[str] = field(default_factory=set)
    steps: dict[str, int] = field(default_factory=dict)  # job id -> last acknowledged step


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dataset_file(rng: np.random.Generator) -> tuple[bytes, bytes]:
    """A 4 MiB .npz of float pixels that stay float32 in Redis (large writes make fsyncs slow): (file, sha256)."""
    x = rng.random((1024, 1, 32, 32), dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.arange(1024) % 10)
    return buffer.getvalue(), digest(x.tobytes())


def test_every_acknowledged_write_survives_sigkill(stack: Stack) -> None:
    assert durability_problem(stack.redis.client()) is None
    rng = np.random.default_rng(0)
    _, theta = digits_model()
    model_file = save_tensors({"theta": theta}, {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})
    acknowledged, gaps = Acknowledged(), []
    for round_ in range(ROUNDS):
        with stack.http(ALICE) as alice:
            created = alice.post("/v1/jobs", json=JOB)
            assert created.status_code == 201, created.text
            step_job = created.json()["id"]
            acknowledged.jobs.add(step_job)
            store = stack.store()
            writes = ["model", "dataset", "job", "step"]
            writes = writes[round_ % 4:] + writes[:round_ % 4]  # each kind is the last one before a kill
            for kind in writes:
                if kind == "model":
                    created = alice.post("/v1/models", files={"file": ("m.safetensors", model_file)})
                    assert created.status_code == 201, created.text
                    acknowledged.models[created.json()["id"]] = digest(theta.numpy().tobytes())
                elif kind == "dataset":
                    data, pixels = dataset_file(rng)
                    created = alice.post("/v1/datasets", files={"file": ("d.npz", data)})
                    assert created.status_code == 201, created.text
                    acknowledged.datasets[created.json()["id"]] = pixels
                elif kind == "job":
                    created = alice.post("/v1/jobs", json={**JOB, "seed": round_})
                    assert created.status_code == 201, created.text
                    acknowledged.jobs.add(created.json()["id"])
                else:  # a coordinator's step: checkpoint and metrics in one transaction (Store.commit returned)
                    for step in (1, 2):
                        state = save_tensors({"theta": torch.from_numpy(rng.random(250_000, dtype=np.float32))})
                        store.commit(step_job, state, {"step": step}, [{"kind": "step", "step": step}])
                        acknowledged.steps[step_job] = step
            answered = time.monotonic()
            stack.redis.kill()  # SIGKILL
            gaps.append(time.monotonic() - answered)
            store.redis.close()
        stack.redis.start()  # the same port, directory and append-only file
        check(stack, acknowledged)
    print(f"\n{ROUNDS} SIGKILLs, each {1000 * min(gaps):.1f}-{1000 * max(gaps):.1f} ms after the last acknowledged "
          f"write; found all {len(acknowledged.models)} models, {len(acknowledged.datasets)} datasets, "
          f"{len(acknowledged.jobs)} jobs and {2 * len(acknowledged.steps)} steps")


def check(stack: Stack, acknowledged: Acknowledged) -> None:
    store = stack.store()
    try:
        for model_id, sha in acknowledged.models.items():
            stored = load_tensors(store.model_data(model_id, "alice"))["theta"]
            assert digest(stored.numpy().tobytes()) == sha, model_id
        for dataset_id, sha in acknowledged.datasets.items():
            _, x, _ = store.dataset_arrays(dataset_id, "alice")
            assert digest(x.numpy().tobytes()) == sha, dataset_id
        for job_id in acknowledged.jobs:
            assert store.get_job(job_id, "alice").status.value == "queued", job_id
        for job_id, step in acknowledged.steps.items():
            position = store.checkpoint(job_id)
            assert position is not None and position[1]["step"] == step, job_id
            assert [row["step"] for row in store.metrics(job_id)] == list(range(1, step + 1)), job_id
    finally:
        store.redis.close()
    deadline = time.monotonic() + 30
    with stack.http(ALICE) as alice:  # and the gateway serves them again (its connections reconnect)
        while alice.get("/v1/jobs").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        listed = {job["id"] for job in alice.get("/v1/jobs").json()}
    assert acknowledged.jobs <= listed


def test_a_redis_that_could_lose_acknowledged_writes_is_named_at_start(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path).start()
    try:
        client = server.client()
        assert durability_problem(client) is None and list(DURABLE_AOF[-2:]) == ["--appendfsync", "always"]
        client.config_set("appendfsync", "everysec")
        settings = Settings(redis_url=server.url, gateway_host="127.0.0.1", gateway_port=0, certifier_port=0,
                            tokens=f"{ALICE}=alice", log_level="warning")
        with caplog.at_level(logging.WARNING, logger="services.gateway"):
            gateway = serve(settings)
            gateway.stop(grace=1)
        assert "Redis is not durable: appendfsync is 'everysec'" in caplog.text
        client.config_set("appendonly", "no")
        assert "appendonly is off" in str(durability_problem(client))
    finally:
        server.stop()
