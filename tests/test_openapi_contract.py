"""The OpenAPI schema as a contract: schemathesis against real processes on loopback.

A redis-server, ``python -m services.gateway`` and ``python -m services.bound_worker`` run as separate
processes. Schemathesis loads ``/openapi.json`` and its engine (what ``st run`` drives) runs every phase
(examples, coverage, fuzzing, stateful) with every check, a fixed seed and a bounded number of examples
per operation. Two check settings say what JSON Schema cannot:

- ``positive_data_acceptance`` on the POST operations also takes 413 and 422 as answers to schema-valid
  requests: an uploaded file's content, a theta that must fit the architecture, inputs that must fit the
  model, a training config's rules across fields and the tenant's own dataset and model ids are judged by
  the server (each 422 names the field; the operations' 422 descriptions say so).
- ``use_after_free`` is off for the reads of a job: ``DELETE /v1/jobs/{job_id}`` cancels, and the job
  stays readable with its final status, as that operation documents (with a link to the read).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
import schemathesis
from safetensors.torch import save as save_tensors
from schemathesis.engine import Status, StopReason, events, from_schema
from servers import RedisServer, free_port, wait_for_port
from test_gateway_support import ALICE, TOKENS, digits_model

from bench.hostile_bodies import (
    HOSTILE_DATASETS,
    hostile_json,
    json_array_body,
    mutated_file,
    mutated_json,
    npz_bomb,
    npz_of,
    safetensors_of,
    send_partial,
)
from bench.rss import reset_peak, status_kib

ROOT = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 10
"""Per operation and phase: the whole run stays within about a minute on two busy cores."""
DECODED_MB, CERTIFY_MB = 64, 8
"""GLS_UPLOAD_MAX_DECODED_MB and GLS_CERTIFY_MAX_BODY_MB of the gateway under test (uploads: GLS_MAX_UPLOAD_MB 1)."""
MEMORY_BOUND_MB = 2 * DECODED_MB + 2 * CERTIFY_MB + 64
"""The growth of the gateway's peak RSS the hostile bodies may cause (docs/services.md states the multiples: at
most 1.75 x the decoded limit for an upload, 2 x the certify limit for a body; 64 MiB for threads and the
allocator)."""
FUZZ_CASES = 60
"""Seeded mutations per upload route and per JSON route."""
SEMANTIC = ["2xx", "3xx", "401", "403", "404", "409", "413", "422", "429", "5xx"]
"""positive_data_acceptance's default statuses plus 413 and 422 (see the module docstring)."""


@dataclass
class Processes:
    url: str
    logs: Path
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def http(self, token: str | None = ALICE) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"} if token else {})

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-4000:] for path in sorted(self.logs.glob("*.log")))


def _spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env, stdout=handle,
                                stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Redis, one bound worker and the gateway, each its own process (one torch thread each)."""
    folder = tmp_path_factory.mktemp("contract")
    redis_server = RedisServer(folder / "redis").start()
    http_port, grpc_port, worker_port = free_port(), free_port(), free_port()
    env = {**os.environ, "GLS_REDIS_URL": redis_server.url, "GLS_TOKENS": TOKENS, "GLS_THREADS": "1",
           "GLS_LOG_LEVEL": "warning", "GLS_HEARTBEAT_S": "0.5", "GLS_HEARTBEAT_TTL_S": "5"}
    processes = Processes(f"http://127.0.0.1:{http_port}", folder)
    try:
        processes.children.append(_spawn("services.bound_worker", {
            **env, "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(worker_port)}, folder / "worker.log"))
        processes.children.append(_spawn("services.gateway", {
            **env, "GLS_GATEWAY_HOST": "127.0.0.1", "GLS_GATEWAY_PORT": str(http_port),
            "GLS_CERTIFIER_PORT": str(grpc_port), "GLS_MAX_UPLOAD_MB": "1", "GLS_CERTIFY_MAX_INPUTS": "64",
            "GLS_UPLOAD_MAX_DECODED_MB": str(DECODED_MB), "GLS_CERTIFY_MAX_BODY_MB": str(CERTIFY_MB),
            "GLS_SSE_HEARTBEAT_S": "0.5",
            # the fuzzer submits hundreds of valid jobs that nothing runs: a job quota would answer most of them 429
            "GLS_TENANT_MAX_JOBS": "100000"}, folder / "gateway.log"))
        wait_for_port(http_port, 90)
        deadline = time.monotonic() + 60
        while processes.http(None).get("/readyz").json()["workers"] < 1:
            assert time.monotonic() < deadline, processes.log()
            time.sleep(0.2)
        yield processes
    finally:
        for child in processes.children:
            child.terminate()
        for child in processes.children:
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        redis_server.stop()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in schema["paths"].items()
            for method, operation in item.items() if method in ("get", "put", "post", "delete", "patch")]


def contract_config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": 20240601,
        "workers": 1,
        "request-timeout": 10,
        "auth": {"openapi": {"bearer": {"bearer": ALICE}}},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},  # each run on its own: no replays,
        "cache": {"enabled": False},  # no .schemathesis/ left in the checkout
        # Links come from the schema and from Location headers; the field-name guesses would also feed
        # JobOut.model_id ("" until a job has a model) into /v1/models/{model_id}, a different URL.
        "phases": {"stateful": {"inference": {"algorithms": ["location-headers"]}, "max-steps": 8}},
        "operations": [
            {"include-method": "POST", "checks": {"positive_data_acceptance": {"expected-statuses": SEMANTIC}}},
            {"include-path-regex": r"^/v1/jobs/\{job_id\}", "include-method": "GET",
             "checks": {"use_after_free": {"enabled": False}}},
            # a queued job's event stream stays open (heartbeats only): read it for a second
            {"include-path": "/v1/jobs/{job_id}/events", "request-timeout": 1},
        ],
    })


@dataclass
class Report:
    operations: set[str] = field(default_factory=set)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None
    seconds: float = 0.0


def run_schemathesis(url: str) -> Report:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=contract_config())
    report, started = Report(), time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            if event.phase.value != "stateful" and event.status is not Status.SKIP and event.label:
                report.operations.add(event.label)
            for interaction in event.recorder.interactions.values():
                report.requests += 1
                if interaction.response is not None:
                    report.statuses[interaction.response.status_code] += 1
            for checks in event.recorder.checks.values():
                report.failures += [f"{check.failure_info.failure.code} {check.failure_info.failure.operation}: "
                                    f"{check.failure_info.failure.title}\n{check.failure_info.code_sample}"
                                    for check in checks if check.failure_info is not None]
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.value!r}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = event.stop_reason
            report.failures += [f"{failure.code} {failure.operation}: {failure.title}" for failure in event.failures]
    report.seconds = time.monotonic() - started
    return report


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_contract_failure(gateway: Processes) -> None:
    schema = gateway.http(None).get("/openapi.json").json()
    report = run_schemathesis(gateway.url)
    server_errors = sum(count for status, count in report.statuses.items() if status >= 500)
    print(f"\nschemathesis: {len(report.operations)} operations, {report.requests} requests, {server_errors} 5xx, "
          f"{len(report.failures)} contract failures, {report.seconds:.0f} s; "
          f"statuses {sorted(report.statuses.items())}")
    assert report.stop_reason is StopReason.COMPLETED and not report.errors, report.errors
    assert not report.failures, "\n\n".join(report.failures[:10])
    assert server_errors == 0, gateway.log()
    assert report.operations == {f"{method} {path}" for method, path, _ in operations(schema)}
    assert report.statuses[200] and report.statuses[201] and report.statuses[401] and report.statuses[404]


def test_every_protected_operation_answers_401_without_a_valid_token(gateway: Processes) -> None:
    schema = gateway.http(None).get("/openapi.json").json()
    protected = [(method, path, operation) for method, path, operation in operations(schema)
                 if operation.get("security")]
    assert len(protected) >= 15 and all(path.startswith("/v1/") for _, path, _ in protected)
    assert {path for _, path, op in operations(schema) if not op.get("security")} >= {"/healthz", "/readyz"}
    for token in (None, "not-a-token"):
        with gateway.http(token) as client:
            for method, path, operation in protected:
                concrete = path.replace("{job_id}", "job-1").replace("{dataset_id}", "data-1") \
                               .replace("{model_id}", "model-1")
                response = client.request(method, concrete)
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert isinstance(response.json()["detail"], str)
                documented = operation["responses"]["401"]
                assert documented["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (method, path)
                assert documented["headers"]["WWW-Authenticate"]["required"] is True


def test_the_schema_states_what_the_server_checks(gateway: Processes) -> None:
    schema = gateway.http(None).get("/openapi.json").json()
    for method, path, operation in operations(schema):
        for status, answer in operation["responses"].items():
            if status.startswith(("4", "5")) and path.startswith("/v1/"):  # /readyz answers 503 with Readiness
                assert answer["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
        with_ids = "{" in path
        assert not with_ids or {"404", "422"} <= set(operation["responses"]), (method, path)

    # certify: exactly one of model_id and model, in the schema as in the server
    def certify_body_valid(body: dict[str, Any]) -> bool:
        document = {"$ref": "#/components/schemas/CertifyIn", "components": schema["components"]}
        return jsonschema.Draft202012Validator(document).is_valid(body)

    request = {"inputs": [[[[0.5]]]], "labels": [0], "eps": 0.1}
    model = {"arch": "fc-1", "dataset": "digits", "theta": [0.0]}
    assert not certify_body_valid(request) and not certify_body_valid({**request, "model_id": "m", "model": model})
    assert certify_body_valid({**request, "model_id": "m"}) and certify_body_valid({**request, "model": model})
    assert certify_body_valid({**request, "model_id": None, "model": model})
    assert not certify_body_valid({**request, "model_id": "m", "inputs": [[[[1.5]]]]})
    assert not certify_body_valid({**request, "model_id": "m", "relaxation": "zonotope"})
    with gateway.http() as alice:
        neither = alice.post("/v1/certify", json=request)
        assert neither.status_code == 422 and neither.json()["detail"][0]["field"] == "model_id"
        example = schema["components"]["schemas"]["CertifyIn"]["examples"][0]
        certified = alice.post("/v1/certify", json=example)
        assert certified.status_code == 200 and certified.json()["total"] == 1, certified.text

        # uploads: a file name without a suffix is judged by the content
        x = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, x=x, y=np.arange(20) % 10)
        dataset = alice.post("/v1/datasets", files={"file": ("file", buffer.getvalue())})
        assert dataset.status_code == 201 and dataset.json()["n"] == 20, dataset.text
        assert dataset.headers["location"] == f"/v1/datasets/{dataset.json()['id']}"
        _, theta = digits_model()
        weights = save_tensors({"theta": theta}, {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})
        uploaded = alice.post("/v1/models", files={"file": ("file", weights)})
        assert uploaded.status_code == 201 and uploaded.json()["arch"] == "fc-16", uploaded.text
        refused = alice.post("/v1/models", files={"file": ("weights.bin", weights)})
        assert refused.status_code == 422 and "unsupported file type '.bin'" in refused.json()["detail"][0]["msg"]

        # DELETE /v1/jobs/{id} cancels; the job stays readable, as the operation says
        cancel = schema["paths"]["/v1/jobs/{job_id}"]["delete"]
        assert "not deleted" in cancel["description"] and "job" in cancel["responses"]["200"]["links"]
        job = alice.post("/v1/jobs", json=schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"][
            "application/json"]["example"])
        assert job.status_code == 201 and job.headers["location"] == f"/v1/jobs/{job.json()['id']}", job.text
        assert alice.delete(job.headers["location"]).json()["status"] == "cancelled"
        assert alice.get(job.headers["location"]).json()["status"] == "cancelled"

        # a job config takes JSON types as the schema states them: no true for an integer, no "0.1" for a number
        config = job.json()["config"]
        bools = alice.post("/v1/jobs", json={**config, "evaluation": {**config["evaluation"], "alpha_steps": True},
                                             "eps": "0.05"})
        assert bools.status_code == 422 and {item["field"] for item in bools.json()["detail"]} == {
            "evaluation.alpha_steps", "eps"}, bools.text
        assert alice.post("/v1/jobs", json={**config, "seed": 3.0}).status_code == 201  # 3.0 is an integer

        # Starlette names one route in Allow; the gateway names every method served at the path
        options = alice.options(job.headers["location"])
        assert options.status_code == 405 and options.headers["allow"] == "DELETE, GET"


@dataclass
class Answers:
    client: httpx.Client
    statuses: Counter[int] = field(default_factory=Counter)
    refused: list[str] = field(default_factory=list)

    def post(self, label: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.client.post(path, **kwargs)
        self.statuses[answer.status_code] += 1
        if answer.status_code >= 500 or answer.status_code < 200:
            self.refused.append(f"{label}: {answer.status_code} {answer.text[:300]}")
        return answer


def test_hostile_bodies_and_uploads_get_4xx_within_the_memory_bound(gateway: Processes) -> None:
    """The upload files and JSON bodies of bench/hostile_bodies.py, then seeded mutations of valid ones, on one
    client: never a 5xx, and the gateway's peak RSS grows by less than MEMORY_BOUND_MB."""
    pid = gateway.children[1].pid
    before_kib = status_kib(pid, "VmRSS")
    assert reset_peak(pid), "cannot reset VmHWM of the gateway process"
    rng = np.random.default_rng(20240602)
    x, y = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8), np.arange(40) % 10
    files = [("d.npz", npz_of(x=x, y=y), "/v1/datasets"), ("d.safetensors", safetensors_of(x=x, y=y), "/v1/datasets"),
             ("m.safetensors", save_tensors({"theta": digits_model()[1]}, {"format": "gls-flat-v1", "arch": "fc-16",
                                                                          "dataset": "digits"}), "/v1/models")]
    schema = gateway.http(None).get("/openapi.json").json()
    job = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["example"]
    certify = schema["components"]["schemas"]["CertifyIn"]["examples"][0]
    json_headers = {"Content-Type": "application/json"}
    with gateway.http() as alice:
        answers = Answers(alice)
        for name, data in HOSTILE_DATASETS.items():
            answers.post(name, "/v1/datasets", files={"file": (name, data)})
        near = answers.post("float zeros near the limit", "/v1/datasets",
                            files={"file": ("z.npz", npz_bomb(0.9 * DECODED_MB, np.float32))})
        assert near.status_code == 201, near.text  # the worst upload the limits accept
        alice.delete(f"/v1/datasets/{near.json()['id']}")
        for case in range(FUZZ_CASES):
            for name, data, path in files:
                answers.post(f"{name} mutation {case}", path, files={"file": (name, mutated_file(data, rng))})
        for name, body in hostile_json(60 * 1024).items():
            answers.post(f"jobs {name}", "/v1/jobs", content=body, headers=json_headers)
        for name, body in hostile_json(CERTIFY_MB * 2**20 - 1024).items():
            answers.post(f"certify {name}", "/v1/certify", content=body, headers=json_headers)
        for case in range(FUZZ_CASES):
            answers.post(f"job mutation {case}", "/v1/jobs", content=mutated_json(job, rng), headers=json_headers)
            answers.post(f"certify mutation {case}", "/v1/certify", content=mutated_json(certify, rng),
                         headers=json_headers)
        for label, content_type, body in [
                ("no boundary", "multipart/form-data", b"--x\r\n"),
                ("garbage", "multipart/form-data; boundary=x", rng.bytes(2000)),
                ("many fields", "multipart/form-data; boundary=x",
                 b"".join(b'--x\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n' % i
                          for i in range(1500)) + b"--x--\r\n"),
                ("a field, not a file", "multipart/form-data; boundary=x",
                 b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + b"a" * 2000 + b"\r\n--x--\r\n")]:
            for path in ("/v1/datasets", "/v1/models"):
                answers.post(f"{path} {label}", path, content=body, headers={"Content-Type": content_type})
        assert alice.get("/v1/quota").status_code == 200
    head = "POST {} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer " + ALICE + "\r\nContent-Length: {}\r\n"
    for path, declared in [("/v1/jobs", 200 * 2**20), ("/v1/certify", 300 * 2**20), ("/v1/datasets", 2**40)]:
        status, body = send_partial(gateway.url, head.format(path, declared), json_array_body(1)[:2**20])
        answers.statuses[status] += 1
        assert status == 413, (path, body)
    peak_kib = max(status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS"))
    growth_mb = (peak_kib - before_kib) / 1024
    print(f"\nhostile bodies: {sum(answers.statuses.values())} requests, statuses {sorted(answers.statuses.items())}; "
          f"gateway RSS {before_kib / 1024:.0f} MiB before, peak {peak_kib / 1024:.0f} MiB (+{growth_mb:.0f} MiB, "
          f"bound {MEMORY_BOUND_MB} MiB)")
    assert not answers.refused, "\n".join(answers.refused[:10]) + "\n" + gateway.log()
    assert growth_mb < MEMORY_BOUND_MB
