"""Hostile bodies and uploads against a real gateway (uvicorn) and a real redis-server on loopback: every one is
answered 4xx naming the field or the limit, before the gateway builds what it claims, and the gateway keeps
serving."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from test_gateway_support import ALICE, Stack, start_stack

from bench.hostile_bodies import (
    HOSTILE_DATASETS,
    hostile_json,
    json_array_body,
    npz_bomb,
    npz_claiming_petabytes,
    npz_of,
    safetensors_claiming,
    safetensors_of,
)
from services.coordinator import Coordinator
from services.gateway.metrics import tenant_label

UPLOAD_MB, DECODED_MB, BODY_KB = 4, 16, 64
GOOD_JOB = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05, "data": {"dataset": "digits", "batch_size": 32},
            "model": {"arch": "fc-16"}, "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01,
                                                     "lr_milestones": []}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=0, max_upload_mb=UPLOAD_MB,
                          upload_max_decoded_mb=DECODED_MB, max_body_kb=BODY_KB)
    yield running
    running.stop()


def detail(response: object) -> dict[str, str]:
    """{field: reason} of a field error, {"": message} of a plain one."""
    body = response.json()  # type: ignore[attr-defined]
    items = body["detail"]
    return {item["field"]: item["msg"] for item in items} if isinstance(items, list) else {"": items}


# ------------------------------------------------------------------------------------ body sizes

def test_every_route_refuses_a_body_over_its_limit_by_size(stack: Stack) -> None:
    alice = stack.http(ALICE)
    body = json_array_body(BODY_KB / 1024 * 2)  # twice GLS_MAX_BODY_KB
    for sent in (body, iter([body[:40_000], body[40_000:]])):  # declared, then chunked without a Content-Length
        refused = alice.post("/v1/jobs", content=sent, headers={"Content-Type": "application/json"})
        assert refused.status_code == 413 and refused.headers["connection"] == "close", refused.text
        assert detail(refused)[""] == (f"request body larger than the limit of {BODY_KB} KiB for POST /v1/jobs "
                                       "(GLS_MAX_BODY_KB)")
    for method, path in [("GET", "/v1/jobs"), ("DELETE", "/v1/jobs/job-1"), ("GET", "/v1/quota")]:
        refused = alice.request(method, path, content=b" " * (BODY_KB * 1024 + 1))
        assert refused.status_code == 413 and "GLS_MAX_BODY_KB" in detail(refused)[""], (method, path)
    upload = alice.post("/v1/models", files={"file": ("m.safetensors", b"\0" * (UPLOAD_MB * 2**20 + 1))})
    assert upload.status_code == 413 and "GLS_MAX_UPLOAD_MB" in detail(upload)[""]
    assert alice.post("/v1/jobs", json=GOOD_JOB).status_code == 201


def test_json_within_the_size_limit_is_read_within_the_parsers_limits(stack: Stack) -> None:
    alice = stack.http(ALICE)
    small = hostile_json(BODY_KB * 1024 - 100)  # a job config's limit
    answers = {name: alice.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
               for name, body in small.items()}
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(small, 422)
    assert detail(answers["long-array"]) == {"junk": "more than 10000 items"}
    assert "nested deeper than 32 levels" in "".join(detail(answers["deep-nesting"]).values())
    assert detail(answers["long-string"]) == {"name": "a string longer than 4096 characters"}
    assert set(detail(answers["many-keys"]).values()) == {"unknown key"}  # 6,500 keys fit: the first 20 named
    assert len(detail(answers["many-keys"])) == 20
    assert detail(answers["repeated-key"]) == {"a": "unknown key"}

    large = hostile_json(4 * 2**20)  # within GLS_CERTIFY_MAX_BODY_MB: the same reader, the same limits
    answers = {name: alice.post("/v1/certify", content=body, headers={"Content-Type": "application/json"})
               for name, body in large.items()}
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(large, 422)
    assert detail(answers["long-array"]) == {"junk": "more than 10000 items"}
    assert detail(answers["long-string"]) == {"name": "a string longer than 4096 characters"}
    assert detail(answers["many-keys"]) == {"body": "more than 10000 keys"}
    assert detail(answers["repeated-key"]) == {"a": "more than 100000 values in the document"}
    assert alice.post("/v1/jobs", json=GOOD_JOB).status_code == 201


# --------------------------------------------------------------------------------------- uploads

@pytest.mark.parametrize(("name", "status", "reason"), [
    ("petabyte-header.npz", 422, "claims shape (1125899906842624, 1, 1, 1) of float64"),
    ("bomb.npz", 413, "more than the limit of 16 MiB (GLS_UPLOAD_MAX_DECODED_MB)"),
    ("float-bomb.npz", 413, "GLS_UPLOAD_MAX_DECODED_MB"),
    ("zero-channels.npz", 422, "'x' has shape (4, 0, 8, 8), with a zero-sized dimension"),
    ("zero-examples.npz", 422, "'x' holds no examples"),
    ("huge-label.npz", 422, "'y' has label 9223372036854775807; labels must lie in 0..99999"),
    ("uint64-label.npz", 422, "'y' has label 18446744073709551615 at index 3, beyond the int64 range"),
    ("object-x.npz", 422, "Python objects"),
    ("many-members.npz", 422, "5000 members"),
    ("truncated-member.npz", 422, "its member holds 100"),
    ("claims.safetensors", 422, "which the 16 data bytes of the file do not hold"),
    ("header-longer-than-file.safetensors", 422, "does not fit the"),
    ("header-not-json.safetensors", 422, "not a readable safetensors file"),
    ("zero-height.safetensors", 422, "zero-sized dimension"),
])
def test_hostile_dataset_uploads_are_4xx_naming_the_file(stack: Stack, name: str, status: int, reason: str) -> None:
    alice = stack.http(ALICE)
    answer = alice.post("/v1/datasets", files={"file": (name, HOSTILE_DATASETS[name])})
    assert answer.status_code == status and reason in detail(answer)["file"], answer.text
    assert detail(answer)["file"].startswith(f"{name}: ")
    assert len(npz_claiming_petabytes()) < 500  # what the issue sent: a few hundred bytes claiming petabytes


def test_labels_are_checked_against_the_declared_classes(stack: Stack) -> None:
    alice = stack.http(ALICE)
    data = npz_of(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.array([0, 1, 2, 5]))
    refused = alice.post("/v1/datasets", files={"file": ("d.npz", data)}, data={"num_classes": "5"})
    assert refused.status_code == 422 and "'y' has label 5" in detail(refused)["file"]
    accepted = alice.post("/v1/datasets", files={"file": ("d.npz", data)})
    assert accepted.status_code == 201 and accepted.json()["num_classes"] == 6


def test_decoded_size_counts_what_the_gateway_holds(stack: Stack) -> None:
    alice = stack.http(ALICE)
    below = alice.post("/v1/datasets", files={"file": ("ok.npz", npz_bomb(DECODED_MB / 2))})  # uint8: 8 MiB held
    assert below.status_code == 201, below.text
    floats = alice.post("/v1/datasets", files={"file": ("f.npz", npz_bomb(DECODED_MB + 1, np.float32))})
    assert floats.status_code == 413 and "would take 17 MiB once decoded" in detail(floats)["file"], floats.text


def test_model_uploads_are_checked_from_the_header(stack: Stack) -> None:
    alice = stack.http(ALICE)
    gls = {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"}
    huge = safetensors_claiming((2**40,), name="theta", metadata=gls)
    answer = alice.post("/v1/models", files={"file": ("m.safetensors", huge)})
    assert answer.status_code == 422 and "'theta' claims shape (1099511627776,)" in detail(answer)["file"]
    longer = safetensors_of(gls, theta=np.zeros(10, np.float32))[:-8]  # the header's theta ends past the file
    answer = alice.post("/v1/models", files={"file": ("m.safetensors", longer)})
    assert answer.status_code == 422 and "the 32 data bytes of the file do not hold" in detail(answer)["file"]
    assert alice.get("/v1/models").status_code == 200


def test_the_gateway_keeps_serving_after_every_hostile_body(stack: Stack) -> None:
    with stack.http(ALICE) as alice:  # one keep-alive connection throughout
        for name, data in HOSTILE_DATASETS.items():
            assert alice.post("/v1/datasets", files={"file": (name, data)}).status_code < 500, name
        assert alice.post("/v1/jobs", content=json.dumps(GOOD_JOB)).status_code == 201


# ------------------------------------------------------------------------------------ every field

FIELD_CAPS = {"job_max_popsize": 16, "job_max_steps": 3, "job_max_steps_per_epoch": 2, "job_max_epochs": 2,
              "job_max_examples": 5000, "job_max_params": 200_000}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A gateway with small caps, a bound worker and a coordinator: accepted jobs really run."""
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=1, job_stale_s=2.0, rpc_timeout_s=60.0,
                          **FIELD_CAPS)
    coordinator = Coordinator(running.settings)
    thread = threading.Thread(target=coordinator.run_forever, daemon=True)
    thread.start()
    yield running
    coordinator.stop()
    thread.join(30)
    running.stop()


def test_every_field_past_its_bound_is_422_naming_it(runs: Stack) -> None:
    alice = runs.http(ALICE)
    over: dict[str, tuple[Any, str]] = {
        "seed": (2**63, "number out of range"),
        "name": ("n" * 201, "at most 200 characters"),
        "schedule.lr": (1e308, "less than or equal to 10"),
        "pgpe.sigma_init": (1e308, "less than or equal to 10"),
        "pgpe.sigma_lr": (11.0, "less than or equal to 10"),
        "rgs.sigma": (1e30, "less than or equal to 10"),
        "alpha.step_size": (1e9, "less than or equal to 10"),
        "schedule.steps_per_epoch": (10**9, "GLS_JOB_MAX_STEPS_PER_EPOCH"),
        "block_members": (10**9, "GLS_JOB_MAX_POPSIZE"),
        "data.test_subset": (10**12, "GLS_JOB_MAX_EXAMPLES"),
        "data.train_subset": (10**12, "GLS_JOB_MAX_EXAMPLES"),
        "evaluation.batch_size": (10**12, "GLS_JOB_MAX_EXAMPLES"),
        "evaluation.every_epochs": (3, "GLS_JOB_MAX_EPOCHS"),
        "model.arch": ("fc-100000", "GLS_JOB_MAX_PARAMS"),
        "data.dataset_id": ("d" * 201, "at most 200 characters"),
        "device": ("cuda", "GLS_DEVICE"),
        "threads": (10**6, "less than or equal to 4096"),
    }
    for field, (value, reason) in over.items():
        config = json.loads(json.dumps(GOOD_JOB))
        section, _, key = field.rpartition(".")
        (config.setdefault(section, {}) if section else config)[key] = value
        if field == "data.dataset_id":
            config["data"].update(dataset="file", input_like="digits")
        answer = alice.post("/v1/jobs", json=config)
        assert answer.status_code == 422 and reason in detail(answer).get(field, ""), (field, answer.text)
    complete = {**GOOD_JOB, "evaluation": {"method": "complete", "complete_timeout": 301}}
    assert "GLS_VERIFY_MAX_TIMEOUT_S" in detail(alice.post("/v1/jobs", json=complete))["evaluation.complete_timeout"]
    assert "widths of at least 1" in detail(alice.post("/v1/jobs", json={**GOOD_JOB, "model": {"arch": "fc-0"}}))[
        "model.arch"]


def test_a_file_datasets_batch_must_fit_it(runs: Stack) -> None:
    alice = runs.http(ALICE)
    data = npz_of(x=np.zeros((20, 1, 8, 8), np.uint8), y=np.arange(20) % 10)
    dataset = alice.post("/v1/datasets", files={"file": ("d.npz", data)}).json()["id"]
    job = {**GOOD_JOB, "data": {"dataset": "file", "input_like": "digits", "dataset_id": dataset, "batch_size": 32}}
    assert "more than the 20 training examples" in detail(alice.post("/v1/jobs", json=job))["data.batch_size"]
    job["data"].update(batch_size=8, train_subset=4)
    assert "data.train_subset" in detail(alice.post("/v1/jobs", json=job))["data.batch_size"]


def test_jobs_at_every_bound_are_accepted_and_run_to_the_end(runs: Stack) -> None:
    """What the gateway accepts, a coordinator and a worker run: the largest seed, rates, sigmas, subsets,
    batches, blocks and step counts the caps allow, with each estimator that uses them."""
    alice, store = runs.http(ALICE), runs.store()
    at_bounds = {"name": "n" * 200, "seed": 2**63 - 1, "eps": 1.0, "block_members": 16, "threads": 4096,
                 "checkpoint_every_steps": 2**63 - 1,
                 "data": {"dataset": "digits", "batch_size": 32, "train_subset": 5000, "test_subset": 5000},
                 "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr_milestones": [], "lr": 10.0,
                              "steps_per_epoch": 2, "grad_clip": 1e12},
                 "evaluation": {"batch_size": 5000, "pgd_steps": 3, "pgd_restarts": 100, "alpha_steps": 3,
                                "every_epochs": 2},
                 "model": {"arch": "fc-16"}, "pgd": {"steps": 3}, "pgpe": {"popsize": 16}}
    jobs = [
        {**at_bounds, "estimator": "pgpe", "relaxation": "alpha-crown",
         "pgpe": {"popsize": 16, "sigma_init": 10.0, "sigma_lr": 10.0, "sigma_max_change": 10.0},
         "alpha": {"steps": 3, "step_size": 10.0}, "evaluation": {**at_bounds["evaluation"], "method": "alpha-crown"}},
        {**at_bounds, "estimator": "rgs", "relaxation": "ibp", "rgs": {"samples": 16, "sigma": 10.0},
         "warmup": {"estimator": "pgd", "epochs": 1, "lr": 10.0, "eps_ramp_epochs": 0},
         "pgd": {"steps": 3, "restarts": 100, "step_size": 10.0}},
    ]
    ids = []
    for job in jobs:
        created = alice.post("/v1/jobs", json=job)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    deadline = time.monotonic() + 300
    while not all(store.get_job(job_id).status.finished for job_id in ids):
        assert time.monotonic() < deadline, [store.get_job(job_id) for job_id in ids]
        time.sleep(0.2)
    for job_id in ids:
        finished = store.get_job(job_id)
        assert finished.status.value == "succeeded", finished.error
        assert finished.step == finished.total_steps > 0


# ------------------------------------------------------------------------------------ errors

def exchange(conn: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request and its whole answer (Content-Length framed) on an open connection."""
    conn.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the connection was closed (after {data!r})"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = conn.recv(65536)
        assert chunk, "the connection was closed mid-answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_a_500_leaves_the_keep_alive_connection_usable(stack: Stack) -> None:
    """A job record damaged in Redis (its config no longer JSON) is a real bug path: 500 with an incident id, and
    the same connection then serves the next requests."""
    stack.redis.client().hset("gls:job:job-damaged", mapping={"id": "job-damaged", "tenant": "alice",
                                                              "status": "queued", "config": "{damaged",
                                                              "created": "1", "updated": "1"})
    address = urlsplit(stack.url)
    request = "GET {} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer " + ALICE + "\r\n\r\n"
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        for _ in range(3):
            status, headers, body = exchange(conn, request.format("/v1/jobs/job-damaged").encode())
            assert status == 500 and headers.get("connection") != "close", (status, headers)
            detail = json.loads(body)["detail"]
            assert "internal error (incident " in detail and "damaged" not in detail and "JSON" not in detail
            status, _, body = exchange(conn, request.format("/v1/quota").encode())
            assert status == 200 and json.loads(body)["tenant"] == "alice"
    metrics = stack.http(None).get("/metrics").text
    assert 'route="/v1/jobs/{job_id}",status="500"' in metrics  # still counted


def test_metrics_pseudonyms_are_keyed_by_the_deployments_secret(tmp_path: Path) -> None:
    key = "per-deployment-secret"
    running = start_stack(tmp_path, workers=0, metrics_key=key)
    try:
        assert running.http(ALICE).post("/v1/jobs", json=GOOD_JOB).status_code == 201
        text = running.http(None).get("/metrics").text
    finally:
        running.stop()
    keyed = hmac.new(key.encode(), b"alice", hashlib.sha256).hexdigest()[:16]
    assert f'gls_gateway_jobs_submitted_total{{tenant="{keyed}"}} 1.0' in text
    assert tenant_label("alice", key) == keyed and tenant_label("alice", "another key") != keyed
    assert "alice" not in text and hashlib.sha256(b"alice").hexdigest()[:12] not in text  # no unkeyed hash
