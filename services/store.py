"""Everything the services share, kept in Redis: jobs, progress, checkpoints, datasets and models.

Redis is the only shared state (DESIGN.md). Keys:

    gls:jobs                      stream of submitted job ids (consumer group "coordinators")
    gls:job:{id}                  hash: tenant, status, config (JSON), step, total_steps, error, ...
    gls:job:{id}:checkpoint       hash: state (safetensors bytes), position (JSON), step
    gls:job:{id}:metrics          list of JSON rows (as metrics.jsonl)
    gls:job:{id}:events           stream of progress events (server-sent to clients)
    gls:tenant:{t}:jobs|models|datasets   sorted sets of ids by creation time
    gls:tenant:{t}:active         set of the tenant's queued or running job ids (the job quota)
    gls:tenant:{t}:stored_bytes   bytes of the tenant's uploaded models and datasets (the storage quota)
    gls:model:{id}                hash: tenant, arch, dataset, data (safetensors bytes), ...
    gls:dataset:{id}              hash: tenant, name, n, shape, num_classes, dtype, chunks
    gls:dataset:{id}:x:{k}, :y    raw chunks of a dataset

A training step is acknowledged (its metrics and events become visible) in the same MULTI/EXEC
transaction that stores its checkpoint, so a reader never sees progress that a crash could undo.

Quotas are checked and taken in one WATCH/MULTI/EXEC transaction on the counting key (the active
set, the byte counter), so several gateway processes agree and two requests cannot both take the
last free slot: the second one's EXEC fails, it counts again and is refused. A refused request
writes nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, cast

import numpy as np
import redis
import torch
from redis.client import Pipeline

JOB_STREAM = "gls:jobs"
COORDINATOR_GROUP = "coordinators"
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


def active_key(tenant: str) -> str:
    return f"gls:tenant:{tenant}:active"


def stored_bytes_key(tenant: str) -> str:
    return f"gls:tenant:{tenant}:stored_bytes"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}


def compact_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 when every pixel is k/255 exactly (what a uint8 file decodes to), else float32 unchanged."""
    pixels = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    return pixels if torch.equal(pixels.to(torch.float32).div_(255), x) else x


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class Store:
    """Typed access to the Redis keys above; one instance per process, thread-safe like redis-py."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

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
                   cancel_requested=raw.get("cancel_requested") == "1", model_id=raw.get("model_id", ""))

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
        """Ask the running coordinator to stop after the current step; a queued job is cancelled at once."""
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
        silent for ``stale_ms``, else a new one.

        A coordinator claims one job at a time and asks again only once it has stopped running it, so a
        message still pending for ``consumer`` is a run it abandoned (e.g. on a Redis failure): it resumes
        it at once instead of waiting for its own claim to go stale.
        """
        self.ensure_group()
        own = self.redis.xpending_range(JOB_STREAM, COORDINATOR_GROUP, min="-", max="+", count=1,
                                        consumername=consumer)
        if own:
            kept: Any = self.redis.xclaim(JOB_STREAM, COORDINATOR_GROUP, consumer, min_idle_time=0,
                                          message_ids=[own[0]["message_id"]])
            for message_id, fields in kept or []:
                if fields:  # None or empty: the entry was trimmed from the stream
                    return _text(message_id), _text(fields.get(b"job", fields.get("job", b"")))
        claimed = self.redis.xautoclaim(JOB_STREAM, COORDINATOR_GROUP, consumer, min_idle_time=stale_ms,
                                        start_id="0-0", count=1)
        messages = claimed[1] if claimed else []
        if messages:
            message_id, fields = messages[0]
            return _text(message_id), _text(fields[b"job"] if b"job" in fields else fields["job"])
        fresh: Any = self.redis.xreadgroup(COORDINATOR_GROUP, consumer, {JOB_STREAM: ">"}, count=1, block=block_ms)
        for _, entries in fresh or []:
            for message_id, fields in entries:
                return _text(message_id), _text(fields.get(b"job", fields.get("job", b"")))
        return None

    def keep_claim(self, consumer: str, message_id: str) -> None:
        """Reset the message's idle time: the heartbeat that stops other coordinators from taking the job."""
        self.redis.xclaim(JOB_STREAM, COORDINATOR_GROUP, consumer, min_idle_time=0, message_ids=[message_id],
                          justid=True)

    def ack(self, message_id: str) -> None:
        self.redis.xack(JOB_STREAM, COORDINATOR_GROUP, message_id)

    # steps, checkpoints, metrics, events -----------------------------------------------------------
    def commit(self, job_id: str, state: bytes, position: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        """Store a checkpoint and publish its metrics in one transaction: the step is now acknowledged."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"gls:job:{job_id}:checkpoint", mapping={"state": state, "position": json.dumps(position),
                                                                "step": str(position["step"])})
            for row in rows:
                pipe.rpush(f"gls:job:{job_id}:metrics", json.dumps(row))
                pipe.xadd(f"gls:job:{job_id}:events", {"data": json.dumps({"type": "metrics", **row})},
                          maxlen=10000, approximate=True)
            pipe.hset(f"gls:job:{job_id}", mapping={"step": str(position["step"]), "updated": str(time.time())})
            pipe.execute()

    def checkpoint(self, job_id: str) -> tuple[bytes, dict[str, Any]] | None:
        raw = cast(dict[Any, Any], self.redis.hgetall(f"gls:job:{job_id}:checkpoint"))
        if not raw:
            return None
        state = raw.get(b"state", raw.get("state"))
        position = raw.get(b"position", raw.get("position"))
        return cast(bytes, state), json.loads(_text(position))

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
