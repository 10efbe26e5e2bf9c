"""A burst of Certify calls over gRPC and REST against real processes, with health checks throughout.

    python bench/certify_burst.py                       # 200 calls per transport, 16 at once, 32 inputs each
    python bench/certify_burst.py --calls 50 --concurrency 4

A private redis-server, ``--workers`` ``python -m services.bound_worker`` processes and
``python -m services.gateway`` run on 127.0.0.1 (free ports, a temporary directory). An fc-16 model
trained for a moment on the built-in ``digits`` dataset is uploaded; then ``--calls`` Certify calls
go to the gRPC Certifier (``CertifierClient``) and, separately, the same number to ``POST /v1/certify``
(``GlsClient``), ``--concurrency`` at a time. Meanwhile a thread sends gRPC health checks
(``grpc.health.v1``) for the Certifier service every ``--health-every-ms``. Latencies count every call,
failed ones too; a few warm-up calls before each burst are not counted. Every process started here is
stopped (by pid) before the script exits.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import redis
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from safetensors.torch import save as save_tensors

from gls_core.data import load_dataset
from gls_core.nets.zoo import network
from services.client import CertifierClient, ClientError, GlsClient
from services.cluster import free_port, wait_for_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
CERTIFIER = "gls.v1.Certifier"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when this script dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Stack:
    """Redis, bound workers and a gateway as child processes on loopback, all in one temporary directory."""

    folder: Path
    workers: int = 2
    gateway_env: dict[str, str] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_url: str = ""
    worker_token: str = ""
    http_port: int = 0
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def certifier_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def gateway_pid(self) -> int:
        return self.children["gateway"].pid

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("wb") as log:
            child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)
        self.children[name] = child
        return child

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("GLS_") and key != "REDIS_URL"}
        env.update(GLS_REDIS_URL=self.redis_url, GLS_TOKENS=f"{TOKEN}=bench", GLS_WORKER_TOKEN=self.worker_token,
                   GLS_THREADS="1", GLS_LOG_LEVEL="warning", GLS_HEARTBEAT_S="0.5", GLS_HEARTBEAT_TTL_S="5",
                   GLS_DEVICE="cpu", PYTHONUNBUFFERED="1")
        return env

    def start(self) -> Stack:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed (Debian package redis-server)")
        self.worker_token = secrets.token_urlsafe(24)
        password = secrets.token_urlsafe(24)
        redis_port = free_port()
        (self.folder / "redis").mkdir(parents=True, exist_ok=True)
        self._spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--dir", str(self.folder / "redis"), "--appendonly", "no", "--save", "",
                              "--requirepass", password], dict(os.environ))
        self.redis_url = f"redis://:{password}@127.0.0.1:{redis_port}/0"
        self._wait(lambda: redis.Redis.from_url(self.redis_url).ping(), "redis-server", 20)
        env = self._env()
        for index in range(self.workers):
            port = free_port()
            self._spawn(f"worker-{index}", [sys.executable, "-m", "services.bound_worker"],
                        {**env, "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(port)})
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        """(Re)start the gateway on fresh ports and wait until it sees every worker."""
        self.http_port, self.grpc_port = free_port(), free_port()
        while self.grpc_port == self.http_port:
            self.grpc_port = free_port()
        env = {**self._env(), "GLS_GATEWAY_HOST": "127.0.0.1", "GLS_GATEWAY_PORT": str(self.http_port),
               "GLS_CERTIFIER_PORT": str(self.grpc_port), **self.gateway_env}
        self._spawn("gateway", [sys.executable, "-m", "services.gateway"], env)
        wait_for_port(self.http_port, 90)
        self._wait(lambda: httpx.get(f"{self.url}/readyz", timeout=5).json()["workers"] >= self.workers,
                   f"gateway with {self.workers} workers", 90)

    def stop_gateway(self) -> None:
        self._stop("gateway")

    def _wait(self, check: Callable[[], object], what: str, timeout: float) -> None:
        def failed() -> str | None:
            dead = [name for name, child in self.children.items() if child.poll() is not None]
            return f"{dead[0]} exited during start-up:\n{self.log(dead[0])}" if dead else None

        wait_until(check, what, timeout, failed, interval=0.1)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _stop(self, name: str) -> None:
        child = self.children.pop(name, None)
        if child is None or child.poll() is not None:
            return
        os.kill(child.pid, signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(5)

    def stop(self) -> None:
        """The gateway first, then the workers, Redis last; each by its pid, each wait bounded."""
        for name in sorted(self.children, key=lambda n: ("gateway", "worker", "redis").index(n.split("-")[0])):
            self._stop(name)


@contextmanager
def stack(workers: int = 2, gateway_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A started :class:`Stack` in a temporary directory; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="gls-bench-") as folder:
        running = Stack(Path(folder), workers, gateway_env or {})
        try:
            yield running.start()
        except BaseException:
            for name in list(running.children):
                if running.log(name).strip():
                    print(f"--- {name}.log (tail)\n{running.log(name)}", file=sys.stderr)
            raise
        finally:
            running.stop()


def digits_model(steps: int = 100) -> tuple[torch.Tensor, bytes]:
    """fc-16 on digits after a few full-batch Adam steps: (theta, the GLS model file's bytes)."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(train.x), train.y).backward()
        optimizer.step()
    theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    assert theta.shape == (network("fc-16", "digits").num_params,)
    return theta, save_tensors({"theta": theta}, {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})


def upload_model(client: GlsClient, folder: Path) -> str:
    path = folder / "fc16-digits.safetensors"
    path.write_bytes(digits_model()[1])
    model_id: str = client.upload_model(path)["id"]
    return model_id


@dataclass
class Burst:
    transport: str
    calls: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)


def run_burst(transport: str, call: Callable[[], object], calls: int, concurrency: int) -> Burst:
    result, lock = Burst(transport, calls), threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        failure: str | None = None
        try:
            call()
        except ClientError as error:
            failure = str(error.status) if error.status is not None else "transport"
        except Exception as error:  # a bug or a client-side failure: counted, not fatal
            failure = type(error).__name__
        elapsed = 1000 * (time.perf_counter() - started)
        with lock:
            result.latencies_ms.append(elapsed)
            if failure is None:
                result.ok += 1
            else:
                result.failed[failure] += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(calls)))
    result.wall_s = time.perf_counter() - started
    return result


@dataclass
class Health:
    checks: int = 0
    serving: int = 0
    other: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


class HealthProbe(threading.Thread):
    """grpc.health.v1 Check on the Certifier service every ``every_s`` until stopped."""

    def __init__(self, address: str, every_s: float, timeout_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.address, self.every_s, self.timeout_s = address, every_s, timeout_s
        self.stopping = threading.Event()
        self.health = Health()

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self.stopping.is_set():
                started = time.perf_counter()
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=CERTIFIER), timeout=self.timeout_s)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.RpcError as error:
                    status = error.code().name
                self.health.latencies_ms.append(1000 * (time.perf_counter() - started))
                self.health.checks += 1
                if status == "SERVING":
                    self.health.serving += 1
                else:
                    self.health.other[status] += 1
                self.stopping.wait(self.every_s)


def counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counter.items())) or "0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="Certify calls per transport")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--inputs", type=int, default=32, help="digits test inputs per call")
    parser.add_argument("--method", default="deeppoly")
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="client deadline per call, seconds")
    parser.add_argument("--health-every-ms", type=float, default=20.0)
    parser.add_argument("--certifier-threads", type=int, default=None, help="GLS_CERTIFIER_THREADS (default: the "
                        "setting's default)")
    parser.add_argument("--certifier-queue", type=int, default=None, help="GLS_CERTIFIER_QUEUE")
    args = parser.parse_args()

    gateway_env = {name: str(value) for name, value in (("GLS_CERTIFIER_THREADS", args.certifier_threads),
                                                          ("GLS_CERTIFIER_QUEUE", args.certifier_queue))
                   if value is not None}
    test = load_dataset("digits", "test", subset=args.inputs)
    x, y = test.x, test.y
    began = time.perf_counter()
    with stack(args.workers, gateway_env) as running:
        setup_s = time.perf_counter() - began
        limits = httpx.get(f"{running.url}/readyz", timeout=5).json()
        with GlsClient(running.url, TOKEN, timeout=args.timeout) as rest, \
                CertifierClient(running.certifier_address, TOKEN, timeout=args.timeout) as rpc:
            model_id = upload_model(rest, running.folder)
            calls: dict[str, Callable[[], object]] = {
                "gRPC Certify": lambda: rpc.certify(x, y, args.eps, args.method, model_id=model_id),
                "REST POST /v1/certify": lambda: rest.certify(x, y, args.eps, args.method, model_id=model_id),
            }
            bursts: list[tuple[Burst, Health]] = []
            for name, call in calls.items():
                for _ in range(3):  # warm-up: lazy imports, connections, the workers' blob caches
                    call()
                probe = HealthProbe(running.certifier_address, args.health_every_ms / 1000)
                probe.start()
                try:
                    burst = run_burst(name, call, args.calls, args.concurrency)
                finally:
                    probe.stopping.set()
                    probe.join(10)
                bursts.append((burst, probe.health))
    total_s = time.perf_counter() - began

    threads = gateway_env.get("GLS_CERTIFIER_THREADS", "default 8")
    queue = gateway_env.get("GLS_CERTIFIER_QUEUE", "default 64")
    print(f"Certify burst: {args.calls} calls per transport, {args.concurrency} at once, {args.inputs} digits inputs "
          f"per call, fc-16, {args.method}, eps {args.eps}; {args.workers} bound workers "
          f"({limits['workers']} live), 1 torch thread per process; GLS_CERTIFIER_THREADS {threads}, "
          f"GLS_CERTIFIER_QUEUE {queue}; {os.cpu_count()} cores, torch {torch.__version__}")
    print()
    print("| transport | calls | succeeded | failed (by status) | p50 ms | p99 ms | wall s | calls/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for burst, _ in bursts:
        print(f"| {burst.transport} | {burst.calls} | {burst.ok} | {counts(burst.failed)} | "
              f"{percentile(burst.latencies_ms, 50):.0f} | {percentile(burst.latencies_ms, 99):.0f} | "
              f"{burst.wall_s:.1f} | {burst.calls / burst.wall_s:.1f} |")
    print()
    print(f"gRPC health checks (service {CERTIFIER}, one every {args.health_every_ms:g} ms, 2 s deadline) "
          "during each burst:")
    print()
    print("| during | checks | SERVING | not SERVING / errors | p50 ms | p99 ms | max ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for burst, health in bursts:
        print(f"| {burst.transport} | {health.checks} | {health.serving} | {counts(health.other)} | "
              f"{percentile(health.latencies_ms, 50):.1f} | {percentile(health.latencies_ms, 99):.1f} | "
              f"{max(health.latencies_ms, default=float('nan')):.1f} |")
    print()
    print(f"start-up {setup_s:.0f} s; whole run {total_s:.0f} s")


if __name__ == "__main__":
    main()
