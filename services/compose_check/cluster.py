"""docker-compose.yml brought up with podman-compose, used as a user would, and brought down without a trace.

podman-compose 1.0.3 ignores profiles (the services are named instead), does not wait on depends_on
conditions (the services retry Redis and restart), and runs no health checks without systemd (they are
run here with `podman healthcheck run`); its `down -v` leaves the network, which is removed here.
"""

from __future__ import annotations

import functools
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .images import ROOT
from .podman import CheckError, Podman

PROJECT = "gls-compose-check"
SERVICES = ("redis", "gateway", "coordinator", "worker")
FILES = (ROOT / "docker-compose.yml", ROOT / "deploy" / "compose.local-build.yml")
GATEWAY_URL = "http://127.0.0.1:8000"
CERTIFIER = "127.0.0.1:50052"
LABEL = f"label=io.podman.compose.project={PROJECT}"


@dataclass(frozen=True)
class Cluster:
    """A running compose project: its podman, the token of its one tenant."""

    podman: Podman
    token: str

    def containers(self, service: str | None = None) -> list[str]:
        """Names of the project's containers (of one service), sorted."""
        filters = ["--filter", LABEL] + (["--filter", f"label=com.docker.compose.service={service}"] if service else [])
        return sorted(self.podman.run("ps", "-a", *filters, "--format", "{{.Names}}").split())

    def logs(self, tail: int = 30) -> str:
        """The last lines of every container's log, for an error message."""
        return "\n".join(f"--- {name}\n{self.podman.run('logs', '--tail', str(tail), name, check=False)}"
                         for name in self.containers())


def compose_secrets() -> dict[str, str]:
    """Fresh GLS_TOKENS (one tenant), GLS_WORKER_TOKEN and REDIS_PASSWORD, as deploy/README.md makes them."""
    return {"GLS_TOKENS": f"{secrets.token_hex(32)}=compose-check", "GLS_WORKER_TOKEN": secrets.token_hex(32),
            "REDIS_PASSWORD": secrets.token_hex(32)}


def require_free_ports() -> None:
    """The gateway publishes fixed host ports; name the one in use instead of failing inside podman."""
    for port in (8000, 50052):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise CheckError(f"127.0.0.1:{port} is in use; docker-compose.yml publishes the gateway there")


def wait_for(what: str, condition: Callable[[], bool], cluster: Cluster, timeout: float) -> None:
    """Poll condition every second until it holds; past timeout, fail with the containers' logs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CheckError(f"{what}: not within {timeout:.0f} s\n{cluster.logs()}")
        time.sleep(1.0)


def healthy(cluster: Cluster, name: str) -> bool:
    """Whether the container's compose health check passes now (podman healthcheck run)."""
    return not cluster.podman.run("healthcheck", "run", name, check=False).strip()


def leftovers(podman: Podman) -> list[str]:
    """The project's containers, networks and volumes that still exist."""
    names = podman.run("ps", "-a", "--filter", LABEL, "--format", "{{.Names}}").split()
    found = [f"container {name}" for name in names]
    found += [f"network {name}" for name in podman.run("network", "ls", "--format", "{{.Name}}").split()
              if name.startswith(f"{PROJECT}_")]
    found += [f"volume {name}" for name in podman.run("volume", "ls", "--format", "{{.Name}}").split()
              if name.startswith(f"{PROJECT}_")]
    return found


def down(podman: Podman) -> None:
    """compose down -v, then whatever podman-compose 1.0.3 leaves; fails if anything of the project remains."""
    podman.compose(FILES, PROJECT, "down", "-v", "-t", "30")
    for item in leftovers(podman):
        kind, name = item.split(" ", 1)
        podman.run(*(("rm", "-f", "-v", name) if kind == "container" else (kind, "rm", "-f", name)), check=False)
    remaining = leftovers(podman)
    if remaining:
        raise CheckError(f"left behind after down: {', '.join(remaining)}")


@contextmanager
def running(podman: Podman) -> Iterator[Cluster]:
    """The cluster up (no build: the images are there), ready with every worker; always brought down."""
    require_free_ports()
    if leftovers(podman):
        down(podman)
    cluster = Cluster(podman, podman.env["GLS_TOKENS"].split("=", 1)[0])
    try:
        podman.compose(FILES, PROJECT, "up", "-d", "--no-build", *SERVICES)
        yield cluster
    finally:
        down(podman)


def ready_workers(cluster: Cluster) -> int:
    """Live bound workers as the gateway's /readyz reports them (-1 while it does not answer)."""
    import httpx

    try:
        body = httpx.get(f"{GATEWAY_URL}/readyz", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return -1
    return int(body.get("workers", -1)) if body.get("status") == "ready" else -1


def expected_workers(cluster: Cluster) -> int:
    return len(cluster.containers("worker"))


def wait_ready(cluster: Cluster, timeout: float = 300) -> None:
    """Every service answers: /readyz with every worker live, and each compose health check passes."""
    workers = expected_workers(cluster)
    wait_for(f"gateway ready with {workers} workers", lambda: ready_workers(cluster) == workers, cluster, timeout)
    for name in cluster.containers():
        if "coordinator" not in name:  # the coordinator has no port and no health check
            wait_for(f"health check of {name}", functools.partial(healthy, cluster, name), cluster, 60)

