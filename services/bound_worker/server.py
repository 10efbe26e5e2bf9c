"""Assemble a running bound worker: gRPC server, health, reflection and Redis registration."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import redis
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gls_core.training.trainer import resolve_device

from ..discovery import Heartbeat, WorkerInfo
from ..settings import LOOPBACK, Settings, dialable
from .auth import WorkerTokenInterceptor
from .cache import BlobCache
from .decoding import RequestDecoder
from .service import SERVICE_NAME, BoundWorkerService

log = logging.getLogger(__name__)

HEALTH_NAMES = ("", SERVICE_NAME)


def rpc_limits(concurrency: int) -> tuple[int, int]:
    """(threads, maximum concurrent RPCs) for ``concurrency`` compute slots.

    Every admitted RPC gets a thread, so health checks and reflection are answered even while all
    compute slots are busy; beyond the limit callers get RESOURCE_EXHAUSTED at once instead of
    queueing behind work that may outlive their deadline.
    """
    limit = 4 * concurrency + 4
    return limit, limit


@dataclass
class RunningWorker:
    server: grpc.Server
    port: int
    address: str
    info: WorkerInfo
    service: BoundWorkerService
    health: health.HealthServicer
    cache: BlobCache
    heartbeat: Heartbeat | None
    redis_client: redis.Redis | None
    _stopped: threading.Event

    @property
    def id(self) -> str:
        return self.info.id

    def stop(self, grace: float | None = 0.0) -> None:
        """NOT_SERVING, deregister, then stop accepting; running requests get ``grace`` seconds. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if self.heartbeat is not None:
            self.heartbeat.stop(deregister_worker=True)
        self.server.stop(grace).wait()
        if self.redis_client is not None:
            self.redis_client.close()
        log.info("worker %s stopped", self.id)

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def serve(settings: Settings, *, worker_id: str | None = None) -> RunningWorker:
    """Start a worker from ``settings`` (port 0: a free port) and register it in Redis when enabled.

    With GLS_INTERNAL_TLS_* set it serves mutual TLS only; the files are read and checked first, so a
    bad one raises TLSConfigError (naming the setting) before anything listens.
    """
    tls = settings.internal_tls
    device = resolve_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    cache = BlobCache(settings.worker_cache_mb * 1024 * 1024)
    service = BoundWorkerService(RequestDecoder(cache, device), settings.worker_concurrency,
                                 settings.verify_max_timeout_s)
    threads, max_rpcs = rpc_limits(settings.worker_concurrency)
    interceptors = [WorkerTokenInterceptor(settings.worker_token)] if settings.worker_token else []
    if not settings.worker_token and settings.worker_host not in (LOOPBACK, "localhost", "::1"):
        log.warning("GLS_WORKER_TOKEN is empty and the worker listens on %s: anyone who can reach it can use it",
                    settings.worker_host)
    server = grpc.server(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bound-worker"),
                         options=settings.grpc_options, maximum_concurrent_rpcs=max_rpcs, interceptors=interceptors)
    service.add_to_server(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    listen = f"{settings.worker_host}:{settings.worker_port}"
    port = server.add_secure_port(listen, tls.grpc_credentials()) if tls else server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {settings.worker_host}:{settings.worker_port}")
    server.start()
    for name in HEALTH_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = settings.worker_advertise or f"{dialable(settings.worker_host)}:{port}"
    info = WorkerInfo(id=worker_id or f"{socket.gethostname()}-{os.getpid()}-{port}-{uuid.uuid4().hex[:6]}",
                      address=address, device=str(device), pid=os.getpid(), started=time.time())
    client, heartbeat = None, None
    if settings.worker_register:
        if settings.heartbeat_ttl_s <= settings.heartbeat_s:
            log.warning("heartbeat_ttl_s (%.1f) <= heartbeat_s (%.1f): this worker will flicker in and out of "
                        "discovery", settings.heartbeat_ttl_s, settings.heartbeat_s)
        timeout = max(0.5, min(5.0, settings.heartbeat_s))
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        heartbeat = Heartbeat(client, info, settings.heartbeat_s, settings.heartbeat_ttl_s).start()
    log.info("bound worker %s listening on %s:%d (%s, advertised %s, device %s, %d compute slots)", info.id,
             settings.worker_host, port, "mutual TLS" if tls else "plaintext", address, device,
             settings.worker_concurrency)
    return RunningWorker(server, port, address, info, service, health_servicer, cache, heartbeat, client,
                         threading.Event())
