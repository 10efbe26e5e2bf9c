"""A package's attributes imported on first use (PEP 562), so that importing the package imports nothing heavy.

``import gls_core.training.config`` runs ``gls_core/__init__.py`` and ``gls_core/training/__init__.py``
first; if those imported the bounds, the trainer and with them torch, `gls --help` and a config
error would wait seconds for libraries they never use. Such a package imports its names in an
``if TYPE_CHECKING:`` block only (what type checkers read); :func:`lazy_exports` reads that block
and imports each name from the module it names when the name is first used.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _type_checking_imports(init_file: str) -> dict[str, tuple[str, str]]:
    """name -> (module, name there) of every ``from MODULE import NAME`` under ``if TYPE_CHECKING:``."""
    where = {}
    for node in ast.parse(Path(init_file).read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom):
                    module = "." * statement.level + (statement.module or "")
                    where.update({alias.asname or alias.name: (module, alias.name) for alias in statement.names})
    return where


def lazy_exports(package: str, init_file: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` of ``package``, giving the names its TYPE_CHECKING block imports.

    A name that is not among them but is a submodule (``gls_core.verify``) is imported as
    ``import gls_core.verify`` would.
    """
    where = _type_checking_imports(init_file)

    def __getattr__(name: str) -> Any:
        if name in where:
            module, original = where[name]
            value = getattr(importlib.import_module(module, package), original)
        elif importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # later reads find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
