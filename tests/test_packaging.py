"""The core installs and runs alone: `pip install .` gives the library and the in-process CLI.

The service verbs come from the ``gls.cli`` entry point of the services extra; without its
dependencies `gls` still trains, evaluates and verifies, and says where the other verbs went.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TERMINAL_UI = {"rich", "typer", "click"}

# Runs `gls` with the service dependencies made unimportable, as on a core-only install.
WITHOUT_SERVICES = """
import sys
for name in ("grpc", "redis", "fastapi", "uvicorn", "httpx", "prometheus_client"):
    sys.modules[name] = None
sys.argv = ["gls", *sys.argv[1:]]
from gls_core.cli import main
main()
"""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_imports_terminal_ui_only_in_its_cli() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(_imports(path) & TERMINAL_UI)
                 for path in (ROOT / "gls_core").rglob("*.py")
                 if "cli" not in path.relative_to(ROOT / "gls_core").parts and _imports(path) & TERMINAL_UI}
    assert not offenders, f"terminal UI imported outside gls_core/cli: {offenders}"


def test_core_never_imports_the_services() -> None:
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "gls_core").rglob("*.py")
                 if "services" in _imports(path)]
    assert not offenders, offenders


def _gls_without_services(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_SERVICES, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_core_cli_works_without_the_service_dependencies() -> None:
    listing = _gls_without_services("--help")
    assert listing.returncode == 0, listing.stderr
    for verb in ("train", "evaluate", "verify"):
        assert verb in listing.stdout
    assert "coordinator" not in listing.stdout and "submit" not in listing.stdout
    train_help = _gls_without_services("train", "--help")
    assert train_help.returncode == 0 and "--resume" in train_help.stdout, train_help.stderr


def test_missing_service_verb_says_which_extra_to_install() -> None:
    result = _gls_without_services("submit", "config.yaml")
    assert result.returncode != 0
    assert "gls[services]" in result.stderr, result.stderr


def test_full_install_lists_the_service_verbs() -> None:
    listing = subprocess.run([sys.executable, "-m", "gls_core.cli", "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for verb in ("train", "worker", "coordinator", "gateway", "cluster", "submit", "watch"):
        assert verb in listing.stdout, verb
