"""The service verbs of `gls` (worker, coordinator, gateway, cluster, and the client verbs).

They join the core command line (:mod:`gls_core.cli`) through the ``gls.cli`` entry point when the
``services`` extra is installed; ``python -m services.cli`` runs the whole command line too.
"""

from __future__ import annotations

import importlib.util
import sys

import typer

from gls_core.cli import app

from .client_cli import register as register_client_verbs

_REGISTERED = "_gls_services_registered"
# Imported when a verb runs (so `gls --help` stays fast); checked here so that a core-only install
# leaves the verbs out instead of listing verbs that cannot run.
SERVICE_MODULES = ("grpc", "redis", "fastapi", "uvicorn", "httpx")


def _require_service_dependencies() -> None:
    for name in SERVICE_MODULES:
        if (name in sys.modules and sys.modules[name] is None) or importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def register(target: typer.Typer) -> None:
    """Add the operator and client verbs to ``target`` (once); ImportError when the services extra is missing."""
    if getattr(target, _REGISTERED, False):
        return
    _require_service_dependencies()
    from . import ops_cli

    target.command("worker")(ops_cli.worker)
    target.command("coordinator")(ops_cli.coordinator)
    target.command("gateway")(ops_cli.gateway)
    target.add_typer(ops_cli.cluster_app, name="cluster")
    register_client_verbs(target)
    setattr(target, _REGISTERED, True)


register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
