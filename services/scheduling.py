"""Fair scheduling across tenants: which queued job a free coordinator takes, and when a running job yields.

Pure policy over what Redis says right now (the queued entries of the job stream, the pending entries
of its consumer group, the time each tenant was last served), so every coordinator decides alike and
nothing kept in a process can go stale. The Redis reads and writes are in :class:`services.store.Store`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueuedJob:
    """An undelivered entry of the job stream, with its job's tenant and creation time."""

    message_id: str
    job_id: str
    tenant: str
    created: float


def choose(queued: Sequence[QueuedJob], running: Mapping[str, int], served: Mapping[str, float]) -> QueuedJob:
    """The job to run next: of the tenant with the fewest running jobs, then the least recently served one,
    its oldest job (by creation, so a job that yielded goes before the tenant's newer ones)."""
    if not queued:
        raise ValueError("choose needs at least one queued job")
    tenant = min({job.tenant for job in queued}, key=lambda t: (running.get(t, 0), served.get(t, 0.0), t))
    return min((job for job in queued if job.tenant == tenant), key=lambda job: (job.created, job.message_id))


def yield_to(tenant: str, queued: Sequence[QueuedJob], running: Mapping[str, int]) -> str | None:
    """The tenant a running job of ``tenant`` should yield to: one with a queued job and fewer running jobs
    than ``tenant`` (whose count includes that running job), the fewest first; None when there is none."""
    own = running.get(tenant, 0)
    waiting = sorted({job.tenant for job in queued if job.tenant != tenant}, key=lambda t: (running.get(t, 0), t))
    return next((other for other in waiting if running.get(other, 0) < own), None)
