"""The `gls` command line.

The core verbs (train, evaluate, verify, plot, export, config) run in this process and need only
``pip install gls``. Packages that add verbs register a function under the ``gls.cli`` entry-point
group; the services (``pip install 'gls[services]'``) add the worker, coordinator, gateway, cluster
and client verbs that way, so this package never imports them.
"""

from __future__ import annotations

import importlib.metadata
import sys

import typer

from .console import console

app = typer.Typer(help="GLS: certified training with Gaussian Loss Smoothing.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
PLUGIN_GROUP = "gls.cli"


def _register_core_verbs() -> None:
    from .config_cmd import config_app
    from .evaluate import evaluate_command
    from .export import export_command
    from .landscape import landscape_command
    from .plot import plot_command
    from .train import train
    from .verify import verify_command

    app.command("train")(train)
    app.command("evaluate")(evaluate_command)
    app.command("verify")(verify_command)
    app.command("plot")(plot_command)
    app.command("export")(export_command)
    app.command("landscape")(landscape_command)
    app.add_typer(config_app, name="config")


def load_plugins(target: typer.Typer = app) -> list[str]:
    """Add the verbs of every installed ``gls.cli`` plugin; returns the names of those that are missing a dependency."""
    missing = []
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            register = entry.load()
        except ImportError as error:  # e.g. grpc absent: installed without the services extra
            missing.append(f"{entry.name} ({error.name or error})")
            continue
        register(target)
    return missing


_register_core_verbs()


def main() -> None:
    missing = load_plugins()
    args = sys.argv[1:]
    if missing and args and not args[0].startswith("-") and args[0] not in app_verbs():
        console.print(f"note: verbs of {', '.join(missing)} are not available; install gls[services] for them",
                      style="yellow", markup=False)
    app()


def app_verbs() -> set[str]:
    return {command.name or (command.callback.__name__ if command.callback else "")
            for command in app.registered_commands} | {group.name or "" for group in app.registered_groups}
