"""What every handler of the gateway shares: settings, the Redis store, the bound-worker pool, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis

from ..settings import Settings
from ..store import Store
from ..worker_client import WorkerPool
from .metrics import GatewayMetrics


@dataclass
class Gateway:
    settings: Settings
    redis: redis.Redis
    store: Store
    pool: WorkerPool
    metrics: GatewayMetrics
    closing: threading.Event = field(default_factory=threading.Event)
    """Set on shutdown: open event streams end instead of holding the server up."""

    def tenant_for(self, token: str) -> str | None:
        return self.settings.tenants_by_token.get(token)
