"""Operator verbs of `gls`: run one service in the foreground, or the whole topology locally."""

from __future__ import annotations

import runpy
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

cluster_app = typer.Typer(help="Run the whole topology as local processes.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


def _run_module(module: str) -> None:
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def worker() -> None:
    """Run a bound worker (configured by GLS_* environment variables)."""
    _run_module("services.bound_worker")


def coordinator() -> None:
    """Run a coordinator (configured by GLS_* environment variables)."""
    _run_module("services.coordinator")


def gateway() -> None:
    """Run the gateway: REST API and gRPC Certifier (configured by GLS_* environment variables)."""
    _run_module("services.gateway")


@cluster_app.command("up")
def cluster_up(workers: Annotated[int, typer.Option(min=1, help="bound workers to start")] = 2,
               run_dir: Annotated[Path, typer.Option(help="logs, Redis data and cluster.json")] = Path("gls-cluster"),
               threads: Annotated[int | None, typer.Option(help="torch threads per process")] = None,
               gateway_port: Annotated[int, typer.Option(help="REST port (0: a free one)")] = 0,
               certifier_port: Annotated[int, typer.Option(help="gRPC Certifier port (0: a free one)")] = 0) -> None:
    """Start Redis (unless REDIS_URL is set), the gateway, a coordinator and N workers; stop on Ctrl-C/SIGTERM.

    A process that exits is restarted at once, and after a growing back-off (1, 2, 4 ... 60 s) if it keeps
    exiting, while the rest keep running; if this command itself is killed, its processes get SIGTERM and
    stop too.
    """
    from .cluster import CLUSTER_FILE, up

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    console.print(f"starting {workers} workers, a coordinator and the gateway (logs in {run_dir / 'logs'}) ...")
    cluster = up(run_dir, workers=workers, threads=threads, gateway_port=gateway_port, certifier_port=certifier_port)
    typer.echo(f"gateway_url        {cluster.gateway_url}")
    typer.echo(f"certifier_address  {cluster.certifier_address}")
    typer.echo(f"token              {cluster.token}")
    typer.echo(f"redis_url          {cluster.redis_url}")
    typer.echo(f"written to         {run_dir / CLUSTER_FILE}")
    try:
        while not stop.wait(1.0):
            for event in cluster.supervise():
                console.print(f"{event} (see {run_dir / 'logs'})", style="yellow", markup=False)
    finally:
        console.print("stopping ...")
        cluster.stop()
