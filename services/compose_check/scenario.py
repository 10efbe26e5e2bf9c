"""What a user does with the cluster: train a job over REST, kill a worker under it, download, certify twice."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gls_core.data import load_dataset

from ..client import CertifierClient, GlsClient
from .cluster import CERTIFIER, GATEWAY_URL, Cluster, expected_workers, ready_workers, wait_for
from .images import ROOT
from .podman import CheckError

# 8x8 digits ship with scikit-learn, so the containers need no dataset; PGD warm-up, then DeepPoly-PGPE on the
# workers, long enough that a worker dies under a running step.
CONFIG = ROOT / "configs" / "tiny-digits-dp-pgpe.yaml"
OVERRIDES = ("schedule.steps_per_epoch=30",)
EPS = 0.02
IMAGES = 50


@dataclass
class Outcome:
    """What the scenario saw, printed at the end."""

    job_id: str = ""
    killed: str = ""
    model_bytes: int = 0
    certified_rest: int = -1
    certified_grpc: int = -1
    total: int = 0


def train(cluster: Cluster, client: GlsClient, outcome: Outcome) -> str:
    """Submit, follow the events, kill the last worker container at the first PGPE step; the model id."""
    job = client.submit(CONFIG, OVERRIDES)
    outcome.job_id = job["id"]
    print(f"  job {job['id']} submitted", flush=True)
    for event in client.events(job["id"]):
        if event.get("type") == "metrics" and event.get("kind") == "step" and event.get("stage") != "warmup" \
                and not outcome.killed:
            outcome.killed = cluster.containers("worker")[-1]
            cluster.podman.run("kill", outcome.killed)
            print(f"  killed {outcome.killed} at {event['stage']} step {event['step']}", flush=True)
        elif event.get("type") == "metrics" and event.get("kind") == "epoch":
            print(f"  {event['stage']} epoch {event['epoch']}: natural {event['natural_acc']:.1%}, "
                  f"certified {event['certified_acc']:.1%}", flush=True)
    final = client.job(job["id"])
    if final["status"] != "succeeded":
        raise CheckError(f"job {job['id']} ended {final['status']}: {final.get('error')}\n{cluster.logs()}")
    if not outcome.killed:
        raise CheckError(f"job {job['id']} succeeded before any PGPE step was seen: no worker was killed under it")
    return str(final["model_id"])


def recover(cluster: Cluster) -> None:
    """The killed worker started again (restart policy or by hand) and every worker live again."""
    for name in cluster.containers("worker"):
        state = cluster.podman.run("inspect", "--format", "{{.State.Status}}", name).strip()
        if state != "running":
            cluster.podman.run("start", name)
    workers = expected_workers(cluster)
    wait_for(f"{workers} workers live again", lambda: ready_workers(cluster) == workers, cluster, 180)


def run(cluster: Cluster, work: Path) -> Outcome:
    """Train (a worker killed mid-job), download, certify over REST and gRPC with the same model."""
    outcome = Outcome()
    test = load_dataset("digits", "test", subset=IMAGES)
    with GlsClient(GATEWAY_URL, cluster.token) as client:
        started = time.monotonic()
        model_id = train(cluster, client, outcome)
        print(f"  job succeeded in {time.monotonic() - started:.0f} s; model {model_id}", flush=True)
        path = client.download_model(outcome.job_id, work / "model.safetensors")
        outcome.model_bytes = path.stat().st_size
        recover(cluster)
        rest = client.certify(test.x, test.y, EPS, "deeppoly", model_id=model_id)
    with CertifierClient(CERTIFIER, cluster.token) as certifier:
        grpc = certifier.certify(test.x, test.y, EPS, "deeppoly", model_id=model_id)
    outcome.certified_rest, outcome.certified_grpc, outcome.total = rest["certified"], grpc["certified"], rest["total"]
    if outcome.total != IMAGES or outcome.certified_rest != outcome.certified_grpc:
        raise CheckError(f"REST certified {rest['certified']}/{rest['total']}, "
                         f"gRPC {grpc['certified']}/{grpc['total']}")
    return outcome
