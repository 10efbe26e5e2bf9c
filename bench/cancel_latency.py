"""How soon a long step shows progress, and how soon a cancel takes effect, through a real cluster.

    python bench/cancel_latency.py                   # popsize 4096 (the cap), 3 cancels
    python bench/cancel_latency.py --popsize 1024 --repeats 5

``gls cluster up`` (its own redis-server, ``--workers`` bound workers, a coordinator and the gateway,
one thread each) runs on 127.0.0.1 in a temporary directory. Each repeat submits a PGPE job over REST
whose steps take many seconds (CNN3-tiny on MNIST, batch 512, DeepPoly, ``--popsize`` members),
waits until the job shows members done within a step, sends ``DELETE /v1/jobs/{id}`` and measures:

- first progress: from the submit until ``members_done`` first appears (includes the job's start:
  staging the data, the initial evaluation, the first block of the first step);
- to cancelled: from the DELETE until the job's status reads ``cancelled``;
- workers idle: from the DELETE until no worker process uses CPU any more (its user+system time grows
  by less than 2% of a core over 0.5 s), read from ``/proc``: the work really stopped, not only the job.

Every process is stopped by pid at the end and the temporary directory removed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from services.client import GlsClient
from services.cluster import Cluster, up

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def config(popsize: int) -> dict[str, Any]:
    return {
        "seed": 3, "estimator": "pgpe", "relaxation": "deeppoly", "eps": 0.1,
        "data": {"dataset": "mnist", "batch_size": 512, "test_subset": 100},
        "model": {"arch": "cnn3-tiny", "init": "kaiming"},
        "schedule": {"epochs": 1, "lr": 3e-4, "lr_milestones": [], "eps_ramp_epochs": 0, "steps_per_epoch": 10},
        "pgpe": {"popsize": popsize, "sigma_init": 1e-3},
        "evaluation": {"pgd_steps": 2, "pgd_restarts": 1},
        "device": "cpu",
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def wait_idle(pids: list[int], window: float = 0.5, busy: float = 0.02, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [cpu_seconds(pid) for pid in pids]
        time.sleep(window)
        if all(cpu_seconds(pid) - used < busy * window for pid, used in zip(pids, before, strict=True)):
            return
    raise TimeoutError("the workers kept computing")


def wait(client: GlsClient, job_id: str, ready: Any, timeout: float = 900.0, poll: float = 0.05) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if ready(job):
            return job
        if job["status"] in ("failed", "succeeded"):
            raise RuntimeError(f"job {job_id} ended {job['status']} before it was cancelled: {job.get('error')}")
        time.sleep(poll)
    raise TimeoutError(f"job {job_id}: {client.job(job_id)}")


def one_cancel(cluster: Cluster, client: GlsClient, popsize: int) -> tuple[float, float, float, dict[str, Any]]:
    workers = [child.process.pid for name, child in cluster.children.items()
               if name.startswith("worker") and child.process is not None]
    submitted = time.monotonic()
    job = client.submit(config(popsize))
    shown = wait(client, job["id"], lambda j: 0 < j.get("members_done", 0) < j.get("members", 0))
    first_progress = time.monotonic() - submitted
    cancelled_at = time.monotonic()
    client.cancel(job["id"])
    wait(client, job["id"], lambda j: j["status"] == "cancelled", timeout=600.0, poll=0.02)
    to_cancelled = time.monotonic() - cancelled_at
    wait_idle(workers)
    to_idle = time.monotonic() - cancelled_at - 0.5  # the last window showed idle: count from its start
    return first_progress, to_cancelled, max(0.0, to_idle), shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--popsize", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("GLS_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    run_dir = Path(tempfile.mkdtemp(prefix="gls-cancel-"))
    token = secrets.token_urlsafe(12)
    cluster = up(run_dir, workers=args.workers, token=token, threads=1, tokens=f"{token}=bench")
    rows = []
    try:
        with GlsClient(cluster.gateway_url, token) as client:
            for repeat in range(args.repeats):
                first, cancelled, idle, shown = one_cancel(cluster, client, args.popsize)
                rows.append((first, cancelled, idle))
                print(f"repeat {repeat + 1}: progress shown at step {shown['step'] + 1}, "
                      f"{shown['members_done']}/{shown['members']} members", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"\npopsize {args.popsize}, {args.workers} workers, one thread each, CNN3-tiny MNIST batch 512 DeepPoly\n")
    print("| repeat | first progress (s) | DELETE -> cancelled (s) | DELETE -> workers idle (s) |")
    print("| --- | --- | --- | --- |")
    for index, (first, cancelled, idle) in enumerate(rows, 1):
        print(f"| {index} | {first:.1f} | {cancelled:.2f} | {idle:.2f} |")
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(f"| median | {medians[0]:.1f} | {medians[1]:.2f} | {medians[2]:.2f} |")


if __name__ == "__main__":
    main()
