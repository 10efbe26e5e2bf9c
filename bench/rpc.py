"""One PGPE step in process vs through bound-worker processes: where the time goes.

    python -m bench.rpc                       # CNN3, P = 256, B = 512, DeepPoly (the issue's setting)
    python -m bench.rpc --method ibp --batch 128 --popsize 64    # a quick look

Each configuration evaluates the same proposal on the same MNIST batch and applies the PGPE update;
all results are checked to be bit-identical. Workers are real ``python -m services.bound_worker``
processes on loopback. "RPC + serialisation" is the step's wall time minus the slowest share's
compute time inside its worker: encoding, transfer, decoding, queueing and assembling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gls_core.data import load_dataset
from gls_core.nets.zoo import network
from gls_core.training.config import PGPEConfig
from gls_core.training.estimators import PGPEEstimator, Proposal
from gls_core.training.init import ibp_init
from gls_core.training.objective import Objective
from gls_core.training.points import evaluate_members
from gls_core.training.schedules import StepHyper
from services.cluster import free_port, wait_for_port
from services.settings import Settings
from services.worker_client import WorkerPool

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    setting: str
    workers: int
    step_s: float
    compute_s: float
    overhead_s: float
    serialise_s: float
    request_mb: float

    @property
    def overhead_pct(self) -> float:
        return 100 * self.overhead_s / self.step_s if self.step_s else 0.0


def start_workers(count: int, threads: int, extra_env: dict[str, str] | None = None
                  ) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    processes, addresses = [], []
    for _ in range(count):
        port = free_port()
        env = {**os.environ, "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(port),
               "GLS_WORKER_REGISTER": "false", "GLS_THREADS": str(threads), "GLS_DEVICE": "cpu", **(extra_env or {})}
        processes.append(subprocess.Popen([sys.executable, "-m", "services.bound_worker"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        addresses.append(f"127.0.0.1:{port}")
    for address in addresses:
        wait_for_port(int(address.rsplit(":", 1)[1]), timeout=60)
    return processes, addresses



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="cnn3")
    parser.add_argument("--method", default="deeppoly")
    parser.add_argument("--popsize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    spec = network(args.arch, "mnist")
    data = load_dataset("mnist", "train")
    x, y = data.x[:args.batch], data.y[:args.batch]
    estimator = PGPEEstimator(PGPEConfig(popsize=args.popsize))
    theta = ibp_init(spec, torch.Generator().manual_seed(0))
    state = estimator.init_state(theta)
    hyper = StepHyper(lr=3e-4, eps=0.1, sigma_scale=1.0)
    objective = Objective("certified", args.method)
    proposal: Proposal = estimator.propose(state, step=0, seed=0, hyper=hyper)

    rows: list[Row] = []
    torch.set_num_threads(cores)
    warm = (x[:4], y[:4])  # first calls pay for lazy initialisation; keep that out of every timing
    evaluate_members(spec, proposal, objective, *warm, 0.1, 0, args.block, 0, args.block)
    start = time.perf_counter()
    local = evaluate_members(spec, proposal, objective, x, y, 0.1, 0, args.block)
    reference = estimator.update(state, proposal, local, hyper)["theta"]
    elapsed = time.perf_counter() - start
    rows.append(Row("in process", 0, elapsed, elapsed, 0.0, 0.0, 0.0))

    for count in args.workers:
        processes, addresses = start_workers(count, max(1, cores // count))
        try:
            settings = Settings(worker_addresses=",".join(addresses), rpc_timeout_s=3600)
            with WorkerPool(settings) as pool:
                pool.evaluate(spec, proposal, objective, *warm, 0.1, 0, args.block)
                start = time.perf_counter()
                remote = pool.evaluate(spec, proposal, objective, x, y, 0.1, 0, args.block)
                theta_remote = estimator.update(state, proposal, remote, hyper)["theta"]
                elapsed = time.perf_counter() - start
                stats = pool.last_step_stats()
                assert stats is not None
                if not torch.equal(theta_remote, reference):
                    raise SystemExit(f"{count} workers: weights differ from the in-process step")
                serialise = stats.encode_s + stats.assemble_s + sum(c.serialise_s + c.deserialise_s
                                                                    for c in stats.calls)
                request_mb = sum(call.request_bytes for call in stats.calls) / 2**20
                compute = stats.compute_s
                rows.append(Row(f"{count} worker(s)", count, elapsed, compute, max(0.0, elapsed - compute),
                                serialise, request_mb))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)

    title = (f"one PGPE step: {spec.name}, {args.method}, P={args.popsize}, B={args.batch}, block {args.block}, "
             f"{cores} cores, torch {torch.__version__}")
    print(title)
    print(f"{'setting':<14} {'step s':>9} {'compute s':>10} {'RPC+ser. s':>11} {'RPC+ser. %':>11} "
          f"{'ser. s':>8} {'request MB':>11}")
    for row in rows:
        print(f"{row.setting:<14} {row.step_s:>9.3f} {row.compute_s:>10.3f} {row.overhead_s:>11.3f} "
              f"{row.overhead_pct:>10.2f}% {row.serialise_s:>8.4f} {row.request_mb:>11.3f}")
    print("all settings produced bit-identical weights")
    if args.json:
        args.json.write_text(json.dumps({"title": title, "rows": [row.__dict__ for row in rows]}, indent=2))


if __name__ == "__main__":
    main()
