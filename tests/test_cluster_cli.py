"""`gls cluster up` as an operator runs it: cluster.json appears, everything serves, SIGTERM stops it all."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from services.client import GlsClient
from services.cluster import coordinator_id

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of an already-stopped child is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def start_cluster(run_dir: Path, **extra_env: str) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "GLS_REDIS_URL", "GLS_TOKENS")}
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "cluster", "up", "--workers", "1",
                                "--run-dir", str(run_dir), "--threads", "1"], cwd=ROOT, env={**env, **extra_env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "cluster.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"cluster.json never appeared: {process.communicate()[1]}")
        time.sleep(0.2)
    return process


def wait_until(check, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_cluster_up_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "cluster"
    process = start_cluster(run_dir)
    try:
        info = json.loads((run_dir / "cluster.json").read_text())
        assert {"gateway_url", "certifier_address", "token"} <= info.keys()
        assert (run_dir / "cluster.json").stat().st_mode & 0o777 == 0o600  # it holds secrets
        url = info["redis_url"]
        assert redis.Redis.from_url(url).ping()
        with pytest.raises(redis.AuthenticationError):  # Redis asks for the cluster's password
            redis.Redis.from_url("redis://" + url.split("@", 1)[1]).ping()
        assert httpx.get(f"{info['gateway_url']}/readyz", timeout=10).status_code == 200
        with GlsClient(info["gateway_url"], info["token"]) as client:
            assert client.jobs() == []
        pids = list(info["pids"].values())
        assert len(pids) == 5 and {"redis", "coordinator", "coordinator-spare"} <= info["pids"].keys()
        assert all(alive(pid) for pid in pids)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "gateway_url" in out and info["token"] in out
    assert not any(alive(pid) for pid in pids)
    logs = {path.name for path in (run_dir / "logs").iterdir()}
    assert {"gateway.log", "coordinator.log", "worker-0.log", "redis.log"} <= logs


def test_crashed_processes_are_restarted_and_all_die_with_cluster_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "cluster"
    process = start_cluster(run_dir, GLS_TOKENS="ops-token=ops")
    try:
        info = json.loads((run_dir / "cluster.json").read_text())
        assert info["token"] == "ops-token"  # the token written is one the gateway accepts
        with GlsClient(info["gateway_url"], info["token"]) as client:
            assert client.jobs() == []
        # the coordinator's consumer name survives restarts: a restarted one takes back its own pending job
        environ = Path(f"/proc/{info['pids']['coordinator']}/environ").read_bytes().split(b"\0")
        assert f"GLS_COORDINATOR_ID={coordinator_id(run_dir)}".encode() in environ
        assert coordinator_id(run_dir) == coordinator_id(run_dir / ".." / "cluster") != coordinator_id(tmp_path)
        crashed = info["pids"]["worker-0"]
        os.kill(crashed, signal.SIGKILL)

        def restarted() -> bool:
            pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
            return pids["worker-0"] != crashed and alive(pids["worker-0"])

        wait_until(restarted, "the killed worker was not restarted")
        assert process.poll() is None  # the rest kept running
        # a crashed coordinator is replaced by its spare (same consumer name), and a new spare stands by
        coordinator, spare = info["pids"]["coordinator"], info["pids"]["coordinator-spare"]
        wait_until(lambda: b"standing by" in (run_dir / "logs" / "coordinator.log").read_bytes(),
                   "the spare coordinator never became ready")
        os.kill(coordinator, signal.SIGKILL)

        def promoted() -> bool:
            pids = json.loads((run_dir / "cluster.json").read_text())["pids"]
            return pids["coordinator"] == spare and pids["coordinator-spare"] not in (coordinator, spare)

        wait_until(promoted, "the spare coordinator did not take over")
        wait_until(lambda: b"promoted: taking over" in (run_dir / "logs" / "coordinator.log").read_bytes(),
                   "the promoted spare did not start claiming jobs")
        assert alive(spare)
        assert httpx.get(f"{info['gateway_url']}/readyz", timeout=10).status_code == 200
        pids = list(json.loads((run_dir / "cluster.json").read_text())["pids"].values())
        process.kill()  # SIGKILL: no chance to stop its children itself
        process.communicate(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in pids), "children outlived a killed cluster up", 30)
    finally:
        if process.poll() is None:
            process.kill()
