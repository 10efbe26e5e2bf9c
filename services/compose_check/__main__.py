"""scripts/compose-check: build the images, run the cluster through a job, bring it down; timings on stdout."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from . import cluster, images, scenario
from .podman import CheckError, Podman, containers_conf, hard_limits, require


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/compose-check", description=__doc__)
    default_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gls" / "compose-check"
    parser.add_argument("--cache", type=Path, default=default_cache,
                        help="the debootstrap tarball and the wheelhouse (default: %(default)s)")
    parser.add_argument("--build-only", action="store_true", help="build the images, start no cluster")
    args = parser.parse_args()
    timings: list[tuple[str, float]] = []

    def step(name: str, started: float) -> None:
        timings.append((name, time.monotonic() - started))
        print(f"[{name}: {timings[-1][1]:.0f} s]", flush=True)

    try:
        require("podman", "podman-compose", "debootstrap")
        args.cache.mkdir(parents=True, exist_ok=True)
        conf = args.cache / "containers.conf"
        podman = Podman(containers_conf(conf, hard_limits()), cluster.compose_secrets())
        started = time.monotonic()
        print("base image", flush=True)
        containers_conf(conf, podman.settable_ulimits(images.debian_image(podman, args.cache)))
        step("base image", started)
        started = time.monotonic()
        print("images", flush=True)
        built = images.build(podman, args.cache)
        step(f"images {built.gls}, {built.redis}", started)
        if args.build_only:
            return 0
        started = time.monotonic()
        with cluster.running(podman) as running, tempfile.TemporaryDirectory() as work:
            print(f"up: {', '.join(running.containers())}", flush=True)
            cluster.wait_ready(running)
            step("up and ready", started)
            started = time.monotonic()
            outcome = scenario.run(running, Path(work))
            step("job, kill, download, certify", started)
            started = time.monotonic()
        step("down", started)
    except CheckError as error:
        print(f"compose-check: {error}", file=sys.stderr)
        return 1
    print(f"OK: job {outcome.job_id} succeeded with {outcome.killed} killed under it; model {outcome.model_bytes} "
          f"bytes; DeepPoly certified {outcome.certified_rest}/{outcome.total} over REST and "
          f"{outcome.certified_grpc}/{outcome.total} over gRPC (eps {scenario.EPS}); nothing left behind")
    print("timings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
