"""Everything the services share, kept in Redis: jobs, progress, checkpoints, datasets and models.

Redis is the only shared state (DESIGN.md). Keys:

    gls:jobs                      stream of submitted job ids (consumer group "coordinators")
    gls:job:{id}                  hash: tenant, status, config (JSON), step, total_steps, error, ...
    gls:job:{id}:checkpoint       hash: state (safetensors bytes), position (JSON), step, kernel_plan (JSON)
    gls:job:{id}:metrics          list of JSON rows (as metrics.jsonl)
    gls:job:{id}:events           stream of progress events (server-sent to clients)
    gls:job:{id}:owner            "consumer message-id" of the coordinator that claimed the job last (the fence)
    gls:tenants:served            hash: tenant -> when a coordinator last claimed one of its jobs
    gls:tenant:{t}:jobs|models|datasets   sorted sets of ids by creation time
    gls:tenant:{t}:active         set of the tenant's queued or running job ids (the job quota)
    gls:tenant:{t}:stored_bytes   bytes of the tenant's uploaded models and datasets (the storage quota)
    gls:model:{id}                hash: tenant, arch, dataset, data (safetensors bytes), ...
    gls:dataset:{id}              hash: tenant, name, n, shape, num_classes, dtype, chunks
    gls:dataset:{id}:x:{k}, :y    raw chunks of a dataset

A training step is acknowledged (its metrics and events become visible) in the same MULTI/EXEC
transaction that stores its checkpoint, so a reader never sees progress that a crash could undo.
That transaction WATCHes the job's owner key: a coordinator whose claim was taken over (after it
stalled) can no longer commit, so two coordinators never both write one job's steps.

Quotas are checked and taken in one WATCH/MULTI/EXEC transaction on the counting key (the active
set, the byte counter), so several gateway processes agree and two requests cannot both take the
last free slot: the second one's EXEC fails, it counts again and is refused. A refused request
writes nothing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, cast

import numpy as np
import redis
import torch
from redis.client import Pipeline

from .scheduling import QueuedJob, choose, yield_to

JOB_STREAM = "gls:jobs"
COORDINATOR_GROUP = "coordinators"
SERVED_KEY = "gls:tenants:served"
KEEP_CLAIM_LUA = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[4], 'JUSTID')
return 1
"""
DATASET_CHUNK_BYTES = 8 * 1024 * 1024


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass
class Job:
    id: str
    tenant: str
    status: JobStatus
    config: dict[str, Any]
    created: float
    updated: float
    name: str = ""
    step: int = 0
    total_steps: int = 0
    error: str = ""
    coordinator: str = ""
    cancel_requested: bool = False
    model_id: str = ""
    note: str = ""  # why a queued job waits again (it yielded its turn); cleared when it runs
    members_done: int = 0  # progress within the step in progress (written for steps longer than a second)
    members: int = 0

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass
class DatasetInfo:
    id: str
    tenant: str
    name: str
    n: int
    shape: list[int]
    num_classes: int
    dtype: str
    created: float
    chunks: int = 0
    source: str = ""

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelInfo:
    id: str
    tenant: str
    arch: str
    dataset: str
    num_params: int
    created: float
    source: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return asdict(self)


class NotFound(KeyError):
    """An id that does not exist for this tenant (deliberately the same answer as 'not yours')."""


JOBS_QUOTA = "jobs"
STORED_BYTES_QUOTA = "stored_bytes"


class OverQuota(Exception):
    """Taking ``requested`` more of ``quota`` would pass the tenant's limit; raised before anything is written."""

    def __init__(self, quota: str, tenant: str, usage: int, limit: int, requested: int) -> None:
        super().__init__(f"tenant {tenant} is over its {quota} quota ({usage} + {requested} > {limit})")
        self.quota = quota
        self.tenant = tenant
        self.usage = usage
        self.limit = limit
        self.requested = requested


class LostClaim(Exception):
    """Another coordinator has taken the job over: this one must stop it and acknowledge nothing."""

    def __init__(self, job_id: str, owner: str, holder: str) -> None:
        super().__init__(f"job {job_id} is no longer owned by {owner!r} (now {holder or 'nobody'!r})")
        self.job_id = job_id
        self.owner = owner
        self.holder = holder


def owner_key(job_id: str) -> str:
    return f"gls:job:{job_id}:owner"


def owner_token(consumer: str, message_id: str) -> str:
    """What a coordinator records as a job's owner when it claims it: its name and the claimed stream entry."""
    return f"{consumer} {message_id}"


def active_key(tenant: str) -> str:
    return f"gls:tenant:{tenant}:active"


def stored_bytes_key(tenant: str) -> str:
    return f"gls:tenant:{tenant}:stored_bytes"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _job_field(fields: dict[Any, Any]) -> str:
    return _text(fields.get(b"job", fields.get("job", b"")))


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}


COMPACT_BLOCK = 1 << 22
"""Pixels judged at a time by :func:`compact_pixels`: its float32 temporaries stay at 16 MiB, whatever the size."""


def compact_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 when every pixel is k/255 exactly (what a uint8 file decodes to), else float32 unchanged.

    Judged block by block into one uint8 array, so it costs a quarter of ``x`` and no float32 copy of it.
    """
    flat = x.reshape(-1)
    pixels = torch.empty(flat.shape, dtype=torch.uint8)
    for start in range(0, flat.numel(), COMPACT_BLOCK):
        part = flat[start:start + COMPACT_BLOCK]
        block = part.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        if not torch.equal(block.to(torch.float32).div_(255), part):
            return x
        pixels[start:start + COMPACT_BLOCK] = block
    return pixels.view(x.shape)


def durability_problem(client: redis.Redis) -> str | None:
    """Why a write Redis has answered could be lost if it crashed now, or None (also when CONFIG is not allowed,
    as on some managed services, where the operator's own settings apply)."""
    try:
        config = _decode(cast(dict[Any, Any], client.config_get("append*")))
    except redis.ResponseError:
        return None
    if config.get("appendonly") != "yes":
        return "appendonly is off: everything written since the last snapshot is lost if Redis crashes"
    if config.get("appendfsync") != "always":  # what services.cluster.DURABLE_AOF sets
        return (f"appendfsync is {config.get('appendfsync')!r}: a write Redis has answered (an upload, a submission, "
                "a step) can be lost if Redis crashes; start it with --appendfsync always")
    return None


def warn_if_not_durable(client: redis.Redis, logger: logging.Logger) -> None:
    """Log :func:`durability_problem` at start-up (nothing when Redis cannot be reached yet: readiness says so)."""
    try:
        problem = durability_problem(client)
    except redis.RedisError:
        return
    if problem is not None:
        logger.warning("Redis is not durable: %s", problem)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Store:
    """Typed access to the Redis keys above; one instance per process, thread-safe like redis-py."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._keep_claim_script = client.register_script(KEEP_CLAIM_LUA)

    # jobs -------------------------------------------------------------------------------------
    def submit_job(self, tenant: str, config: dict[str, Any], name: str = "", total_steps: int = 0,
                   max_active: int | None = None) -> Job:
        """Queue a job; with ``max_active``, :class:`OverQuota` when the tenant already has that many queued or
        running (the count and the new job are one transaction, so concurrent submissions cannot overshoot)."""
        now = time.time()
        job = Job(new_id("job"), tenant, JobStatus.QUEUED, config, now, now, name=name, total_steps=total_steps)

        def write(pipe: Pipeline) -> None:
            pipe.hset(f"gls:job:{job.id}", mapping=cast(dict[Any, Any], self._job_fields(job)))
            pipe.zadd(f"gls:tenant:{tenant}:jobs", {job.id: now})
            pipe.sadd(active_key(tenant), job.id)
            pipe.xadd(JOB_STREAM, {"job": job.id})

        def attempt(pipe: Pipeline) -> None:
            active, stale = self._active_jobs(tenant)
            if max_active is not None and len(active) >= max_active:
                raise OverQuota(JOBS_QUOTA, tenant, len(active), max_active, 1)
            pipe.multi()
            if stale:  # finished jobs whose status was written without the set (e.g. by an older gateway)
                pipe.srem(active_key(tenant), *stale)
            write(pipe)

        self.redis.transaction(attempt, active_key(tenant))
        return job

    def _active_jobs(self, tenant: str) -> tuple[list[str], list[str]]:
        """(queued or running, stale): the active set's members, split by the status each job has now."""
        ids = sorted(_text(i) for i in cast(set[Any], self.redis.smembers(active_key(tenant))))
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(f"gls:job:{job_id}", "status")
            statuses = [_text(status) if status is not None else "" for status in pipe.execute()]
        active = [job_id for job_id, status in zip(ids, statuses, strict=True)
                  if status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)]
        return active, sorted(set(ids) - set(active))

    def active_job_count(self, tenant: str) -> int:
        """The tenant's queued or running jobs: what the job quota counts."""
        return len(self._active_jobs(tenant)[0])

    @staticmethod
    def _job_fields(job: Job) -> dict[str, str]:
        fields = {key: str(value) for key, value in asdict(job).items() if key not in ("config", "cancel_requested")}
        fields.update(status=job.status.value, config=json.dumps(job.config),
                      cancel_requested="1" if job.cancel_requested else "0")
        return fields

    def get_job(self, job_id: str, tenant: str | None = None) -> Job:
        raw = _decode(cast(dict[Any, Any], self.redis.hgetall(f"gls:job:{job_id}")))
        if not raw or (tenant is not None and raw.get("tenant") != tenant):
            raise NotFound(job_id)
        return Job(id=raw["id"], tenant=raw["tenant"], status=JobStatus(raw["status"]),
                   config=json.loads(raw["config"]), created=float(raw["created"]), updated=float(raw["updated"]),
                   name=raw.get("name", ""),
                   step=int(raw.get("step", 0)), total_steps=int(raw.get("total_steps", 0)),
                   error=raw.get("error", ""), coordinator=raw.get("coordinator", ""),
                   cancel_requested=raw.get("cancel_requested") == "1", model_id=raw.get("model_id", ""),
                   note=raw.get("note", ""), members_done=int(raw.get("members_done", 0)),
                   members=int(raw.get("members", 0)))

    def list_jobs(self, tenant: str) -> list[Job]:
        ids = [_text(i) for i in cast(list[Any], self.redis.zrange(f"gls:tenant:{tenant}:jobs", 0, -1))]
        jobs = []
        for job_id in ids:
            try:
                jobs.append(self.get_job(job_id, tenant))
            except NotFound:
                continue
        return jobs

    def update_job(self, job_id: str, **fields: Any) -> None:
        """Write fields; a finished status also frees the job's slot in its tenant's quota, in the same transaction."""
        values = {key: (value.value if isinstance(value, JobStatus) else str(value)) for key, value in fields.items()}
        values["updated"] = str(time.time())
        finished = "status" in values and JobStatus(values["status"]).finished
        tenant = self.redis.hget(f"gls:job:{job_id}", "tenant") if finished else None
        with self.redis.pipeline() as pipe:
            pipe.hset(f"gls:job:{job_id}", mapping=cast(dict[Any, Any], values))
            if tenant is not None:
                pipe.srem(active_key(_text(tenant)), job_id)
            pipe.execute()
        self.publish_event(job_id, {"type": "status", **{k: v for k, v in values.items() if k != "updated"}})

    def request_cancel(self, job_id: str, tenant: str) -> Job:
        """Ask the running coordinator to stop (within seconds: the step in progress is abandoned and its workers
        stop at their next block); a queued job is cancelled at once."""
        job = self.get_job(job_id, tenant)
        if job.status.finished:
            return job
        self.redis.hset(f"gls:job:{job_id}", "cancel_requested", "1")
        if job.status == JobStatus.QUEUED:
            self.update_job(job_id, status=JobStatus.CANCELLED)
        return self.get_job(job_id, tenant)

    def cancel_requested(self, job_id: str) -> bool:
        return _text(self.redis.hget(f"gls:job:{job_id}", "cancel_requested") or b"0") == "1"

    # coordinator claims ---------------------------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(JOB_STREAM, COORDINATOR_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def claim_job(self, consumer: str, block_ms: int, stale_ms: int) -> tuple[str, str] | None:
        """(message id, job id): first a job this consumer left unfinished, then one whose coordinator went
        silent for ``stale_ms``, else the next new one by fair choice (:meth:`pick_job`).

        A coordinator claims one job at a time and asks again only once it has stopped running it, so a
        message still pending for ``consumer`` is a run it abandoned (e.g. on a Redis failure, or a restart
        under the same name): it resumes it at once instead of waiting for its own claim to go stale.
        The claimer becomes the job's owner (:func:`owner_token`), which fences off the previous one.
        """
        self.ensure_group()
        claimed = self._own_pending(consumer) or self._stale(consumer, stale_ms) or self.pick_job(consumer, block_ms)
        if claimed is not None:
            message_id, job_id = claimed
            tenant = self.redis.hget(f"gls:job:{job_id}", "tenant")
            with self.redis.pipeline() as pipe:
                pipe.set(owner_key(job_id), owner_token(consumer, message_id))
                if tenant is not None:
                    pipe.hset(SERVED_KEY, _text(tenant), str(time.time()))
                pipe.execute()
        return claimed

    def _own_pending(self, consumer: str) -> tuple[str, str] | None:
        own = self.redis.xpending_range(JOB_STREAM, COORDINATOR_GROUP, min="-", max="+", count=1,
                                        consumername=consumer)
        if own:
            kept: Any = self.redis.xclaim(JOB_STREAM, COORDINATOR_GROUP, consumer, min_idle_time=0,
                                          message_ids=[own[0]["message_id"]])
            for message_id, fields in kept or []:
                if fields:  # None or empty: the entry was trimmed from the stream
                    return _text(message_id), _job_field(fields)
        return None

    def _stale(self, consumer: str, stale_ms: int) -> tuple[str, str] | None:
        claimed = self.redis.xautoclaim(JOB_STREAM, COORDINATOR_GROUP, consumer, min_idle_time=stale_ms,
                                        start_id="0-0", count=1)
        messages = claimed[1] if claimed else []
        if messages:
            message_id, fields = messages[0]
            return _text(message_id), _job_field(fields)
        return None

    def read_next(self, consumer: str, block_ms: int | None) -> tuple[str, str] | None:
        """Deliver the stream's next new entry to ``consumer`` (pending under it from now on)."""
        fresh: Any = self.redis.xreadgroup(COORDINATOR_GROUP, consumer, {JOB_STREAM: ">"}, count=1, block=block_ms)
        for _, entries in fresh or []:
            for message_id, fields in entries:
                return _text(message_id), _job_field(fields)
        return None

    def pick_job(self, consumer: str, block_ms: int) -> tuple[str, str] | None:
        """The next new job by :func:`services.scheduling.choose`.

        The group delivers in stream order, so entries ahead of the chosen one are read and moved to the end
        (:meth:`requeue`), each at most once per pick. A crash between a read and its move leaves the entry
        pending under the reader, where the usual takeover (or the restarted reader) finds it.
        """
        queued = self.queued_jobs()
        if not queued:
            return self.read_next(consumer, block_ms)
        chosen = choose(queued, self.running_by_tenant(), self.served())
        candidates = {job.job_id for job in queued}
        moved: set[str] = set()
        while True:
            read = self.read_next(consumer, None)
            if read is None or read[1] == chosen.job_id or read[1] not in candidates or read[1] in moved:
                return read  # the choice, or one that arrived (or came round again) since the snapshot
            self.requeue(*read)
            moved.add(read[1])

    def requeue(self, message_id: str, job_id: str) -> None:
        """Move a delivered entry to the end of the stream as a new, undelivered one, in one transaction."""
        with self.redis.pipeline() as pipe:
            self._requeue_ops(pipe, message_id, job_id)
            pipe.execute()

    @staticmethod
    def _requeue_ops(pipe: Pipeline, message_id: str, job_id: str) -> None:
        pipe.xadd(JOB_STREAM, {"job": job_id})
        pipe.xack(JOB_STREAM, COORDINATOR_GROUP, message_id)
        pipe.xdel(JOB_STREAM, message_id)

    def yield_job(self, owner: str, message_id: str, job_id: str, note: str) -> None:
        """Put a running job back in the queue (status queued, ``note`` on the job) if ``owner`` still owns it;
        :class:`LostClaim` otherwise. Its checkpoint is already durable: whoever picks it resumes from there."""
        values: dict[Any, Any] = {"status": JobStatus.QUEUED.value, "note": note, "updated": str(time.time())}

        def write(pipe: Pipeline) -> None:
            self._requeue_ops(pipe, message_id, job_id)
            pipe.hset(f"gls:job:{job_id}", mapping=values)
            pipe.delete(owner_key(job_id))

        self._fenced(job_id, owner, write)
        self.publish_event(job_id, {"type": "status", "status": JobStatus.QUEUED.value, "note": note})

    def queued_jobs(self) -> list[QueuedJob]:
        """The stream's undelivered entries whose jobs are still queued or running (not finished or deleted)."""
        self.ensure_group()
        groups = cast(list[dict[Any, Any]], self.redis.xinfo_groups(JOB_STREAM))
        last = next(_text(group["last-delivered-id"]) for group in groups if _text(group["name"]) == COORDINATOR_GROUP)
        entries = [(_text(message_id), _job_field(fields)) for message_id, fields in
                   cast(list[Any], self.redis.xrange(JOB_STREAM, min=f"({last}", max="+"))]
        with self.redis.pipeline(transaction=False) as pipe:
            for _, job_id in entries:
                pipe.hmget(f"gls:job:{job_id}", ["tenant", "status", "created"])
            details = pipe.execute()
        return [QueuedJob(message_id, job_id, _text(tenant), float(created))
                for (message_id, job_id), (tenant, status, created) in zip(entries, details, strict=True)
                if status is not None and _text(status) in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)]

    def running_by_tenant(self) -> dict[str, int]:
        """Jobs delivered to a coordinator and not yet acknowledged (the group's pending entries), per tenant."""
        pending = self.redis.xpending_range(JOB_STREAM, COORDINATOR_GROUP, min="-", max="+", count=100_000)
        with self.redis.pipeline(transaction=False) as pipe:
            for entry in pending:
                pipe.xrange(JOB_STREAM, min=entry["message_id"], max=entry["message_id"], count=1)
            job_ids = [_job_field(found[0][1]) for found in pipe.execute() if found]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(f"gls:job:{job_id}", "tenant")
            tenants = [_text(tenant) for tenant in pipe.execute() if tenant is not None]
        return dict(Counter(tenants))

    def served(self) -> dict[str, float]:
        """When each tenant last had a job claimed (seconds since the epoch)."""
        raw = _decode(cast(dict[Any, Any], self.redis.hgetall(SERVED_KEY)))
        return {tenant: float(at) for tenant, at in raw.items()}

    def should_yield(self, tenant: str) -> str | None:
        """The tenant a running job of ``tenant`` should yield to now (:func:`services.scheduling.yield_to`)."""
        queued = self.queued_jobs()
        return yield_to(tenant, queued, self.running_by_tenant()) if queued else None

    def keep_claim(self, consumer: str, message_id: str, job_id: str) -> bool:
        """Reset the message's idle time (the heartbeat that stops other coordinators from taking the job), if
        ``consumer`` still owns the job; False once another coordinator has taken it over."""
        kept = self._keep_claim_script(keys=[JOB_STREAM, owner_key(job_id)],
                                       args=[COORDINATOR_GROUP, consumer, owner_token(consumer, message_id),
                                             message_id])
        return bool(kept)

    def ack(self, message_id: str, job_id: str | None = None) -> None:
        """The job is settled: drop its entry from the group's pending list (and its owner record)."""
        with self.redis.pipeline() as pipe:
            pipe.xack(JOB_STREAM, COORDINATOR_GROUP, message_id)
            if job_id is not None:
                pipe.delete(owner_key(job_id))
            pipe.execute()

    def _fenced(self, job_id: str, owner: str, write: Callable[[Pipeline], None]) -> None:
        """``write`` in one transaction that happens only while ``owner`` owns the job; else :class:`LostClaim`."""
        key = owner_key(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                holder = pipe.get(key)
                if holder is None or _text(holder) != owner:
                    raise LostClaim(job_id, owner, _text(holder) if holder is not None else "")
                pipe.multi()
                write(pipe)
                pipe.execute()
            except redis.WatchError as error:
                raise LostClaim(job_id, owner, _text(self.redis.get(key) or b"")) from error

    # steps, checkpoints, metrics, events -----------------------------------------------------------
    def commit(self, job_id: str, state: bytes, position: dict[str, Any], rows: list[dict[str, Any]],
               owner: str | None = None, kernel_plan: dict[str, str] | None = None) -> None:
        """Store a checkpoint (with the job's kernel plan; None: not made yet) and publish its metrics in one
        transaction: the step is now acknowledged.

        With ``owner`` (a coordinator's :func:`owner_token`), only while it still owns the job: a coordinator
        whose claim was taken over gets :class:`LostClaim` and writes nothing.
        """
        def write(pipe: Pipeline) -> None:
            pipe.hset(f"gls:job:{job_id}:checkpoint", mapping={"state": state, "position": json.dumps(position),
                                                                "step": str(position["step"]),
                                                                "kernel_plan": json.dumps(kernel_plan)})
            for row in rows:
                pipe.rpush(f"gls:job:{job_id}:metrics", json.dumps(row))
                pipe.xadd(f"gls:job:{job_id}:events", {"data": json.dumps({"type": "metrics", **row})},
                          maxlen=10000, approximate=True)
            pipe.hset(f"gls:job:{job_id}", mapping={"step": str(position["step"]), "updated": str(time.time())})

        if owner is not None:
            self._fenced(job_id, owner, write)
            return
        with self.redis.pipeline(transaction=True) as pipe:
            write(pipe)
            pipe.execute()

    def checkpoint(self, job_id: str) -> tuple[bytes, dict[str, Any]] | None:
        raw = cast(dict[Any, Any], self.redis.hgetall(f"gls:job:{job_id}:checkpoint"))
        if not raw:
            return None
        state = raw.get(b"state", raw.get("state"))
        position = raw.get(b"position", raw.get("position"))
        return cast(bytes, state), json.loads(_text(position))

    def kernel_plan(self, job_id: str) -> dict[str, str] | None:
        """The kernel plan committed with the job's checkpoint: None before its first step made one, empty for a
        checkpoint written before plans were stored (its kernels are then chosen without timing)."""
        raw = self.redis.hget(f"gls:job:{job_id}:checkpoint", "kernel_plan")
        if raw is None:
            return {}
        plan: dict[str, str] | None = json.loads(_text(cast(bytes, raw)))
        return plan

    def metrics(self, job_id: str, start: int = 0) -> list[dict[str, Any]]:
        return [json.loads(_text(row)) for row in cast(list[Any], self.redis.lrange(f"gls:job:{job_id}:metrics",
                                                                                     start, -1))]

    def publish_event(self, job_id: str, event: dict[str, Any]) -> None:
        self.redis.xadd(f"gls:job:{job_id}:events", {"data": json.dumps(event)}, maxlen=10000, approximate=True)

    def read_events(self, job_id: str, after: str = "0-0", block_ms: int | None = None,
                    count: int = 100) -> list[tuple[str, dict[str, Any]]]:
        result: Any = self.redis.xread({f"gls:job:{job_id}:events": after}, count=count, block=block_ms)
        events = []
        for _, entries in result or []:
            for event_id, fields in entries:
                data = fields.get(b"data", fields.get("data"))
                events.append((_text(event_id), json.loads(_text(data))))
        return events

    # models ------------------------------------------------------------------------------------
    def put_model(self, tenant: str, data: bytes, arch: str, dataset: str, num_params: int, source: str = "",
                  model_id: str | None = None, extra: dict[str, str] | None = None,
                  quota: int | None = None) -> ModelInfo:
        """Store a model. With ``quota`` (an upload) its bytes count toward the tenant's stored bytes, and
        :class:`OverQuota` refuses it when they would pass that limit; a trained model is stored uncounted."""
        info = ModelInfo(model_id or new_id("model"), tenant, arch, dataset, num_params, time.time(), source,
                         extra or {})
        counted = len(data) if quota is not None else 0

        def write(pipe: Pipeline) -> None:
            pipe.hset(f"gls:model:{info.id}", mapping={"info": json.dumps(info.public()), "data": data,
                                                       "stored_bytes": str(counted)})
            pipe.zadd(f"gls:tenant:{tenant}:models", {info.id: info.created})

        self._store_counted(tenant, counted, quota, write)
        return info

    def _store_counted(self, tenant: str, size: int, quota: int | None, write: Callable[[Pipeline], None]) -> None:
        """``write`` and add ``size`` to the tenant's stored bytes in one transaction, unless that passes ``quota``."""
        if quota is None:
            with self.redis.pipeline() as pipe:
                write(pipe)
                pipe.execute()
            return
        key = stored_bytes_key(tenant)

        def attempt(pipe: Pipeline) -> None:
            used = int(_text(pipe.get(key) or b"0"))
            if used + size > quota:
                raise OverQuota(STORED_BYTES_QUOTA, tenant, used, quota, size)
            pipe.multi()
            write(pipe)
            pipe.incrby(key, size)

        self.redis.transaction(attempt, key)

    def _delete_counted(self, tenant: str, item_key: str, keys: list[str], index: str, item_id: str) -> None:
        """Delete ``keys`` and give back the bytes the item counted, once: a concurrent delete of the same
        item changes ``item_key`` and makes this one re-read (and find nothing left to give back)."""

        def attempt(pipe: Pipeline) -> None:
            counted = int(_text(pipe.hget(item_key, "stored_bytes") or b"0"))
            pipe.multi()
            pipe.delete(*keys)
            pipe.zrem(index, item_id)
            if counted:
                pipe.decrby(stored_bytes_key(tenant), counted)

        self.redis.transaction(attempt, item_key)

    def stored_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's uploaded models and datasets: what the storage quota counts."""
        return int(_text(self.redis.get(stored_bytes_key(tenant)) or b"0"))

    def model_info(self, model_id: str, tenant: str) -> ModelInfo:
        raw = self.redis.hget(f"gls:model:{model_id}", "info")
        if raw is None:
            raise NotFound(model_id)
        info = ModelInfo(**json.loads(_text(raw)))
        if info.tenant != tenant:
            raise NotFound(model_id)
        return info

    def model_data(self, model_id: str, tenant: str) -> bytes:
        self.model_info(model_id, tenant)
        return cast(bytes, self.redis.hget(f"gls:model:{model_id}", "data"))

    def list_models(self, tenant: str) -> list[ModelInfo]:
        ids = [_text(i) for i in cast(list[Any], self.redis.zrange(f"gls:tenant:{tenant}:models", 0, -1))]
        infos = []
        for model_id in ids:
            try:
                infos.append(self.model_info(model_id, tenant))
            except NotFound:
                continue
        return infos

    def delete_model(self, model_id: str, tenant: str) -> None:
        self.model_info(model_id, tenant)
        key = f"gls:model:{model_id}"
        self._delete_counted(tenant, key, [key], f"gls:tenant:{tenant}:models", model_id)

    # datasets ----------------------------------------------------------------------------------
    def put_dataset(self, tenant: str, name: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                    source: str = "", dataset_id: str | None = None, quota: int | None = None) -> DatasetInfo:
        """Store x (uint8 or float32, N x C x H x W) and y (int64) in chunks of about 8 MiB.

        Float pixels that are all exactly k/255 are stored as uint8: 4x smaller, and they read back
        as the same floats. With ``quota`` (an upload) the stored bytes count as in :meth:`put_model`.
        """
        if x.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"dataset x must be uint8 or float32, got {x.dtype}")
        if x.dtype == torch.float32:
            x = compact_pixels(x)
        pixels = x.contiguous().numpy().data.cast("B")  # chunks are views: no copy of the whole array
        per_example = max(1, len(pixels) // max(1, x.shape[0]))
        per_chunk = max(1, DATASET_CHUNK_BYTES // per_example) * per_example
        chunks = [pixels[i:i + per_chunk] for i in range(0, len(pixels), per_chunk)] or [memoryview(b"")]
        info = DatasetInfo(dataset_id or new_id("data"), tenant, name, int(x.shape[0]), list(x.shape[1:]),
                           num_classes, str(x.dtype).removeprefix("torch."), time.time(), len(chunks), source)
        key = f"gls:dataset:{info.id}"
        labels = y.to(torch.int64).contiguous().numpy().tobytes()
        counted = len(pixels) + len(labels) if quota is not None else 0

        def write(pipe: Pipeline) -> None:
            for index, chunk in enumerate(chunks):
                pipe.set(f"{key}:x:{index}", chunk)
            pipe.set(f"{key}:y", labels)
            pipe.hset(key, mapping={"info": json.dumps(info.public()), "stored_bytes": str(counted)})
            if tenant:
                pipe.zadd(f"gls:tenant:{tenant}:datasets", {info.id: info.created})

        self._store_counted(tenant, counted, quota, write)
        return info

    def dataset_info(self, dataset_id: str, tenant: str | None = None) -> DatasetInfo:
        raw = self.redis.hget(f"gls:dataset:{dataset_id}", "info")
        if raw is None:
            raise NotFound(dataset_id)
        info = DatasetInfo(**json.loads(_text(raw)))
        if tenant is not None and info.tenant not in (tenant, ""):
            raise NotFound(dataset_id)
        return info

    def dataset_arrays(self, dataset_id: str, tenant: str | None = None) -> tuple[DatasetInfo, torch.Tensor,
                                                                                  torch.Tensor]:
        """The whole dataset, pulled chunk by chunk: x as float32 in [0, 1], y as int64."""
        info = self.dataset_info(dataset_id, tenant)
        key = f"gls:dataset:{dataset_id}"
        parts = cast(list[Any], self.redis.mget([f"{key}:x:{k}" for k in range(info.chunks)]))
        if any(part is None for part in parts):
            raise NotFound(f"{dataset_id} (chunks missing)")
        dtype = np.uint8 if info.dtype == "uint8" else np.float32
        x = torch.from_numpy(np.frombuffer(b"".join(parts), dtype=dtype).copy()).view(info.n, *info.shape)
        y = torch.from_numpy(np.frombuffer(cast(bytes, self.redis.get(f"{key}:y")), dtype=np.int64).copy())
        images = x.to(torch.float32).div_(255) if info.dtype == "uint8" else x
        return info, images, y

    def list_datasets(self, tenant: str) -> list[DatasetInfo]:
        ids = [_text(i) for i in cast(list[Any], self.redis.zrange(f"gls:tenant:{tenant}:datasets", 0, -1))]
        infos = []
        for dataset_id in ids:
            try:
                infos.append(self.dataset_info(dataset_id, tenant))
            except NotFound:
                continue
        return infos

    def delete_dataset(self, dataset_id: str, tenant: str) -> None:
        info = self.dataset_info(dataset_id, tenant)
        if info.tenant != tenant:
            raise NotFound(dataset_id)
        key = f"gls:dataset:{dataset_id}"
        keys = [key, f"{key}:y", *(f"{key}:x:{k}" for k in range(info.chunks))]
        self._delete_counted(tenant, key, keys, f"gls:tenant:{tenant}:datasets", dataset_id)
