"""Help, argument errors and config errors come back without importing torch (or grpc), in a fresh process.

What makes `gls --help` slow is what it imports, so these tests check what a fresh interpreter has
imported (``sys.modules``) when each path ends; the time it takes is measured by
``scripts/startup-times`` (docs/training.md, Start-up), not here.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

import gls_core
import gls_core.training

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "scipy", "grpc", "httpx", "fastapi", "redis", "matplotlib", "onnx")
# Runs `gls ARGS` as the entry point does, then reports which heavy modules the process imported.
PROBE = """
import json, sys
args, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["gls", *args]
code = 0
try:
    if args == ["import"]:
        import gls_core.cli, services.cli
    else:
        from gls_core.cli import main
        main()
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else 1
print(json.dumps({"code": code, "heavy": sorted(m for m in heavy if m in sys.modules)}), file=sys.__stdout__)
"""


def probe(*args: str, cwd: Path) -> tuple[int, list[str]]:
    """(exit status, heavy modules imported) of `gls ARGS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args)), json.dumps(HEAVY)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], report["heavy"]


@pytest.fixture(scope="module")
def typo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = yaml.safe_load((ROOT / "configs/quick-mnist-cnn3tiny-dp-pgpe.yaml").read_text())
    config["pgpe"]["popsise"] = config["pgpe"].pop("popsize")
    path = tmp_path_factory.mktemp("startup") / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_importing_the_command_line_and_its_plugin_imports_nothing_heavy(tmp_path: Path) -> None:
    assert probe("import", cwd=tmp_path) == (0, [])


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["verify", "--help"],
                                  ["landscape", "--help"], ["certify", "--help"], ["config", "--help"]])
def test_help_imports_nothing_heavy(args: list[str], tmp_path: Path) -> None:
    assert probe(*args, cwd=tmp_path) == (0, [])


def test_argument_errors_import_nothing_heavy(tmp_path: Path) -> None:
    assert probe("evaluate", cwd=tmp_path) == (2, [])  # no run, no --eps
    assert probe("evaluate", "run", "--eps", "0.1", "--timeout", "0", cwd=tmp_path) == (2, [])
    assert probe("verify", "run", cwd=tmp_path) == (2, [])  # neither --eps nor a property
    assert probe("verify", "run", "--eps", "2", cwd=tmp_path) == (2, [])
    assert probe("landscape", "run", "--out", "x.png", "--methods", "zonotope", cwd=tmp_path) == (2, [])
    assert probe("trian", cwd=tmp_path) == (2, [])


def test_config_errors_import_nothing_heavy(typo_config: Path, tmp_path: Path) -> None:
    assert probe("train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run"), cwd=tmp_path) == (2, [])
    assert probe("train", str(typo_config), "--out", str(tmp_path / "run"), cwd=tmp_path) == (2, [])
    assert probe("config", "show", str(typo_config), cwd=tmp_path) == (2, [])
    assert not (tmp_path / "run").exists()


def test_a_valid_config_is_shown_without_torch(tmp_path: Path) -> None:
    assert probe("config", "show", str(ROOT / "configs/quick-mnist-cnn3tiny-dp-pgpe.yaml"), cwd=tmp_path) == (0, [])


def _type_checking_imports(package: Path) -> dict[str, str]:
    """name -> module of each import in the package's ``if TYPE_CHECKING:`` block."""
    block = next(node for node in ast.parse(package.read_text()).body
                 if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {alias.asname or alias.name: "." * node.level + (node.module or "") for node in block.body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


@pytest.mark.parametrize("package", [gls_core, gls_core.training], ids=lambda package: package.__name__)
def test_a_lazy_package_gives_every_name_it_exports(package: ModuleType) -> None:
    origins = _type_checking_imports(Path(str(package.__file__)))
    assert sorted(package.__all__) == sorted(origins)
    for name, module in origins.items():
        assert getattr(package, name) is getattr(importlib.import_module(module, package.__name__), name), name
        assert name in dir(package)
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        _ = package.nonexistent


def test_submodules_are_reachable_as_attributes() -> None:
    code = "import gls_core; print(gls_core.verify.verify_each.__module__, gls_core.network('cnn3', 'mnist').name)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["gls_core.verify.bab", "cnn3-mnist"], done.stderr
