"""The client verbs of `gls` against a served gateway (typer's runner, real HTTP and gRPC on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save as save_tensors
from test_gateway_support import ALICE, Stack, digits_model, digits_test, start_stack
from typer.testing import CliRunner, Result

from gls_core.evaluation import certify
from gls_core.training.checkpoint import load_model, save_model
from services.cli import app
from services.client import GlsClient, parse_sse
from services.store import JobStatus

JOB = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05, "data": {"dataset": "digits"},
       "model": {"arch": "fc-16"}, "schedule": {"epochs": 1, "lr_milestones": [], "eps_ramp_epochs": 0}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=1)
    yield running
    running.stop()


def gls(stack: Stack, *args: str, token: str = ALICE) -> Result:
    runner = CliRunner(env={"GLS_URL": stack.url, "GLS_TOKEN": token, "GLS_CLUSTER": None})
    return runner.invoke(app, list(args))


def test_submit_jobs_show_and_cancel(stack: Stack, tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(JOB))
    submitted = gls(stack, "submit", str(config), "--set", "eps=0.03", "--set", "name=from-cli")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    shown = json.loads(gls(stack, "job", job_id, "--json").stdout)
    assert shown["config"]["eps"] == 0.03 and shown["name"] == "from-cli" and shown["status"] == "queued"
    listed = json.loads(gls(stack, "jobs", "--json").stdout)
    assert job_id in [item["id"] for item in listed]
    assert job_id in gls(stack, "jobs").stdout
    cancelled = gls(stack, "cancel", job_id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stderr

    invalid = gls(stack, "submit", str(config), "--set", "eps=-1", "--set", "pgpe.popsize=3")
    assert invalid.exit_code == 1
    assert "eps:" in invalid.stderr and "pgpe.popsize:" in invalid.stderr and "HTTP 422" in invalid.stderr
    assert gls(stack, "job", "job-missing").exit_code == 1
    assert "invalid bearer token" in gls(stack, "jobs", token="nope").stderr


def test_jobs_piped_prints_every_id_whole(stack: Stack) -> None:
    job_id = stack.client().submit({**JOB, "name": "a-job-name-long-enough-to-crowd-the-table-" + "x" * 40})["id"]
    stack.store().update_job(job_id, status=JobStatus.FAILED, error="a long error message " * 8)
    listed = gls(stack, "jobs")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "name", "status", "progress", "model_id", "error"]
    row = next(line for line in lines if line.startswith(job_id))
    assert row.split()[:3] == [job_id, "a-job-name-long-enough-to-crowd-the-table-" + "x" * 40, "failed"]
    assert "…" not in listed.stdout


def test_connection_from_cluster_json(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"gateway_url": stack.url, "token": ALICE,
                                                      "certifier_address": stack.gateway.certifier_address}))
    runner = CliRunner(env={"GLS_URL": None, "GLS_TOKEN": None, "GLS_CLUSTER": None})
    assert runner.invoke(app, ["jobs", "--json", "--cluster", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["jobs", "--cluster", str(tmp_path / "cluster.json")]).exit_code == 0
    missing = runner.invoke(app, ["jobs"])
    assert missing.exit_code == 2 and "--url and --token" in missing.stderr
    unreachable = runner.invoke(app, ["jobs", "--url", "http://127.0.0.1:9", "--token", ALICE])
    assert unreachable.exit_code == 1 and "cannot reach the gateway" in unreachable.stderr


EPOCH_ROW = {"kind": "epoch", "stage": "main", "epoch": 1, "step": 3, "natural_acc": 0.5, "adversarial_acc": 0.25,
             "certified_acc": 0.125, "n": 40, "method": "ibp", "eps": 0.05}


def simulate(stack: Stack, job_id: str, final: JobStatus, error: str = "") -> threading.Thread:
    """The coordinator's writes for a three-step job, a little after the watcher connected."""
    def run() -> None:
        store = stack.store()
        time.sleep(0.3)
        store.update_job(job_id, status=JobStatus.RUNNING, total_steps=3)
        for step in (1, 2, 3):
            store.commit(job_id, save_tensors({"theta": torch.zeros(2)}), {"step": step},
                         [{"kind": "step", "step": step, "stage": "main", "loss": 0.5, "eps": 0.01}])
        store.commit(job_id, save_tensors({"theta": torch.zeros(2)}), {"step": 3}, [EPOCH_ROW])
        store.update_job(job_id, status=final, error=error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("final", "code"), [(JobStatus.SUCCEEDED, 0), (JobStatus.FAILED, 1),
                                             (JobStatus.CANCELLED, 3)])
def test_watch_follows_the_job_and_exits_with_its_outcome(stack: Stack, final: JobStatus, code: int) -> None:
    job_id = stack.client().submit(JOB)["id"]
    writer = simulate(stack, job_id, final, error="boom" if final == JobStatus.FAILED else "")
    watched = gls(stack, "watch", job_id)
    writer.join(5)
    assert watched.exit_code == code, watched.output
    assert f"{job_id} {final.value}" in watched.stderr
    assert "main epoch 1 (step 3): natural 50.00%, adversarial 25.00%, certified 12.50% (ibp, eps 0.05, 40 test " \
           "inputs)" in watched.stderr, watched.stderr
    if final == JobStatus.FAILED:
        assert "boom" in watched.stderr


def test_job_shows_its_latest_metrics_and_plot_draws_its_curves(stack: Stack, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = stack.client().submit(JOB)["id"]
    store = stack.store()
    store.update_job(job_id, status=JobStatus.RUNNING, total_steps=9)
    rows = [{"kind": "step", "step": step, "stage": "main", "epoch": 1, "loss": 1.0 / step, "eps": 0.01 * step,
             "lr": 0.001} for step in (1, 2, 3)]
    store.commit(job_id, save_tensors({"theta": torch.zeros(2)}), {"step": 3}, [*rows, EPOCH_ROW])
    shown = gls(stack, "job", job_id)
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0] == f"{job_id}: running, step 3/9", shown.stdout
    assert "latest step 3 (main, epoch 1): main loss 0.3333 eps 0.0300 lr 0.001" in shown.stdout, shown.stdout
    assert "latest evaluation: main epoch 1 (step 3): natural 50.00%" in shown.stdout
    plotted = gls(stack, "plot", job_id, "--out", str(tmp_path / "job.png"))
    assert plotted.exit_code == 0, plotted.output
    png = (tmp_path / "job.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == stack.client().curves(job_id)
    monkeypatch.chdir(tmp_path)
    here = gls(stack, "plot", job_id)  # no --out: JOB.png in the current directory, named in full
    assert here.exit_code == 0, here.output
    assert here.stdout.strip() == f"wrote {(tmp_path / f'{job_id}.png').resolve()}"
    assert (tmp_path / f"{job_id}.png").read_bytes() == png
    assert gls(stack, "plot", "job-missing", "--out", str(tmp_path / "none.png")).exit_code == 1


def test_download_a_trained_model(stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, theta = digits_model()
    job_id = stack.client().submit(JOB)["id"]
    assert gls(stack, "download", job_id, "--out", str(tmp_path / "none.safetensors")).exit_code == 1
    save_model(tmp_path / "trained.safetensors", theta, "fc-16", "digits", {"job": job_id})
    stack.store().put_model("alice", (tmp_path / "trained.safetensors").read_bytes(), "fc-16", "digits",
                            spec.num_params, model_id=job_id)
    stack.store().update_job(job_id, status=JobStatus.SUCCEEDED, model_id=job_id)
    monkeypatch.chdir(tmp_path)
    result = gls(stack, "download", job_id, "--out", "out/model.safetensors")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"wrote {(tmp_path / 'out' / 'model.safetensors').resolve()}"
    loaded_spec, loaded, metadata = load_model(tmp_path / "out" / "model.safetensors")
    assert loaded_spec == spec and loaded.equal(theta) and metadata["job"] == job_id


def test_models_datasets_and_certify_verbs(stack: Stack, tmp_path: Path) -> None:
    spec, theta = digits_model()
    save_model(tmp_path / "model.safetensors", theta, "fc-16", "digits")
    uploaded = gls(stack, "models", "upload", str(tmp_path / "model.safetensors"))
    assert uploaded.exit_code == 0, uploaded.output
    model_id = uploaded.stdout.strip()
    assert model_id in gls(stack, "models", "list").stdout

    x, y = digits_test(20)
    expected = certify(spec, theta, x, y, 0.02, "deeppoly")
    answers = []
    for extra in ([], ["--grpc", "--certifier", stack.gateway.certifier_address]):
        result = gls(stack, "certify", "--model", model_id, "--data", "digits", "--limit", "20", "--eps", "0.02",
                     "--method", "deeppoly", "--chunk", "8", "--json", *extra)
        assert result.exit_code == 0, result.output
        answers.append(json.loads(result.stdout))
    for answer in answers:
        assert answer["n"] == 20 and answer["certified_acc"] == float(expected.double().mean())
        assert [v["certified"] for v in answer["verdicts"]] == expected.tolist()
        assert [v["index"] for v in answer["verdicts"]] == list(range(20))
    no_address = gls(stack, "certify", "--model", model_id, "--data", "digits", "--limit", "2", "--eps", "0.1",
                     "--grpc")
    assert no_address.exit_code == 2 and "--certifier" in no_address.stderr
    assert "model_id" not in gls(stack, "certify", "--model", "model-x", "--data", "digits", "--limit", "2",
                                 "--eps", "0.1").stdout

    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 1, 8, 8), np.uint8), y=np.arange(10))
    dataset = gls(stack, "datasets", "upload", str(path), "--name", "zeros")
    assert dataset.exit_code == 0 and "10 examples" in dataset.stderr
    dataset_id = dataset.stdout.strip()
    assert json.loads(gls(stack, "datasets", "list", "--json").stdout)[-1]["id"] == dataset_id
    assert gls(stack, "datasets", "delete", dataset_id).exit_code == 0
    assert gls(stack, "models", "download", model_id, "--out", str(tmp_path / "back.safetensors")).exit_code == 0
    assert load_model(tmp_path / "back.safetensors")[1].equal(theta)
    assert gls(stack, "models", "delete", model_id).exit_code == 0
    assert "not found" in gls(stack, "models", "delete", model_id).stderr


def test_sse_parser_follows_the_format() -> None:
    lines = ["retry: 2000", ": comment", "", "id: 1-0", "event: metrics", "data: {\"a\":", "data: 1}", "",
             "data:plain", "", "event: end", ""]
    assert list(parse_sse(iter(lines))) == [("1-0", "metrics", "{\"a\":\n1}"), (None, "message", "plain")]


def test_client_reports_server_messages(stack: Stack) -> None:
    with GlsClient(stack.url, ALICE) as client:
        with pytest.raises(Exception) as error:
            client.submit({"eps": "wide"})
        assert "eps: Input should be a valid number" in str(error.value)
        with pytest.raises(Exception) as error:
            client.submit(Path("/nonexistent/job.yaml"))
        assert "cannot read config" in str(error.value)
