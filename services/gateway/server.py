"""Run the gateway: uvicorn (REST) in a thread and the gRPC Certifier next to it, in one process."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

import grpc
import redis
import torch
import uvicorn
from fastapi import FastAPI
from grpc_health.v1 import health

from ..settings import Settings, dialable
from ..store import Store, warn_if_not_durable
from ..worker_client import WorkerPool
from .app import create_app
from .certifier import start_certifier
from .context import Gateway
from .metrics import GatewayMetrics

log = logging.getLogger("services.gateway")


@dataclass
class RunningGateway:
    url: str
    certifier_address: str
    gateway: Gateway
    app: FastAPI
    http: uvicorn.Server
    thread: threading.Thread
    grpc_server: grpc.Server
    health: health.HealthServicer
    _stopped: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float = 5.0) -> None:
        """End event streams, stop taking requests, give running ones ``grace`` seconds. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.gateway.closing.set()
        self.health.enter_graceful_shutdown()
        self.http.should_exit = True
        grpc_done = self.grpc_server.stop(grace)
        self.thread.join(grace + 10)  # event streams notice `closing` within a second
        grpc_done.wait(grace + 5)
        self.gateway.pool.close()
        self.gateway.redis.close()
        log.info("gateway stopped")


def _listen(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so port 0 resolves to a known free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings) -> RunningGateway:
    """Start REST and gRPC on ``settings.gateway_port`` / ``certifier_port`` (0: free ports) and return at once."""
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if not settings.tenants_by_token:
        log.warning("GLS_TOKENS is empty: every /v1 request and Certifier call will be refused")
    tls = settings.server_tls  # read before anything starts: a bad certificate path stops the process here
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5,
                                  socket_timeout=settings.sse_heartbeat_s + 10)  # above the longest XREAD block
    warn_if_not_durable(client, log)
    gateway = Gateway(settings, client, Store(client), WorkerPool(settings, client),
                      GatewayMetrics(settings.metrics_key))
    gateway.metrics.track_workers(lambda: len(gateway.pool.addresses()))
    grpc_server, certifier_port, health_servicer = start_certifier(gateway, settings.gateway_host,
                                                                   settings.certifier_port)
    app = create_app(gateway)
    sock = _listen(settings.gateway_host, settings.gateway_port)
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=5,
                            log_level=settings.log_level, **(tls.uvicorn_options() if tls else {}))
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, kwargs={"sockets": [sock]}, name="gateway-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not http.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            grpc_server.stop(0)
            raise RuntimeError(f"the REST server did not start on {settings.gateway_host}:{settings.gateway_port}")
        time.sleep(0.01)
    host = dialable(settings.gateway_host)
    url = f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"
    running = RunningGateway(url, f"{host}:{certifier_port}", gateway, app, http, thread, grpc_server,
                             health_servicer)
    log.info("gateway serving REST on %s and the gRPC Certifier on %s%s", url, running.certifier_address,
             "" if tls is None else (" (TLS, client certificates required)" if tls.mutual else " (TLS)"))
    return running
