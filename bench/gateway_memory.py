"""The gateway's peak memory for a large dataset upload and a large certify body, against real processes.

    python bench/gateway_memory.py                      # a ~200 MiB .npz upload and a ~40 MiB certify body
    python bench/gateway_memory.py --dataset-mb 50 --certify-mb 10

A private redis-server, one ``python -m services.bound_worker`` and ``python -m services.gateway`` run
on 127.0.0.1 (the stack of ``certify_burst.py``), with ``GLS_MAX_UPLOAD_MB``,
``GLS_CERTIFY_MAX_BODY_MB``, ``GLS_CERTIFY_MAX_INPUTS`` and ``GLS_TENANT_MAX_STORED_MB`` raised to admit
the requests. Each measured request gets a freshly started gateway, warmed up by a small request of the
same kind, so that neither lazy imports nor memory the allocator kept from an earlier request hide in
the numbers. The gateway's resident set is read from ``/proc/<pid>/status``: VmRSS before, the peak as
the larger of VmHWM (reset through ``/proc/<pid>/clear_refs`` just before the request) and VmRSS sampled
every 10 ms, and VmRSS after.

- The upload: ``x`` uint8 random pixels N x 3 x 32 x 32 and int64 ``y``, written by ``numpy.savez``
  (uncompressed) to a temporary file and sent with ``GlsClient.upload_dataset``.
- The certify body: random float32 pixels N x 1 x 8 x 8 for an uploaded fc-16 digits model, as JSON
  (``"model_id"``, ``"inputs"``, ``"labels"``, DeepPoly), sent through ``GlsClient``'s HTTP client.

Every temporary file is removed and every process started here is stopped (by pid) before the script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from certify_burst import TOKEN, Stack, stack, upload_model  # noqa: E402

from services.client import GlsClient  # noqa: E402

MIB = 2**20


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` field (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/<pid>/clear_refs``); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """The largest VmRSS of ``pid`` seen every ``every_s`` until stopped."""

    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.stopping = threading.Event()
        self.peak_kib = status_kib(pid, "VmRSS")

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            self.stopping.wait(self.every_s)


@dataclass
class Row:
    request: str
    body_mb: float
    before_mb: float
    peak_mb: float
    after_mb: float
    seconds: float
    answer: str

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.before_mb


def measure(running: Stack, request: str, body_bytes: int, warm_up: Callable[[GlsClient], object],
            send: Callable[[GlsClient], str], settle_s: float = 1.0) -> Row:
    """Restart the gateway, warm it up, then send one request while its RSS is watched."""
    running.stop_gateway()
    running.start_gateway()
    pid = running.gateway_pid
    with GlsClient(running.url, TOKEN, timeout=150) as client:
        warm_up(client)
        time.sleep(settle_s)
        before = status_kib(pid, "VmRSS")
        hwm_reset = reset_peak(pid)
        sampler = Sampler(pid)
        sampler.start()
        started = time.perf_counter()
        try:
            answer = send(client)
        finally:
            seconds = time.perf_counter() - started
            sampler.stopping.set()
            sampler.join(5)
        peak = max(sampler.peak_kib, status_kib(pid, "VmHWM") if hwm_reset else 0)
        time.sleep(settle_s)
        after = status_kib(pid, "VmRSS")
    return Row(request, body_bytes / MIB, before / 1024, peak / 1024, after / 1024, seconds, answer)


def write_dataset(path: Path, megabytes: float, seed: int = 0) -> int:
    """An .npz of about ``megabytes`` MiB of uint8 pixels (N x 3 x 32 x 32) and int64 labels; its size in bytes."""
    rng = np.random.default_rng(seed)
    n = max(1, round(megabytes * MIB / (3 * 32 * 32 + 8)))
    np.savez(path, x=rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path.stat().st_size


def certify_body(model_id: str, megabytes: float, seed: int = 0) -> tuple[bytes, int]:
    """A JSON certify request of about ``megabytes`` MiB: random float32 pixels [N, 1, 8, 8]; (body, N)."""
    rng = np.random.default_rng(seed)

    def body(n: int) -> bytes:
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        return json.dumps({"model_id": model_id, "inputs": x.tolist(), "labels": rng.integers(0, 10, n).tolist(),
                           "eps": 0.01, "relaxation": "deeppoly"}, separators=(",", ":")).encode()

    per_input = len(body(1000)) / 1000
    n = max(1, round(megabytes * MIB / per_input))
    return body(n), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-mb", type=float, default=200.0, help="size of the uploaded .npz, MiB")
    parser.add_argument("--certify-mb", type=float, default=40.0, help="size of the certify body, MiB")
    args = parser.parse_args()
    limit_mb = int(max(args.dataset_mb, args.certify_mb) * 2) + 64
    gateway_env = {"GLS_MAX_UPLOAD_MB": str(limit_mb), "GLS_CERTIFY_MAX_BODY_MB": str(limit_mb),
                   "GLS_CERTIFY_MAX_INPUTS": "1000000", "GLS_TENANT_MAX_STORED_MB": str(limit_mb * 4)}
    began = time.perf_counter()
    rows: list[Row] = []
    with stack(workers=1, gateway_env=gateway_env) as running:
        with GlsClient(running.url, TOKEN) as client:
            model_id = upload_model(client, running.folder)
        small, large = running.folder / "small.npz", running.folder / "large.npz"
        write_dataset(small, 1.0, seed=1)
        size = write_dataset(large, args.dataset_mb)
        try:
            def upload(path: Path) -> Callable[[GlsClient], str]:
                def send(client: GlsClient) -> str:
                    info = client.upload_dataset(path)
                    return f"201, n = {info['n']}"
                return send

            rows.append(measure(running, "POST /v1/datasets (.npz, uint8 x)", size, upload(small), upload(large)))
        finally:
            large.unlink()

        body, n = certify_body(model_id, args.certify_mb)
        warm_body, _ = certify_body(model_id, 0.5, seed=1)

        def certify(content: bytes) -> Callable[[GlsClient], str]:
            def send(client: GlsClient) -> str:
                response = client.http.post("/v1/certify", content=content,
                                            headers={"Content-Type": "application/json"})
                if response.status_code != 200:
                    return f"{response.status_code}: {response.text[:200]}"
                return f"200, {response.json()['total']} verdicts, response {len(response.content) / MIB:.1f} MiB"
            return send

        rows.append(measure(running, f"POST /v1/certify (JSON, {n} inputs)", len(body), certify(warm_body),
                            certify(body)))
        del body
    total_s = time.perf_counter() - began

    print(f"gateway peak RSS per request (a fresh gateway each, after a small warm-up request); "
          f"{os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}")
    print()
    print("| request | body MiB | RSS before MiB | peak MiB | growth MiB | growth / body | RSS after MiB | s "
          "| answer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.request} | {row.body_mb:.1f} | {row.before_mb:.0f} | {row.peak_mb:.0f} | {row.growth_mb:.0f} "
              f"| {row.growth_mb / row.body_mb:.1f}x | {row.after_mb:.0f} | {row.seconds:.1f} | {row.answer} |")
    print()
    print(f"whole run {total_s:.0f} s")


if __name__ == "__main__":
    main()
