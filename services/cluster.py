"""`gls cluster up`: the docker-compose topology as local processes on loopback.

Redis (a private redis-server on a free port unless a URL is given), the gateway (REST + gRPC
Certifier), one coordinator with a spare standing by and N bound workers, each a child process
configured through the same GLS_* environment variables the containers use, each logging to
``run_dir/logs``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

CLUSTER_FILE = "cluster.json"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: all sockets stay bound until every port is known, so none repeats."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: children outlive a killed parent, as before
        pass


def _die_with_parent_and_stand_by() -> None:
    """As :func:`_die_with_parent`, and block the promotion signal, which stays blocked across exec: the spare
    coordinator takes it with ``sigwait`` once it is ready, so one sent during its start-up is kept, not fatal."""
    _die_with_parent()
    signal.pthread_sigmask(signal.SIG_BLOCK, {PROMOTE})


PR_SET_PDEATHSIG = 1
PROMOTE = signal.SIGUSR1
"""Sent by the supervisor to the spare coordinator: the coordinator died, take its place."""
SPARE = "coordinator-spare"
REDIS_MAX_MEMORY_MB = 2048
DURABLE_AOF = ("--appendonly", "yes", "--appendfsync", "always")
"""The redis-server options under which every write is in the append-only file, fsynced, before Redis answers it,
so nothing the services acknowledge (an upload's or a submission's 201, a step's commit) is lost when Redis
crashes. With ``everysec`` Redis may answer a write whose AOF write it has postponed behind a slow fsync.
``gls cluster up``, docker-compose.yml and deploy/k8s start Redis with them."""
BACKOFF_WINDOW_S = 60.0
"""Restarts within this long count towards a child's back-off; one that stays up longer starts afresh."""
BACKOFF_MAX_S = 60.0


def backoff(recent_restarts: int) -> float:
    """Seconds to wait before restarting a child that exited after ``recent_restarts`` recent restarts:
    none for the first crash (recovery is what matters), then 1, 2, 4, ... up to ``BACKOFF_MAX_S``."""
    return 0.0 if recent_restarts == 0 else min(BACKOFF_MAX_S, 2.0 ** (recent_restarts - 1))


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    standing_by: bool = False  # a spare: started with the promotion signal blocked

    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts by the supervisor
    exited_at: float | None = None  # when the supervisor found it gone (None: running, or not seen dead yet)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent_and_stand_by if self.standing_by
                                        else _die_with_parent)
        log.close()

    def spare(self) -> Child:
        """A fresh, not yet started copy of this child, to stand by in its place."""
        return Child(self.name, self.args, self.env, self.log_path, standing_by=self.standing_by)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, no deregistration."""
        if self.process is not None and self.alive:
            self.process.kill()
            self.process.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        if self.process is None or not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


    def due(self, now: float) -> tuple[bool, float]:
        """(restart now?, seconds of back-off) for an exited child; notes when it was first found gone."""
        if self.exited_at is None:
            self.exited_at = now
        self.restarts = [at for at in self.restarts if now - at < BACKOFF_WINDOW_S]
        wait = backoff(len(self.restarts))
        return now >= self.exited_at + wait, wait

    def restarted(self, now: float) -> None:
        self.restarts.append(now)
        self.exited_at = None


@dataclass
class Cluster:
    run_dir: Path
    redis_url: str
    token: str
    gateway_url: str
    certifier_address: str
    children: dict[str, Child] = field(default_factory=dict)
    redis_child: Child | None = None

    def info(self) -> dict[str, object]:
        return {"gateway_url": self.gateway_url, "certifier_address": self.certifier_address, "token": self.token,
                "redis_url": self.redis_url, "run_dir": str(self.run_dir),
                "pids": {name: child.process.pid for name, child in self.all_children().items() if child.process}}

    def all_children(self) -> dict[str, Child]:
        return {**({"redis": self.redis_child} if self.redis_child else {}), **self.children}

    def supervise(self, now: float | None = None) -> list[str]:
        """Restart every child that has exited (Redis first: the others reconnect to it); what it did, in words.

        A child that keeps exiting is restarted after a growing back-off (:func:`backoff`) while the rest
        keep running; a dead coordinator is replaced by its spare.
        """
        now = time.monotonic() if now is None else now
        events = self._promote_spare(now)
        changed = bool(events)
        for name, child in self.all_children().items():
            if child.alive:
                continue
            first_seen = child.exited_at is None
            ready, wait = child.due(now)
            if not ready:
                if first_seen:
                    events.append(f"{name} exited again ({len(child.restarts)} restarts in the last minute); "
                                  f"restarting it in {wait:.0f} s")
                continue
            child.restarted(now)
            child.start()
            events.append(f"{name} exited; restarted")
            changed = True
        if changed:
            self.write_info()  # the new pids
        return events

    def _promote_spare(self, now: float) -> list[str]:
        """A dead coordinator is replaced by its spare, already started and sharing its consumer name, which
        takes the job it left pending at once; a new spare is started in its place."""
        coordinator, spare = self.children.get("coordinator"), self.children.get(SPARE)
        if coordinator is None or coordinator.alive or spare is None or not spare.alive or spare.process is None:
            return []
        ready, _ = coordinator.due(now)
        if not ready:  # a coordinator that keeps dying waits out its back-off like any other child
            return []
        successor = spare.spare()
        spare.process.send_signal(PROMOTE)
        spare.name, spare.standing_by, spare.restarts = "coordinator", False, coordinator.restarts
        spare.restarted(now)
        self.children["coordinator"] = spare
        self.children[SPARE] = successor
        successor.start()
        return ["coordinator exited; its spare took over"]

    def write_info(self) -> None:
        """``cluster.json``, readable by its owner only: it holds the token and the Redis password. Written to a
        sibling and renamed, so a reader (the client verbs, a restart's rewrite) never sees it half written."""
        path = self.run_dir / CLUSTER_FILE
        staged = path.with_name(f".{CLUSTER_FILE}.tmp")
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(json.dumps(self.info(), indent=2))
        staged.chmod(0o600)
        os.replace(staged, path)

    def stop(self) -> None:
        """Gateway first (no new work), then the coordinator (finishes its step), workers, Redis last."""
        order = sorted(self.children, key=lambda name: ("gateway", "coordinator", "worker").index(name.split("-")[0]))
        for name in order:
            self.children[name].stop()
        if self.redis_child is not None:
            self.redis_child.stop()


def _base_env(redis_url: str, tokens: str, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    # The workers' shared secret and the key of the tenant pseudonyms on /metrics: the caller's, or fresh ones per
    # cluster that only its processes know.
    worker_token = os.environ.get("GLS_WORKER_TOKEN") or secrets.token_urlsafe(24)
    metrics_key = os.environ.get("GLS_METRICS_KEY") or secrets.token_urlsafe(24)
    env.update(GLS_REDIS_URL=redis_url, GLS_TOKENS=tokens, GLS_WORKER_TOKEN=worker_token,
               GLS_METRICS_KEY=metrics_key, PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    if threads:
        env["GLS_THREADS"] = str(threads)
    return env


def wait_until(check: Callable[[], object], what: str, timeout: float, failed: Callable[[], str | None],
               interval: float = 0.2) -> None:
    """Poll ``check`` (exceptions mean "not up yet") until it is true; ``failed`` names a process that died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reason = failed()
        if reason:
            raise RuntimeError(reason)
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def _wait(check: Callable[[], object], what: str, timeout: float, children: dict[str, Child]) -> None:
    def failed() -> str | None:
        dead = [child for child in children.values() if not child.alive]
        return f"{dead[0].name} exited during start-up; see {dead[0].log_path}" if dead else None

    wait_until(check, what, timeout, failed)


def _start_redis(run_dir: Path) -> tuple[Child, str]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server not found: install it or set REDIS_URL to an existing Redis")
    port = free_port()
    data = run_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # A password only this cluster's processes know, and a memory ceiling: past it writes fail (the gateway
    # answers 503) instead of the machine swapping; nothing stored is evicted. Every write is fsynced before
    # Redis answers it (DURABLE_AOF).
    password = secrets.token_urlsafe(24)
    child = Child("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                            *DURABLE_AOF, "--save", "", "--requirepass", password,
                            "--maxmemory", f"{REDIS_MAX_MEMORY_MB}mb", "--maxmemory-policy", "noeviction"],
                  dict(os.environ), run_dir / "logs" / "redis.log")
    child.start()
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    _wait(client.ping, "redis-server", 20, {"redis": child})
    client.close()
    return child, url


def coordinator_id(run_dir: Path) -> str:
    """The supervised coordinator's consumer name: the same for every start on this host and run directory.

    A restarted coordinator (after a crash, or after the supervisor itself was restarted on the same run
    directory) thus finds the job it left pending under its own name and takes it back at once, instead of
    waiting for the claim to go stale. Safe because the supervisor starts a child only after it exited.
    """
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
    return f"{socket.gethostname()}-cluster-{digest}"


def up(run_dir: Path, workers: int = 2, redis_url: str | None = None, token: str | None = None,
       threads: int | None = None, gateway_port: int = 0, certifier_port: int = 0, timeout: float = 90.0,
       tokens: str | None = None) -> Cluster:
    """Start everything, wait until it serves, write ``run_dir/cluster.json``; the caller stops it."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    redis_child = None
    redis_url = redis_url or os.environ.get("REDIS_URL") or os.environ.get("GLS_REDIS_URL")
    if not redis_url:
        redis_child, redis_url = _start_redis(run_dir)
    tokens = tokens or os.environ.get("GLS_TOKENS")
    if tokens and not token:  # cluster.json must hold a token the gateway accepts: the first configured one
        token = tokens.split(",")[0].partition("=")[0].strip()
    token = token or secrets.token_urlsafe(18)
    tokens = tokens or f"{token}=default"
    env = _base_env(redis_url, tokens, threads)
    python = sys.executable
    ports = free_ports(workers + 2)  # distinct: one for each worker, the gateway and the Certifier
    gateway_port = gateway_port or ports[-2]
    certifier_port = certifier_port or ports[-1]
    cluster = Cluster(run_dir, redis_url, token, f"http://127.0.0.1:{gateway_port}", f"127.0.0.1:{certifier_port}",
                      redis_child=redis_child)
    try:
        for index in range(workers):
            port = ports[index]
            worker_env = {**env, "GLS_WORKER_HOST": "127.0.0.1", "GLS_WORKER_PORT": str(port)}
            name = f"worker-{index}"
            cluster.children[name] = Child(name, [python, "-m", "services.bound_worker"], worker_env,
                                           run_dir / "logs" / f"{name}.log")
        coordinator_env = {**env, "GLS_COORDINATOR_ID": env.get("GLS_COORDINATOR_ID") or coordinator_id(run_dir)}
        cluster.children["coordinator"] = Child("coordinator", [python, "-m", "services.coordinator"],
                                                coordinator_env, run_dir / "logs" / "coordinator.log")
        # Started ahead, imports done, waiting for PROMOTE: a coordinator's crash costs no process start-up.
        # It starts once the rest serves, so that it does not slow the start (or restart) of the cluster.
        spare = Child(SPARE, [python, "-m", "services.coordinator", "--spare"], coordinator_env,
                      run_dir / "logs" / "coordinator.log", standing_by=True)
        gateway_env = {**env, "GLS_GATEWAY_HOST": "127.0.0.1", "GLS_GATEWAY_PORT": str(gateway_port),
                       "GLS_CERTIFIER_PORT": str(certifier_port)}
        cluster.children["gateway"] = Child("gateway", [python, "-m", "services.gateway"], gateway_env,
                                            run_dir / "logs" / "gateway.log")
        for child in cluster.children.values():
            child.start()
        client = redis.Redis.from_url(redis_url)
        _wait(lambda: client.scard("gls:workers") >= workers, f"{workers} workers", timeout, cluster.children)
        _wait(lambda: urllib.request.urlopen(f"{cluster.gateway_url}/readyz", timeout=2).status == 200,
              "gateway", timeout, cluster.children)
        client.close()
        cluster.children[SPARE] = spare
        spare.start()
    except BaseException:
        cluster.stop()
        raise
    cluster.write_info()
    return cluster
