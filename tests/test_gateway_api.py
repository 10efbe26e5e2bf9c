"""The REST API on a real uvicorn and a real redis-server: auth, tenants, jobs, datasets, models, operations.

A job's progress is simulated by calling the Store as the coordinator does (its documented
contract), so these tests need no coordinator and no bound worker.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from safetensors.torch import save_file
from test_gateway_support import ALICE, BOB, Stack, digits_model, start_stack

from gls_core.training.checkpoint import load_model, save_model

DIGITS_JOB: dict[str, Any] = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05,
                              "data": {"dataset": "digits", "batch_size": 32}, "model": {"arch": "fc-16"},
                              "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01, "lr_milestones": []}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=0, max_upload_mb=1)
    yield running
    running.stop()


def fields(response: Any) -> dict[str, str]:
    """{field: reason} of a 422 answer."""
    assert response.status_code == 422, response.text
    return {item["field"]: item["msg"] for item in response.json()["detail"]}


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- auth

def test_every_v1_route_needs_a_known_bearer_token(stack: Stack) -> None:
    anonymous = stack.http(token=None)
    for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/job-x/events"),
                         ("GET", "/v1/datasets"), ("POST", "/v1/models"), ("POST", "/v1/certify")]:
        response = anonymous.request(method, path)
        assert response.status_code == 401, (method, path)
        assert "Bearer" in response.json()["detail"] and response.headers["www-authenticate"] == "Bearer"
    wrong = stack.http(token="nope").get("/v1/jobs")
    assert wrong.status_code == 401 and wrong.json()["detail"] == "invalid bearer token"
    basic = anonymous.get("/v1/jobs", headers={"Authorization": f"Basic {ALICE}"})
    assert basic.status_code == 401
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert anonymous.get(path).status_code == 200, path


# ---------------------------------------------------------------------------------------------- jobs

def test_jobs_are_submitted_listed_and_cancelled_per_tenant(stack: Stack) -> None:
    alice, bob = stack.http(ALICE), stack.http(BOB)
    created = alice.post("/v1/jobs", json={**DIGITS_JOB, "name": "tiny"})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["tenant"] == "alice" and job["name"] == "tiny"
    assert job["total_steps"] == 0 and job["step"] == 0
    assert job["config"]["pgpe"]["popsize"] == 256  # stored with every default filled in
    assert stack.store().get_job(job["id"]).status.value == "queued"

    assert job["id"] in [item["id"] for item in alice.get("/v1/jobs").json()]
    assert job["id"] not in [item["id"] for item in bob.get("/v1/jobs").json()]
    assert alice.get(f"/v1/jobs/{job['id']}").json()["config"] == job["config"]

    # another tenant's job is answered exactly like a missing one
    theirs, missing = bob.get(f"/v1/jobs/{job['id']}"), bob.get("/v1/jobs/job-0000000000000000")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(job["id"], "X") == missing.json()["detail"].replace("job-0000000000000000",
                                                                                                "X")
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.get(f"/v1/jobs/{job['id']}/metrics").status_code == 404
    assert bob.get(f"/v1/jobs/{job['id']}/events").status_code == 404
    assert alice.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"

    cancelled = alice.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancel_requested"] is True
    assert alice.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # idempotent


def test_config_errors_name_each_field(stack: Stack) -> None:
    alice = stack.http(ALICE)
    errors = fields(alice.post("/v1/jobs", json={"eps": -1, "estimator": "adam", "bogus": 1,
                                                 "schedule": {"epochs": "many"}}))
    assert set(errors) == {"eps", "estimator", "bogus", "schedule.epochs"}
    assert errors["bogus"] == "unknown key" and "greater than or equal to 0" in errors["eps"]
    misspelled = fields(alice.post("/v1/jobs", json={**DIGITS_JOB, "pgpe": {"popsise": 16}}))
    assert misspelled == {"pgpe.popsise": "unknown key; did you mean pgpe.popsize?"}

    assert "relaxation" in fields(alice.post("/v1/jobs", json={"relaxation": "zonotope"}))
    assert "empty config" in fields(alice.post("/v1/jobs", json={}))["body"]
    costly = fields(alice.post("/v1/jobs", json={**DIGITS_JOB, "pgpe": {"popsize": 100_000_000},
                                                "alpha": {"steps": 1_000_000_000},
                                                "schedule": {"epochs": 100_000_000}}))
    assert set(costly) == {"pgpe.popsize", "alpha.steps", "schedule.epochs"}
    assert "GLS_JOB_MAX_POPSIZE" in costly["pgpe.popsize"] and "GLS_JOB_MAX_EPOCHS" in costly["schedule.epochs"]
    restarts = fields(alice.post("/v1/jobs", json={**DIGITS_JOB, "evaluation": {"pgd_restarts": 101}}))
    assert restarts == {"evaluation.pgd_restarts": "101 is more than this gateway allows (100, the bound workers' "
                                                   "limit)"}
    nan = alice.post("/v1/jobs", content=b'{"eps": NaN, "pgpe": {"sigma_init": Infinity}}')
    assert "finite" in fields(nan)["eps"]  # not JSON: reading stops at the first one
    assert "finite" in fields(alice.post("/v1/jobs", content=b'{"pgpe": {"sigma_init": -Infinity}}'))[
        "pgpe.sigma_init"]
    assert "malformed JSON" in fields(alice.post("/v1/jobs", content=b'{"eps": '))["body"]
    assert "JSON object" in fields(alice.post("/v1/jobs", json=[1, 2]))["body"]
    assert "nested deeper than 32 levels" in "".join(fields(alice.post("/v1/jobs", content=b"[" * 60_000)).values())
    deep = alice.post("/v1/jobs", content=b'{"name": ' + b"[" * 900 + b"]" * 900 + b"}")
    assert "nested deeper" in fields(deep)["name" + ".0" * 31]
    cross = fields(alice.post("/v1/jobs", json={"estimator": "grad", "relaxation": "alpha-crown"}))
    assert "relaxation 'alpha-crown' has no weight gradients" in cross["body"]  # a rule across fields

    local = fields(alice.post("/v1/jobs", json={"data": {"dataset": "file", "path": "/etc/x.npz",
                                                         "input_like": "digits"},
                                                "model": {"checkpoint": "/home/me/model.safetensors"}}))
    assert set(local) == {"data.path", "data.dataset_id", "model.checkpoint"}
    assert "dataset_id" in local["data.path"] and "checkpoint_id" in local["model.checkpoint"]
    assert "data.dataset_id" in fields(alice.post("/v1/jobs", json={"data": {"dataset": "file",
                                                                              "input_like": "digits"}}))
    assert "data.dataset_id" in fields(alice.post("/v1/jobs", json={"data": {"dataset_id": "data-1"}}))


def test_referenced_data_and_models_must_be_the_tenants_own_and_fit(stack: Stack) -> None:
    alice, bob = stack.http(ALICE), stack.http(BOB)
    x = np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    upload = bob.post("/v1/datasets", files={"file": ("bob.npz", npz_bytes(x=x, y=np.arange(40) % 10))})
    bobs = upload.json()["id"]
    mine = alice.post("/v1/datasets", files={"file": ("mine.npz", npz_bytes(x=x, y=np.arange(40) % 10))}).json()["id"]
    file_job = {**DIGITS_JOB, "data": {"dataset": "file", "input_like": "digits", "batch_size": 8}}

    refused = fields(alice.post("/v1/jobs", json={**file_job, "data": {**file_job["data"], "dataset_id": bobs}}))
    assert "no dataset" in refused["data.dataset_id"]
    wrong_shape = {**file_job["data"], "dataset_id": mine, "input_like": "mnist"}
    assert "shape" in fields(alice.post("/v1/jobs", json={**file_job, "data": wrong_shape}))["data.dataset_id"]
    accepted = alice.post("/v1/jobs", json={**file_job, "data": {**file_job["data"], "dataset_id": mine,
                                                                  "test_dataset_id": mine}})
    assert accepted.status_code == 201, accepted.text

    spec, theta = digits_model()
    model = stack.store().put_model("bob", save_tensors({"theta": theta}), "fc-16", "digits", spec.num_params)
    refused = fields(alice.post("/v1/jobs", json={**DIGITS_JOB, "model": {"arch": "fc-16",
                                                                           "checkpoint_id": model.id}}))
    assert "no model" in refused["model.checkpoint_id"]
    own = stack.store().put_model("alice", save_tensors({"theta": theta}), "fc-16", "digits", spec.num_params)
    mismatch = fields(alice.post("/v1/jobs", json={**DIGITS_JOB, "model": {"arch": "fc-32",
                                                                            "checkpoint_id": own.id}}))
    assert "fc-16" in mismatch["model.checkpoint_id"]
    warm = alice.post("/v1/jobs", json={**DIGITS_JOB, "model": {"arch": "fc-16", "checkpoint_id": own.id}})
    assert warm.status_code == 201, warm.text


def test_metrics_rows_and_the_model_of_a_job(stack: Stack) -> None:
    alice, store = stack.http(ALICE), stack.store()
    job = alice.post("/v1/jobs", json=DIGITS_JOB).json()
    assert alice.get(f"/v1/jobs/{job['id']}/metrics").json() == []
    no_model = alice.get(f"/v1/jobs/{job['id']}/model")
    assert no_model.status_code == 409 and "no model yet" in no_model.json()["detail"]
    assert alice.get(f"/v1/jobs/{job['id']}/model", params={"latest": "true"}).status_code == 409

    spec, theta = digits_model()
    rows = [{"kind": "step", "step": 1, "loss": 2.5}, {"kind": "step", "step": 2, "loss": float("nan")}]
    store.commit(job["id"], save_tensors({"theta": theta, "m": torch.zeros(3)}), {"step": 2}, rows)
    assert alice.get(f"/v1/jobs/{job['id']}/metrics").json() == [rows[0], {**rows[1], "loss": None}]
    assert alice.get(f"/v1/jobs/{job['id']}/metrics", params={"start": 1}).json() == [{**rows[1], "loss": None}]
    assert alice.get(f"/v1/jobs/{job['id']}/metrics", params={"start": -1}).status_code == 422
    assert alice.get(f"/v1/jobs/{job['id']}/metrics", params={"start": 2**63}).status_code == 422  # not redis' 500

    latest = alice.get(f"/v1/jobs/{job['id']}/model", params={"latest": "true"})
    assert latest.status_code == 200 and latest.headers["content-type"] == "application/octet-stream"
    assert load_tensors(latest.content)["theta"].equal(theta)

    final = theta + 1
    store.put_model("alice", save_tensors({"theta": final}, {"format": "gls-flat-v1", "arch": "fc-16",
                                                             "dataset": "digits"}),
                    "fc-16", "digits", spec.num_params, model_id=job["id"])
    store.update_job(job["id"], status="succeeded", model_id=job["id"])
    served = alice.get(f"/v1/jobs/{job['id']}/model")
    assert served.status_code == 200 and load_tensors(served.content)["theta"].equal(final)
    assert stack.http(BOB).get(f"/v1/jobs/{job['id']}/model").status_code == 404


# ------------------------------------------------------------------------------------------ datasets

def test_dataset_upload_round_trip(stack: Stack, tmp_path: Path) -> None:
    alice, bob = stack.http(ALICE), stack.http(BOB)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 30)
    created = alice.post("/v1/datasets", files={"file": ("../../digits.npz", npz_bytes(x=x, y=y))},
                         data={"name": "my digits", "num_classes": "10"})
    assert created.status_code == 201, created.text
    info = created.json()
    assert (info["n"], info["shape"], info["num_classes"], info["dtype"]) == (30, [1, 8, 8], 10, "uint8")
    assert info["name"] == "my digits" and info["source"] == "digits.npz"
    _, images, labels = stack.store().dataset_arrays(info["id"], "alice")
    assert images.equal(torch.from_numpy(x).float() / 255) and labels.equal(torch.from_numpy(y))

    floats = tmp_path / "floats.safetensors"
    save_file({"x": torch.rand(12, 1, 8, 8), "y": torch.arange(12) % 3}, str(floats))
    stored = alice.post("/v1/datasets", files={"file": ("floats.safetensors", floats.read_bytes())}).json()
    assert stored["dtype"] == "float32" and stored["num_classes"] == 3 and stored["name"] == "floats.safetensors"

    assert info["id"] in [item["id"] for item in alice.get("/v1/datasets").json()]
    assert alice.get(f"/v1/datasets/{info['id']}").json() == info
    assert bob.get(f"/v1/datasets/{info['id']}").status_code == 404
    assert bob.delete(f"/v1/datasets/{info['id']}").status_code == 404
    assert alice.delete(f"/v1/datasets/{info['id']}").json()["id"] == info["id"]
    assert alice.get(f"/v1/datasets/{info['id']}").status_code == 404


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("data.txt", b"hello", "unsupported file type '.txt'"),
    ("data.npz", b"not a zip file", "cannot read it as .npz"),
    ("data.npz", b"", "the file is empty"),
    ("data.npz", npz_bytes(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.zeros(4, int))[:-200], "cannot read it as .npz"),
    ("data.npz", npz_bytes(x=np.zeros((4, 8, 8, 1), np.uint8), y=np.zeros(4, int)), "channels-last"),
    ("data.npz", npz_bytes(x=np.full((4, 1, 8, 8), 2.0, np.float32), y=np.zeros(4, int)), "must lie in [0, 1]"),
    ("data.npz", npz_bytes(x=np.zeros((4, 1, 8, 8), np.uint8)), "missing array 'y'"),
    ("data.npz", npz_bytes(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.zeros(3, int)), "has 4 examples but 'y' has 3"),
    ("data.npz", npz_bytes(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.array([0, 1, 0, -1])), "negative labels"),
    ("data.npz", npz_bytes(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.zeros(4, int)), "single class"),
])
def test_dataset_rejections_name_the_problem(stack: Stack, name: str, content: bytes, expected: str) -> None:
    errors = fields(stack.http(ALICE).post("/v1/datasets", files={"file": (name, content)}))
    assert expected in errors["file"]
    assert "/tmp" not in errors["file"] and "gls-upload" not in errors["file"]  # no server paths


def test_upload_limits_and_missing_parts(stack: Stack) -> None:
    alice = stack.http(ALICE)
    big = npz_bytes(x=np.zeros((300, 1, 64, 64), np.uint8), y=np.zeros(300, int))  # 1.2 MB > 1 MiB
    too_large = alice.post("/v1/datasets", files={"file": ("big.npz", big)})
    assert too_large.status_code == 413 and "1 MiB" in too_large.json()["detail"]
    part = b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.npz"\r\n\r\n'
    chunked = alice.post("/v1/datasets", content=iter([part, b" " * 700_000, b" " * 700_000]),  # no Content-Length
                         headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert chunked.status_code == 413 and "GLS_MAX_UPLOAD_MB" in chunked.json()["detail"]
    assert "file" in fields(alice.post("/v1/datasets", data={"name": "nothing"}))
    assert "num_classes" in fields(alice.post("/v1/datasets", files={"file": ("d.npz", b"x")},
                                              data={"num_classes": "many"}))
    assert alice.get("/v1/datasets").status_code == 200  # still serving


# -------------------------------------------------------------------------------------------- models

def test_model_upload_download_round_trip(stack: Stack, tmp_path: Path) -> None:
    alice, bob = stack.http(ALICE), stack.http(BOB)
    spec, theta = digits_model()
    path = tmp_path / "model.safetensors"
    save_model(path, theta, "fc-16", "digits", {"note": "hand made"})
    created = alice.post("/v1/models", files={"file": ("model.safetensors", path.read_bytes())})
    assert created.status_code == 201, created.text
    info = created.json()
    assert (info["arch"], info["dataset"], info["num_params"]) == ("fc-16", "digits", spec.num_params)
    assert info["extra"] == {"note": "hand made"}
    downloaded = alice.get(f"/v1/models/{info['id']}/download")
    assert downloaded.status_code == 200
    (tmp_path / "back.safetensors").write_bytes(downloaded.content)
    loaded_spec, loaded, metadata = load_model(tmp_path / "back.safetensors")
    assert loaded_spec == spec and loaded.equal(theta) and metadata["note"] == "hand made"

    assert [item["id"] for item in alice.get("/v1/models").json()].count(info["id"]) == 1
    assert bob.get(f"/v1/models/{info['id']}").status_code == 404
    assert bob.get(f"/v1/models/{info['id']}/download").status_code == 404
    assert alice.delete(f"/v1/models/{info['id']}").status_code == 200
    assert alice.get(f"/v1/models/{info['id']}").status_code == 404


def test_model_rejections(stack: Stack, tmp_path: Path) -> None:
    alice = stack.http(ALICE)
    _, theta = digits_model()

    def upload(name: str, content: bytes) -> str:
        return fields(alice.post("/v1/models", files={"file": (name, content)}))["file"]

    assert "expected .safetensors" in upload("model.npz", b"x")
    assert "not a readable safetensors" in upload("model.safetensors", b"\x00" * 64)
    assert "missing GLS metadata" in upload("model.safetensors", save_tensors({"theta": theta}))
    short = save_tensors({"theta": theta[:-1]}, {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})
    assert "needs (" in upload("model.safetensors", short)
    unknown = save_tensors({"theta": theta}, {"format": "gls-flat-v1", "arch": "resnet", "dataset": "digits"})
    assert "unknown architecture" in upload("model.safetensors", unknown)
    nan = save_tensors({"theta": theta * float("nan")}, {"format": "gls-flat-v1", "arch": "fc-16",
                                                        "dataset": "digits"})
    assert "NaN" in upload("model.safetensors", nan)


# -------------------------------------------------------------------------------------- operations

def test_health_metrics_and_openapi(stack: Stack) -> None:
    anonymous = stack.http(token=None)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert anonymous.get("/readyz").json() == {"status": "ready", "redis": True, "workers": 0, "detail": ""}
    stack.http(ALICE).post("/v1/jobs", json=DIGITS_JOB)
    stack.http(ALICE).get("/v1/jobs/job-missing")
    text = anonymous.get("/metrics").text
    assert 'gls_gateway_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text  # templates, not ids: bounded label values
    assert 'gls_gateway_jobs_submitted_total{tenant=""}' in text  # no GLS_METRICS_KEY: no per-tenant series
    assert "alice" not in text  # /metrics is unauthenticated: tenants appear only as pseudonyms
    assert "gls_gateway_http_request_seconds_bucket" in text and "gls_gateway_live_workers 0.0" in text

    schema = anonymous.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"jobs", "datasets", "models", "certify", "operations"} <= {tag["name"] for tag in schema["tags"]}
    assert "TrainConfig" in schema["components"]["schemas"] and "DataConfig" in schema["components"]["schemas"]
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/TrainConfig"}
    assert schema["paths"]["/v1/certify"]["post"]["security"] == [{"bearer": []}]


def test_an_unexpected_error_is_a_json_500_without_internals(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(tenant: str) -> list[Any]:
        raise RuntimeError("secret internals at /srv/gls")

    monkeypatch.setattr(stack.gateway.gateway.store, "list_jobs", broken)
    response = stack.http(ALICE).get("/v1/jobs")
    assert response.status_code == 500
    detail = response.json()["detail"]
    assert "internal error" in detail and "secret" not in detail and "/srv" not in detail
    monkeypatch.undo()
    assert stack.http(ALICE).get("/v1/jobs").status_code == 200


def test_readiness_fails_while_redis_is_down(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, workers=0)
    try:
        anonymous = stack.http(token=None)
        assert anonymous.get("/readyz").status_code == 200
        stack.redis.kill()
        down = anonymous.get("/readyz")
        assert down.status_code == 503 and down.json()["redis"] is False
        assert anonymous.get("/healthz").status_code == 200  # alive, just not ready
        failing = stack.http(ALICE).get("/v1/jobs")
        assert failing.status_code == 503 and "Redis" in json.loads(failing.text)["detail"]
    finally:
        stack.stop()


def test_a_full_redis_is_a_clear_503_and_loses_nothing(tmp_path: Path) -> None:
    """Redis at its maxmemory with noeviction refuses writes: the gateway says so, and what was stored stays."""
    import redis

    from services.client import ClientError

    running = start_stack(tmp_path / "redis", workers=0)
    try:
        client = running.client()
        _, theta = digits_model()
        save_model(tmp_path / "model.safetensors", theta, "fc-16", "digits")
        kept = client.upload_model(tmp_path / "model.safetensors")["id"]
        store = redis.Redis.from_url(running.settings.redis_url)
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", int(store.info("memory")["used_memory"]) + 256 * 1024)
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "big.npz", x=rng.random((1000, 1, 28, 28), dtype=np.float32),
                 y=rng.integers(0, 10, 1000))
        with pytest.raises(ClientError) as full:
            client.upload_dataset(tmp_path / "big.npz")
        assert full.value.status == 503, full.value
        assert "storage (Redis) is full" in str(full.value) and "nothing stored was lost" in str(full.value)
        store.config_set("maxmemory", 0)
        assert kept in [model["id"] for model in client.models()]
        client.download_stored_model(kept, tmp_path / "back.safetensors")
        assert load_model(tmp_path / "back.safetensors")[1].equal(theta)
    finally:
        running.stop()
