"""What durable acknowledgements cost, and what they save: Redis with ``--appendfsync always`` against ``everysec``.

    python bench/durable_writes.py                  # 60 writes of each kind per mode, 12 kills per mode
    python bench/durable_writes.py --writes 200 --kills 30

For each mode a private redis-server (the tests' ``servers.RedisServer``, then ``CONFIG SET appendfsync MODE``
after every start; a temporary directory) and an
in-process gateway (``services.gateway.serve``, uvicorn on 127.0.0.1) are started, both modes at once. Then:

- **Cost per write.** ``--writes`` of each acknowledged write, timed from request to answer, one mode after
  the other in turn (so that other load on the machine hits both alike): ``POST /v1/jobs`` (a submission),
  ``POST /v1/models`` (an fc-16 model, 1 KiB), ``POST /v1/datasets`` (64 KiB of uint8 pixels) and
  ``Store.commit`` (a coordinator's step: a 1 MiB checkpoint and a metrics row); and a plain 1 KiB ``SET``
  through redis-py, the fsync alone.
- **Kills.** ``--kills`` rounds of a 4 MiB float dataset upload, a model upload, a submission and a step commit,
  each round's redis-server SIGKILLed as soon as the last of them is acknowledged, then restarted on its
  directory; the writes acknowledged before the kill that are missing afterwards are counted.

Every process started here is stopped by its pid, and the temporary directory removed, before the script exits.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import redis
import torch
from safetensors.torch import save as save_tensors

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import RedisServer  # noqa: E402

from services.gateway import serve  # noqa: E402
from services.settings import Settings  # noqa: E402
from services.store import NotFound, Store  # noqa: E402

TOKEN = "bench-token"
JOB = {"estimator": "grad", "relaxation": "ibp", "eps": 0.05, "data": {"dataset": "digits", "batch_size": 32},
       "model": {"arch": "fc-16"}, "schedule": {"epochs": 1, "eps_ramp_epochs": 0, "lr": 0.01, "lr_milestones": []}}
MODEL = save_tensors({"theta": torch.zeros(1210)}, {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})


class Redis(RedisServer):
    """The tests' redis-server (started with the project's options), switched to ``mode`` after every start."""

    def __init__(self, folder: Path, mode: str) -> None:
        super().__init__(folder)
        self.mode = mode

    def start(self) -> Redis:
        super().start()
        client = self.client()
        client.config_set("appendfsync", self.mode)
        client.close()
        return self


def npz(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.arange(len(x)) % 10)
    return buffer.getvalue()


def interleaved(count: int, writes: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
    """``count`` rounds of one write per mode, alternating, so that other load on the machine hits every mode
    alike: each mode's times in ms."""
    times: dict[str, list[float]] = {mode: [] for mode in writes}
    for _ in range(count):
        for mode, write in writes.items():
            started = time.perf_counter()
            write()
            times[mode].append(1000 * (time.perf_counter() - started))
    return times


def created(response: httpx.Response) -> str:
    if response.status_code != 201:
        raise SystemExit(f"{response.request.url.path}: {response.status_code} {response.text[:200]}")
    return str(response.json()["id"])


class Target:
    """One mode's Redis, gateway client and Store, with the writes to time."""

    def __init__(self, server: Redis, http: httpx.Client) -> None:
        self.server, self.http = server, http
        self.store = Store(redis.Redis.from_url(server.url))
        self.pixels = npz(np.random.default_rng(0).integers(0, 256, (1000, 1, 8, 8), dtype=np.uint8))
        self.job = created(http.post("/v1/jobs", json=JOB))
        self.state = save_tensors({"theta": torch.rand(262_144)})
        self.step = 0

    def writes(self) -> dict[str, Callable[[], object]]:
        return {
            "SET of 1 KiB (redis-py, no gateway)": lambda: self.store.redis.set("bench:key", b"v" * 1024),
            "POST /v1/jobs": lambda: created(self.http.post("/v1/jobs", json=JOB)),
            "POST /v1/models (1 KiB)": lambda: created(self.http.post(
                "/v1/models", files={"file": ("m.safetensors", MODEL)})),
            "POST /v1/datasets (64 KiB)": lambda: created(self.http.post(
                "/v1/datasets", files={"file": ("d.npz", self.pixels)})),
            "Store.commit (1 MiB step)": self.commit,
        }

    def commit(self) -> None:
        self.step += 1
        self.store.commit(self.job, self.state, {"step": self.step}, [{"kind": "step"}])


def kills(server: Redis, http: httpx.Client, rounds: int) -> tuple[int, int]:
    """(acknowledged writes, of them missing after the restarts)."""
    rng = np.random.default_rng(1)
    acknowledged: list[tuple[str, str]] = []
    lost = 0
    for _ in range(rounds):
        store = Store(redis.Redis.from_url(server.url))
        step_job = created(http.post("/v1/jobs", json=JOB))
        written = [("dataset", created(http.post("/v1/datasets", files={"file": ("d.npz", npz(
                       rng.random((1024, 1, 32, 32), dtype=np.float32)))}))),
                   ("model", created(http.post("/v1/models", files={"file": ("m.safetensors", MODEL)}))),
                   ("job", created(http.post("/v1/jobs", json=JOB)))]
        store.commit(step_job, save_tensors({"theta": torch.rand(262_144)}), {"step": 1}, [{"kind": "step"}])
        written.append(("step", step_job))
        server.kill()
        store.redis.close()
        server.start()
        acknowledged += written
        check = Store(redis.Redis.from_url(server.url))
        for kind, item in written:
            try:
                if kind == "dataset":
                    check.dataset_arrays(item, "bench")
                elif kind == "model":
                    check.model_data(item, "bench")
                elif kind == "job":
                    check.get_job(item, "bench")
                elif check.checkpoint(item) is None:
                    raise NotFound(item)
            except NotFound:
                lost += 1
        check.redis.close()
        deadline = time.monotonic() + 30
        while http.get("/v1/jobs").status_code != 200 and time.monotonic() < deadline:  # the gateway reconnects
            time.sleep(0.05)
    return len(acknowledged), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=60, help="timed writes of each kind per mode")
    parser.add_argument("--kills", type=int, default=12, help="SIGKILLed rounds per mode")
    args = parser.parse_args()
    modes = ("always", "everysec")
    losses: dict[str, tuple[int, int]] = {}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gls-durable-") as folder, ExitStack() as stack:
        targets: dict[str, Target] = {}
        for mode in modes:
            server = Redis(Path(folder) / mode, mode).start()
            stack.callback(server.stop)
            settings = Settings(redis_url=server.url, gateway_host="127.0.0.1", gateway_port=0, certifier_port=0,
                                tokens=f"{TOKEN}=bench", log_level="error", tenant_max_jobs=1_000_000,
                                tenant_max_stored_mb=1_000_000, threads=1)
            gateway = serve(settings)
            stack.callback(gateway.stop, 1)
            http = stack.enter_context(httpx.Client(base_url=gateway.url, timeout=60,
                                                    headers={"Authorization": f"Bearer {TOKEN}"}))
            targets[mode] = Target(server, http)
        rows = {kind: interleaved(args.writes, {mode: targets[mode].writes()[kind] for mode in modes})
                for kind in targets[modes[0]].writes()}
        for mode in modes:
            targets[mode].store.redis.close()
            losses[mode] = kills(targets[mode].server, targets[mode].http, args.kills)
            print(f"{mode}: done", file=sys.stderr)
    print(f"acknowledged writes with Redis --appendfsync always against everysec; {args.writes} writes of each "
          f"kind per mode (ms: median, p90 in brackets); torch {torch.__version__}")
    print()
    print("| write | always ms | everysec ms | cost of always, ms (median) |")
    print("| --- | --- | --- | --- |")
    for kind, times in rows.items():
        cells = []
        for mode in modes:
            ordered = sorted(times[mode])
            cells.append(f"{statistics.median(ordered):.2f} ({ordered[int(0.9 * (len(ordered) - 1))]:.2f})")
        extra = statistics.median(times["always"]) - statistics.median(times["everysec"])
        print(f"| {kind} | {cells[0]} | {cells[1]} | {extra:+.2f} |")
    print()
    for mode, (count, lost) in losses.items():
        print(f"{mode}: {args.kills} SIGKILLs right after the acknowledgements, {lost} of {count} acknowledged "
              "writes missing after the restarts")
    print(f"whole run {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
