"""Shared pieces of the gateway, certifier and client tests (no tests here).

A ``Stack`` is the real thing on loopback: a private redis-server, the gateway (uvicorn + gRPC
Certifier) and in-process bound workers registered in that Redis. The model is a small ``fc-16``
trained on scikit-learn's digits with plain torch in well under a second, so that the
certification tests see both certified and uncertified inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from servers import RedisServer

from gls_core.data import load_dataset
from gls_core.nets.spec import NetSpec
from gls_core.nets.zoo import network
from gls_core.training.checkpoint import save_model
from services.bound_worker import RunningWorker
from services.bound_worker import serve as serve_worker
from services.client import CertifierClient, GlsClient
from services.gateway import RunningGateway, serve
from services.settings import Settings
from services.store import Store

ALICE, BOB = "alice-token", "bob-token"
TOKENS = f"{ALICE}=alice,{BOB}=bob"


@dataclass
class Stack:
    redis: RedisServer
    settings: Settings
    gateway: RunningGateway
    workers: list[RunningWorker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.gateway.url

    def http(self, token: str | None = ALICE) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def client(self, token: str = ALICE) -> GlsClient:
        return GlsClient(self.url, token)

    def certifier(self, token: str = ALICE) -> CertifierClient:
        return CertifierClient(self.gateway.certifier_address, token)

    def store(self) -> Store:
        return Store(self.redis.client())

    def add_worker(self) -> RunningWorker:
        worker = serve_worker(self.settings)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.gateway.stop(grace=1)
        self.redis.stop()


def start_stack(directory: Path, workers: int = 1, **overrides: Any) -> Stack:
    redis_server = RedisServer(directory).start()
    values: dict[str, Any] = {"redis_url": redis_server.url, "gateway_host": "127.0.0.1", "gateway_port": 0,
                              "certifier_port": 0, "worker_host": "127.0.0.1", "worker_port": 0, "tokens": TOKENS,
                              "sse_heartbeat_s": 0.2, "heartbeat_s": 0.5, "heartbeat_ttl_s": 5.0, "threads": 1,
                              "log_level": "warning", **overrides}
    settings = Settings(**values)
    stack = Stack(redis_server, settings, serve(settings))
    for _ in range(workers):
        stack.add_worker()
    return stack


@functools.cache
def digits_model() -> tuple[NetSpec, torch.Tensor]:
    """fc-16 on digits after 150 full-batch Adam steps (~95% test accuracy), as (spec, theta)."""
    train = load_dataset("digits", "train")
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.uniform_(-0.3, 0.3, generator=generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(train.x), train.y).backward()
        optimizer.step()
    theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    spec = network("fc-16", "digits")
    assert theta.shape == (spec.num_params,)
    return spec, theta


def upload_digits_model(stack: Stack, folder: Path) -> str:
    """:func:`digits_model` saved as a model file in ``folder`` and uploaded by alice: its id."""
    _, theta = digits_model()
    path = folder / "model.safetensors"
    save_model(path, theta, "fc-16", "digits")
    return str(stack.client().upload_model(path)["id"])


@functools.cache
def digits_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_dataset("digits", "test", subset=n)
    return test.x, test.y
