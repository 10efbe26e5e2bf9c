"""End to end through `gls cluster up`: every service a real process, Redis real, gRPC and HTTP on loopback.

REST submit -> coordinator -> 2 workers -> finished job; the downloaded weights equal the in-process
run with the same seed, also when a worker is SIGKILLed mid-job; certification through gRPC and REST
agrees with the in-process certifier; tenants are isolated; bad input gets 4xx / INVALID_ARGUMENT.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import torch

from gls_core.data import load_dataset
from gls_core.evaluation import certify
from gls_core.training import Trainer, load_model, parse_config
from services.client import CertifierClient, ClientError, GlsClient
from services.cluster import Cluster, up

pytestmark = pytest.mark.slow

CONFIG: dict[str, Any] = {
    "seed": 11, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.02,
    "data": {"dataset": "digits", "batch_size": 32, "test_subset": 40},
    "model": {"arch": "cnn3-tiny", "init": "kaiming"},
    "warmup": {"estimator": "pgd", "epochs": 1, "lr": 0.02},
    "schedule": {"epochs": 2, "lr": 0.01, "lr_milestones": [1], "eps_ramp_epochs": 0, "steps_per_epoch": 4},
    "pgpe": {"popsize": 16, "sigma_init": 0.01},
    "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
    "block_members": 4,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("cluster")
    started = up(run_dir, workers=2, threads=1, tokens="alice-token=alice,bob-token=bob", token="alice-token")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    return Trainer(parse_config(CONFIG), tmp_path_factory.mktemp("local")).run().theta


def finish(client: GlsClient, job_id: str, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(client.job(job_id))


def test_a_rest_job_on_two_workers_gives_the_in_process_weights(cluster: Cluster, in_process: torch.Tensor,
                                                                 tmp_path: Path) -> None:
    assert (cluster.run_dir / "cluster.json").is_file()
    with GlsClient(cluster.gateway_url, "alice-token") as client:
        job = client.submit(CONFIG)
        events = list(client.events(job["id"]))
        assert events[-1]["type"] == "end"
        steps = [event["step"] for event in events if event.get("type") == "metrics" and event.get("kind") == "step"]
        assert steps == list(range(1, 13))
        done = finish(client, job["id"])
        assert done["status"] == "succeeded", done
        _, theta, _ = load_model(client.download_model(job["id"], tmp_path / "model.safetensors"))
    assert torch.equal(theta, in_process)


def test_a_worker_killed_mid_job_leaves_the_weights_unchanged(cluster: Cluster, in_process: torch.Tensor,
                                                              tmp_path: Path) -> None:
    with GlsClient(cluster.gateway_url, "alice-token") as client:
        job = client.submit(CONFIG)
        deadline = time.monotonic() + 120
        while client.job(job["id"])["step"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.children["worker-0"].kill()
        done = finish(client, job["id"])
        assert done["status"] == "succeeded", done
        _, theta, _ = load_model(client.download_model(job["id"], tmp_path / "model.safetensors"))
    assert torch.equal(theta, in_process)


def test_certification_over_grpc_and_rest_agrees_with_in_process(cluster: Cluster, in_process: torch.Tensor) -> None:
    test = load_dataset("digits", "test", subset=60)
    with GlsClient(cluster.gateway_url, "alice-token") as client:
        model_id = client.jobs()[0]["model_id"]
        rest = client.certify(test.x, test.y, 0.02, "deeppoly", model_id=model_id)
    with CertifierClient(cluster.certifier_address, "alice-token") as certifier:
        grpc_result = certifier.certify(test.x, test.y, 0.02, "deeppoly", model_id=model_id)
        streamed = list(certifier.certify_stream(test.x, test.y, 0.02, "deeppoly", model_id=model_id, chunk_size=25))
    spec, _, _ = load_model_spec()
    local = certify(spec, in_process, test.x, test.y, 0.02, "deeppoly")
    for result in (rest["verdicts"], grpc_result["verdicts"], streamed):
        assert [v["certified"] for v in result] == local.tolist()
    assert rest["certified"] == grpc_result["certified"] == int(local.sum())
    for a, b in zip(rest["verdicts"], grpc_result["verdicts"], strict=True):
        assert a["margin_upper"] == b["margin_upper"]
    assert [v["index"] for v in streamed] == list(range(60))


def load_model_spec() -> tuple[Any, None, None]:
    from gls_core.nets.zoo import network

    return network("cnn3-tiny", "digits"), None, None


def test_tenants_are_isolated(cluster: Cluster) -> None:
    with GlsClient(cluster.gateway_url, "alice-token") as alice, GlsClient(cluster.gateway_url, "bob-token") as bob:
        job_id = alice.jobs()[0]["id"]
        assert all(job["id"] != job_id for job in bob.jobs())
        for attempt in (lambda: bob.job(job_id), lambda: bob.cancel(job_id), lambda: bob.metrics(job_id)):
            with pytest.raises(ClientError) as error:
                attempt()
            assert error.value.status == 404
    with CertifierClient(cluster.certifier_address, "bob-token") as certifier, pytest.raises(ClientError) as denied:
        certifier.certify(torch.zeros(1, 1, 8, 8), [0], 0.1, model_id=job_id)
    assert denied.value.status == "NOT_FOUND"


def test_malformed_requests_get_clear_answers_and_the_services_keep_serving(cluster: Cluster) -> None:
    headers = {"Authorization": "Bearer alice-token"}
    with httpx.Client(base_url=cluster.gateway_url, headers=headers, timeout=30) as http:
        assert http.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}
                         ).status_code == 422
        bad = http.post("/v1/jobs", json={**CONFIG, "eps": -1, "pgpe": {"popsize": 3}})
        assert bad.status_code == 422 and {"eps", "pgpe.popsize"} <= {d["field"] for d in bad.json()["detail"]}
        body = b'{"model_id": "nope", "inputs": [[[[Infinity]]]], "labels": [0], "eps": -0.5, "relaxation": "x"}'
        certify = http.post("/v1/certify", content=body, headers={"Content-Type": "application/json"})
        assert 400 <= certify.status_code < 500, certify.text
        assert http.get("/readyz").status_code == 200
    with GlsClient(cluster.gateway_url, "alice-token") as client:
        model_id = client.jobs()[0]["model_id"]
    with CertifierClient(cluster.certifier_address, "alice-token") as certifier:
        with pytest.raises(ClientError) as error:
            certifier.certify(torch.zeros(2, 1, 8, 8), [0, 1], -1.0, "deeppoly", model_id=model_id)
        assert error.value.status == "INVALID_ARGUMENT" and "eps" in str(error.value)
        request = certifier.request(torch.zeros(1, 1, 8, 8), [0], 0.1, "deeppoly", model_id, None, None)
        request.relaxation.method = "zonotope"  # what a client that skips our validation would send
        with pytest.raises(grpc.RpcError) as unknown:
            certifier._certify(request, metadata=certifier.metadata, timeout=30)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "zonotope" in unknown.value.details()
    assert all(child.alive for name, child in cluster.children.items() if name != "worker-0")
