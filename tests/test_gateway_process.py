"""``python -m services.gateway`` as operators run it: env configuration, both ports, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import RedisServer, free_port, wait_for_port
from test_gateway_support import ALICE, TOKENS

ROOT = Path(__file__).resolve().parents[1]


def test_the_gateway_process_serves_both_apis_and_stops_on_sigterm(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    http_port, grpc_port = free_port(), free_port()
    env = {**os.environ, "GLS_REDIS_URL": redis_server.url, "GLS_TOKENS": TOKENS, "GLS_GATEWAY_HOST": "127.0.0.1",
           "GLS_GATEWAY_PORT": str(http_port), "GLS_CERTIFIER_PORT": str(grpc_port), "GLS_SSE_HEARTBEAT_S": "60",
           "GLS_LOG_LEVEL": "info"}
    process = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(http_port, 60)
        url = f"http://127.0.0.1:{http_port}"
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = health_pb2.HealthCheckRequest(service="gls.v1.Certifier")
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        headers = {"Authorization": f"Bearer {ALICE}"}
        job = httpx.post(f"{url}/v1/jobs", json={"data": {"dataset": "digits"}}, headers=headers).json()
        with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", headers=headers) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"  # a watcher blocked in Redis for up to 60 s ...
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert time.monotonic() - started < 10  # ... does not hold the shutdown up
        assert "received SIGTERM" in stderr and "gateway stopped" in stderr
        assert f"http://127.0.0.1:{http_port}" in stderr  # logs go to stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        redis_server.stop()
