"""Server-sent events of one job: replay from the start (or after ``Last-Event-ID``), then follow live.

Events come from the job's Redis stream (``Store.read_events``), whose ids are the SSE ids, so a
client that reconnects with ``Last-Event-ID`` loses nothing and sees nothing twice. The blocking
XREAD runs in worker threads under a limiter of its own, so many watchers cannot starve the
thread pool that serves the other routes. An idle stream sends a comment every
``sse_heartbeat_s`` (proxies close silent connections); the stream ends, with a final ``end``
event carrying the job, once the job has finished and every event before that has been sent.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio

from ..store import Job, JobStatus, NotFound
from .context import Gateway

POLL_S = 1.0
"""Longest single XREAD block; heartbeats go out every ``sse_heartbeat_s`` regardless."""
STREAM_THREADS = 64
"""Event streams blocked in Redis at once (one limiter per app, made in its event loop); more wait their turn."""


def finite(value: Any) -> Any:
    """NaN/inf (a diverged loss) become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def sse(data: dict[str, Any], event: str | None = None, event_id: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(finite(data), separators=(',', ':'))}")
    return "\n".join(lines) + "\n\n"


def _finished_event(data: dict[str, Any]) -> bool:
    try:
        return data.get("type") == "status" and JobStatus(data.get("status", "")).finished
    except ValueError:
        return False


async def job_events(gateway: Gateway, job: Job, after: str, limiter: anyio.CapacityLimiter) -> AsyncIterator[str]:
    store, heartbeat = gateway.store, gateway.settings.sse_heartbeat_s
    block_ms = max(1, int(min(heartbeat, POLL_S) * 1000))  # short blocks: a shutdown is noticed within POLL_S
    yield f"retry: 2000\n: events of {job.id}\n\n"
    finished = job.status.finished
    quiet_since = time.monotonic()
    while not gateway.closing.is_set():
        read = partial(store.read_events, job.id, after, None if finished else block_ms)
        events = await anyio.to_thread.run_sync(read, limiter=limiter, abandon_on_cancel=True)
        for event_id, data in events:
            after = event_id
            finished = finished or _finished_event(data)
            yield sse(data, str(data.get("type", "message")), event_id)
        if events:
            quiet_since = time.monotonic()
            continue
        if finished:
            break
        try:  # an empty read: the job may have finished without a status event reaching us yet
            job = await anyio.to_thread.run_sync(partial(store.get_job, job.id), limiter=limiter)
        except NotFound:  # deleted meanwhile
            break
        if job.status.finished:
            finished = True
            continue  # one more non-blocking read drains what was published before the status changed
        if time.monotonic() - quiet_since >= heartbeat:
            quiet_since = time.monotonic()
            yield ": heartbeat\n\n"
    if not gateway.closing.is_set():
        with contextlib.suppress(NotFound):
            job = await anyio.to_thread.run_sync(partial(store.get_job, job.id), limiter=limiter)
        yield sse({"type": "end", "status": job.status.value, "job": job.public()}, "end")
