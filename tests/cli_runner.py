"""The `gls` command line run in the test process: the same code as the entry point, without a Python start-up.

A subprocess costs seconds of imports per call; tests that need a real process (signals, the entry
point, a fresh clone) start one themselves.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from typer.testing import CliRunner

from gls_core.cli import app as core_app


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str  # with the traceback of an unexpected exception


def run_cli(*args: str, env: dict[str, str] | None = None, app: typer.Typer = core_app) -> Ran:
    result = CliRunner(env=env).invoke(app, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return Ran(result.exit_code, result.stdout, stderr)


def train_run(root: Path, config: dict[str, Any]) -> Path:
    """``gls train`` of ``config`` (written to ROOT/job.yaml) into ROOT/run; the run directory."""
    (root / "job.yaml").write_text(yaml.safe_dump(config))
    trained = run_cli("train", str(root / "job.yaml"), "--out", str(root / "run"))
    assert trained.returncode == 0, trained.stderr
    return root / "run"
