"""Plaintext vs mutual TLS between a caller and a bound worker: connection set-up and call latency.

    python -m bench.internal_tls                  # 30 connections, 60 small and 20 large calls per mode

A private CA and one certificate (SANs gls-worker, localhost, 127.0.0.1) are made with the
``openssl`` commands of deploy/README.md. Two ``python -m services.bound_worker`` processes run on
loopback with the worker token, one plaintext and one with GLS_INTERNAL_TLS_*; the calls alternate
between them so that a busy machine slows both alike. "connect" is a fresh channel until ready
(TCP, plus the TLS handshake with both certificates checked); "small" is Bounds (IBP) of 8 digits
inputs through WorkerPool; "large" is Bounds of 256 new MNIST-sized inputs (0.8 MB sent inline).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from gls_core.data import load_dataset
from gls_core.nets.spec import NetSpec
from gls_core.nets.zoo import network
from gls_core.training.init import kaiming_uniform
from services.settings import Settings
from services.tls import peer_channel
from services.worker_client import WorkerPool

from .rpc import start_workers

TOKEN = "bench-internal-tls"


def make_pki(folder: Path) -> dict[str, str]:
    """A CA and one certificate for every service, as deploy/README.md makes them: the GLS_INTERNAL_TLS_* values."""
    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "365",
        "-subj", "/CN=gls-internal-ca", "-keyout", "ca-key.pem", "-out", "ca.pem")
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "365",
        "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-subj", "/CN=gls-worker",
        "-addext", "subjectAltName=DNS:gls-worker,DNS:localhost,IP:127.0.0.1",
        "-addext", "basicConstraints=critical,CA:FALSE", "-keyout", "service-key.pem", "-out", "service.pem")
    return {"GLS_INTERNAL_TLS_CERT_FILE": str(folder / "service.pem"),
            "GLS_INTERNAL_TLS_KEY_FILE": str(folder / "service-key.pem"),
            "GLS_INTERNAL_TLS_CA_FILE": str(folder / "ca.pem")}


def connect_ms(settings: Settings, address: str) -> float:
    started = time.perf_counter()
    with peer_channel(address, settings.internal_tls, settings.internal_tls_server_name, ()) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        return (time.perf_counter() - started) * 1000


def call_ms(pool: WorkerPool, spec: NetSpec, theta: torch.Tensor, x: torch.Tensor) -> float:
    started = time.perf_counter()
    pool.bounds(spec, theta, x, eps=0.01, method="ibp")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--small", type=int, default=60)
    parser.add_argument("--large", type=int, default=20)
    args = parser.parse_args()

    digits = network("fc-16", "digits")
    digits_theta = kaiming_uniform(digits, generator=torch.Generator().manual_seed(0))
    small_x = load_dataset("digits", "test").x[:8]
    mnist = network("cnn3-tiny", "mnist")
    mnist_theta = kaiming_uniform(mnist, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)

    with tempfile.TemporaryDirectory() as folder:
        tls_env = make_pki(Path(folder))
        modes = {"plaintext": {}, "mutual TLS": tls_env}
        settings, processes, pools = {}, [], {}
        try:
            for mode, env in modes.items():
                started, (address,) = start_workers(1, 1, {"GLS_WORKER_TOKEN": TOKEN, **env})
                processes += started
                values: dict[str, Any] = {name.removeprefix("GLS_").lower(): value for name, value in env.items()}
                settings[mode] = Settings(worker_addresses=address, worker_token=TOKEN, rpc_timeout_s=600, **values)
                pools[mode] = WorkerPool(settings[mode])
            times: dict[str, dict[str, list[float]]] = {mode: {"connect": [], "small": [], "large": []}
                                                        for mode in modes}
            for pool in pools.values():  # warm up: lazy initialisation in both workers
                call_ms(pool, digits, digits_theta, small_x)
                call_ms(pool, mnist, mnist_theta, torch.rand(256, 1, 28, 28, generator=generator))
            for _ in range(args.connects):
                for mode in modes:
                    times[mode]["connect"].append(connect_ms(settings[mode], settings[mode].static_workers[0]))
            for _ in range(args.small):
                for mode, pool in pools.items():
                    times[mode]["small"].append(call_ms(pool, digits, digits_theta, small_x))
            for _ in range(args.large):
                x = torch.rand(256, 1, 28, 28, generator=generator)  # new inputs: sent inline every time
                for mode, pool in pools.items():
                    times[mode]["large"].append(call_ms(pool, mnist, mnist_theta, x))
            large_mb = {mode: pool.last_step_stats().calls[0].request_bytes / 2**20  # type: ignore[union-attr]
                        for mode, pool in pools.items()}
        finally:
            for pool in pools.values():
                pool.close()
            for process in processes:
                process.terminate()
                process.wait(30)

    print(f"plaintext vs mutual TLS to one bound worker on loopback (medians; p90 in brackets), torch threads 1, "
          f"{args.connects} connects, {args.small} small and {args.large} large calls per mode")
    print(f"{'mode':<12} {'connect ms':>18} {'small call ms':>18} {'large call ms':>18} {'large MB':>9}")
    for mode, series in times.items():
        cells = [f"{statistics.median(v):8.2f} ({statistics.quantiles(v, n=10)[-1]:7.2f})" for v in series.values()]
        print(f"{mode:<12} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18} {large_mb[mode]:>9.2f}")


if __name__ == "__main__":
    main()
