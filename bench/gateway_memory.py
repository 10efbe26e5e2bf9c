"""The gateway's peak memory under the worst body each POST route takes, against real processes.

    python bench/gateway_memory.py                      # limits: 64 MiB uploads, 128 MiB decoded, 64 MiB certify
    python bench/gateway_memory.py --upload-mb 32 --decoded-mb 64 --certify-mb 32

A private redis-server, one ``python -m services.bound_worker`` and ``python -m services.gateway`` run
on 127.0.0.1 (the stack of ``certify_burst.py``), with ``GLS_MAX_UPLOAD_MB``, ``GLS_UPLOAD_MAX_DECODED_MB``,
``GLS_CERTIFY_MAX_BODY_MB`` and ``GLS_MAX_BODY_KB`` set from the options, ``GLS_CERTIFY_MAX_INPUTS`` and
``GLS_TENANT_MAX_STORED_MB`` raised so that neither refuses first. Each measured request gets a freshly
started gateway, warmed up by a small request of the same kind, so that neither lazy imports nor memory the
allocator kept from an earlier request hide in the numbers. The gateway's resident set is read from
``/proc/<pid>/status``: VmRSS before, the peak as the larger of VmHWM (reset through
``/proc/<pid>/clear_refs`` just before the request) and VmRSS sampled every 10 ms, and VmRSS after.

For each route, the bodies that cost it most, accepted or refused (``bench/hostile_bodies.py`` builds the
hostile ones):

- ``POST /v1/jobs``: the issue's 200 MiB ``{"name": "x", "junk": [1, 1, ...]}`` (413 from its
  Content-Length), and the longest ``junk`` array that fits ``GLS_MAX_BODY_KB`` (422).
- ``POST /v1/datasets``: a compressed .npz of a few MiB that expands to 1.5 GiB (413 from its headers);
  random float32 pixels filling the smaller of both limits (201; float pixels cost the most per byte); zeros
  as float32 that expand to just under the decoded limit (201; stored as uint8); random uint8 pixels filling
  the upload limit (201).
- ``POST /v1/models``: an fc-16 model plus an extra tensor filling the upload limit (201; every tensor of
  the file is read, then only theta is kept).
- ``POST /v1/certify``: random float32 digits inputs filling the body limit (200), and one string filling it
  (422: yajl holds a string whole before it is judged).

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

from certify_burst import TOKEN, Stack, digits_model, stack, upload_model  # noqa: E402
from hostile_bodies import hostile_json, json_array_body, npz_bomb, npz_of, send_partial  # noqa: E402
from rss import reset_peak, status_kib  # noqa: E402
from safetensors.torch import load as load_tensors  # noqa: E402
from safetensors.torch import save as save_tensors  # noqa: E402

from services.client import GlsClient  # noqa: E402

MIB = 2**20


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


def float_dataset(megabytes: float, seed: int = 0) -> bytes:
    """An uncompressed .npz of random float32 pixels in [0, 1) (N x 1 x 64 x 64) filling about ``megabytes``."""
    rng = np.random.default_rng(seed)
    n = max(1, round(megabytes * MIB / (64 * 64 * 4 + 8)))
    return npz_of(x=rng.random((n, 1, 64, 64), dtype=np.float32), y=rng.integers(0, 10, n))


def padded_model(megabytes: float) -> bytes:
    """fc-16 on digits plus a float32 tensor 'padding' that brings the file to about ``megabytes`` MiB."""
    model = load_tensors(digits_model()[1])
    padding = torch.zeros(max(1, int(megabytes * MIB) // 4))
    return save_tensors({"theta": model["theta"], "padding": padding},
                        {"format": "gls-flat-v1", "arch": "fc-16", "dataset": "digits"})


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


def raw_post(url: str, path: str, body: bytes, declared: int) -> str:
    """POST ``body`` declaring ``declared`` bytes and read the answer without sending the rest (what a client that
    sends 200 MiB sees of a server that refuses it by its Content-Length)."""
    head = (f"POST {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared}\r\n")
    status, answer = send_partial(url, head, body)
    return f"{status}: {json.loads(answer)['detail']}"[:90]


def posted(path: str, **kwargs: object) -> Callable[[GlsClient], str]:
    def send(client: GlsClient) -> str:
        response = client.http.post(path, **kwargs)  # type: ignore[arg-type]
        if response.status_code >= 400:
            detail = response.json()["detail"]
            text = detail if isinstance(detail, str) else f"{detail[0]['field']}: {detail[0]['msg']}"
            return f"{response.status_code}: {text}"[:90]
        if path == "/v1/certify":
            return f"200, {response.json()['total']} verdicts, response {len(response.content) / MIB:.1f} MiB"
        return f"{response.status_code}" + (f", n = {response.json()['n']}" if "n" in response.json() else "")
    return send


def dataset_upload(name: str, data: bytes) -> Callable[[GlsClient], str]:
    return posted("/v1/datasets", files={"file": (name, data)})


JSON_HEADERS = {"Content-Type": "application/json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mb", type=int, default=64, help="GLS_MAX_UPLOAD_MB")
    parser.add_argument("--decoded-mb", type=int, default=128, help="GLS_UPLOAD_MAX_DECODED_MB")
    parser.add_argument("--certify-mb", type=int, default=64, help="GLS_CERTIFY_MAX_BODY_MB")
    parser.add_argument("--body-kb", type=int, default=64, help="GLS_MAX_BODY_KB")
    args = parser.parse_args()
    gateway_env = {"GLS_MAX_UPLOAD_MB": str(args.upload_mb), "GLS_UPLOAD_MAX_DECODED_MB": str(args.decoded_mb),
                   "GLS_CERTIFY_MAX_BODY_MB": str(args.certify_mb), "GLS_MAX_BODY_KB": str(args.body_kb),
                   "GLS_CERTIFY_MAX_INPUTS": "10000000", "GLS_TENANT_MAX_STORED_MB": "100000"}
    began = time.perf_counter()
    rows: list[Row] = []
    fill = 0.95  # of a limit: the largest body that stays under it, with room for the multipart framing
    with stack(workers=1, gateway_env=gateway_env) as running:
        with GlsClient(running.url, TOKEN) as client:
            model_id = upload_model(client, running.folder)
        small = dataset_upload("small.npz", npz_of(x=np.zeros((40, 1, 8, 8), np.uint8), y=np.arange(40) % 10))
        issue_body = json_array_body(200)
        cases: list[tuple[str, int, Callable[[GlsClient], object], Callable[[GlsClient], str]]] = [
            ("POST /v1/jobs, the issue's 200 MiB junk array", len(issue_body),
             posted("/v1/jobs", json={"name": "x"}),
             lambda client: raw_post(running.url, "/v1/jobs", issue_body[:1 << 20], len(issue_body))),
            (f"POST /v1/jobs, junk array filling {args.body_kb} KiB", args.body_kb * 1024 - 64,
             posted("/v1/jobs", json={"name": "x"}),
             posted("/v1/jobs", content=json_array_body((args.body_kb * 1024 - 64) / MIB), headers=JSON_HEADERS)),
        ]
        bomb = npz_bomb(1536)
        cases.append(("POST /v1/datasets, .npz expanding to 1.5 GiB", len(bomb), small, dataset_upload("b.npz", bomb)))
        floats = float_dataset(fill * min(args.upload_mb, args.decoded_mb))
        cases.append(("POST /v1/datasets, random float32 x", len(floats), small, dataset_upload("f.npz", floats)))
        zeros = npz_bomb(fill * args.decoded_mb, np.float32)
        cases.append((f"POST /v1/datasets, float32 zeros expanding to {fill * args.decoded_mb:.0f} MiB", len(zeros),
                      small, dataset_upload("z.npz", zeros)))
        pixels = running.folder / "pixels.npz"
        write_dataset(pixels, fill * args.upload_mb)
        uint8 = pixels.read_bytes()
        pixels.unlink()
        cases.append(("POST /v1/datasets, random uint8 x", len(uint8), small, dataset_upload("u.npz", uint8)))
        model = padded_model(fill * args.upload_mb)
        cases.append(("POST /v1/models, fc-16 plus a padding tensor", len(model),
                      posted("/v1/models", files={"file": ("m.safetensors", digits_model()[1])}),
                      posted("/v1/models", files={"file": ("m.safetensors", model)})))
        inputs, n = certify_body(model_id, fill * args.certify_mb)
        warm_body, _ = certify_body(model_id, 0.5, seed=1)
        warm = posted("/v1/certify", content=warm_body, headers=JSON_HEADERS)
        cases.append((f"POST /v1/certify, {n} inputs", len(inputs), warm,
                      posted("/v1/certify", content=inputs, headers=JSON_HEADERS)))
        string = hostile_json(int(fill * args.certify_mb * MIB))["long-string"]
        cases.append(("POST /v1/certify, one long string", len(string), warm,
                      posted("/v1/certify", content=string, headers=JSON_HEADERS)))
        for request, size, warm_up, send in cases:
            rows.append(measure(running, request, size, warm_up, send))
            print(f"measured {request}: peak {rows[-1].peak_mb:.0f} MiB", file=sys.stderr)
    total_s = time.perf_counter() - began

    print(f"gateway peak RSS per request (a fresh gateway each, after a small warm-up request); limits: "
          f"GLS_MAX_BODY_KB {args.body_kb}, GLS_MAX_UPLOAD_MB {args.upload_mb}, GLS_UPLOAD_MAX_DECODED_MB "
          f"{args.decoded_mb}, GLS_CERTIFY_MAX_BODY_MB {args.certify_mb}; {os.cpu_count()} cores, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print()
    print("| request | body MiB | RSS before MiB | peak MiB | growth MiB | RSS after MiB | s | answer |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.request} | {row.body_mb:.2f} | {row.before_mb:.0f} | {row.peak_mb:.0f} | {row.growth_mb:.0f} "
              f"| {row.after_mb:.0f} | {row.seconds:.1f} | {row.answer} |")
    print()
    print(f"whole run {total_s:.0f} s")


if __name__ == "__main__":
    main()
