"""Worker membership in Redis: heartbeats with expiry, so a worker that dies simply disappears.

A live worker keeps ``gls:worker:{id}`` (JSON, set with a TTL) fresh and its id in the set
``gls:workers``. Readers trust the key, not the set: an id whose key has expired is a dead worker
and is removed from the set on sight. Redis being unreachable never stops a worker; its heartbeat
keeps retrying and re-registers as soon as Redis answers again (also after Redis lost its data).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass

import redis

log = logging.getLogger(__name__)

WORKERS_SET = "gls:workers"
KEY_PREFIX = "gls:worker:"


def worker_key(worker_id: str) -> str:
    return f"{KEY_PREFIX}{worker_id}"


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    address: str
    device: str
    pid: int
    started: float  # unix time

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerInfo:
        data = json.loads(text)
        return cls(id=str(data["id"]), address=str(data["address"]), device=str(data["device"]),
                   pid=int(data["pid"]), started=float(data["started"]))


def register(client: redis.Redis, info: WorkerInfo, ttl_s: float) -> None:
    """One heartbeat: (re)write the key with its TTL and make sure the id is in the set."""
    pipe = client.pipeline(transaction=False)
    pipe.set(worker_key(info.id), info.to_json(), px=max(1, int(ttl_s * 1000)))
    pipe.sadd(WORKERS_SET, info.id)
    pipe.execute()


def deregister(client: redis.Redis, worker_id: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(worker_key(worker_id))
    pipe.srem(WORKERS_SET, worker_id)
    pipe.execute()


def live_workers(client: redis.Redis) -> list[WorkerInfo]:
    """Workers whose heartbeat has not expired, ordered by id; expired ids are dropped from the set."""
    ids = sorted(member.decode() if isinstance(member, bytes) else str(member)
                 for member in client.smembers(WORKERS_SET))
    if not ids:
        return []
    values = client.mget([worker_key(worker_id) for worker_id in ids])
    live, dead = [], []
    for worker_id, value in zip(ids, values):
        if value is None:
            dead.append(worker_id)
            continue
        try:
            live.append(WorkerInfo.from_json(value))
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed registration %s: %r", worker_key(worker_id), value)
    if dead:
        client.srem(WORKERS_SET, *dead)
    return live


class Heartbeat:
    """A daemon thread that registers ``info`` every ``interval_s`` with a TTL of ``ttl_s``."""

    def __init__(self, client: redis.Redis, info: WorkerInfo, interval_s: float, ttl_s: float) -> None:
        self.client, self.info, self.interval_s, self.ttl_s = client, info, interval_s, ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{info.id}", daemon=True)
        self.beats = 0
        self.failures = 0

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                register(self.client, self.info, self.ttl_s)
                self.beats += 1
                if failing:
                    log.info("redis is back: worker %s registered again", self.info.id)
                failing = False
            except (redis.RedisError, OSError) as error:
                self.failures += 1
                if not failing:  # one warning per outage, not one per beat
                    log.warning("heartbeat of worker %s failed (%s); retrying every %.1fs",
                                self.info.id, error, self.interval_s)
                failing = True
            self._stop.wait(self.interval_s)

    def stop(self, deregister_worker: bool = True) -> None:
        """Stop beating and (by default) remove the registration; Redis errors are logged, not raised."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)
        if deregister_worker:
            try:
                deregister(self.client, self.info.id)
            except (redis.RedisError, OSError) as error:
                log.warning("could not deregister worker %s (%s); its key expires by itself", self.info.id, error)
