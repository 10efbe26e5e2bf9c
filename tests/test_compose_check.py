"""docker-compose.yml for real: scripts/compose-check builds the images here (no registry), brings the cluster
up with podman-compose, trains a job over REST with a worker container killed under it, downloads the model,
certifies over REST and gRPC, and brings everything down (services/compose_check). About 15 minutes on a fresh
machine (debootstrap, wheelhouse, image build), 5 to 8 with the cache; needs root and Podman (.ci/run installs it).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compose_cluster_trains_certifies_and_outlives_a_worker() -> None:
    result = subprocess.run([str(ROOT / "scripts" / "compose-check")], capture_output=True, text=True, timeout=3600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = next(line for line in result.stdout.splitlines() if line.startswith("OK: job"))
    assert "killed under it" in summary and "nothing left behind" in summary, summary
