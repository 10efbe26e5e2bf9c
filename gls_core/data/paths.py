"""Where dataset files live: one data directory, plus system-wide fallbacks, and one error for missing files.

Every loader resolves its files here so that the search order and the "what is missing" message are
the same for all datasets: a user who sees the error knows which directory and which names to fill.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DATA_DIR_ENV = "GLS_DATA_DIR"


def data_dir(override: str | Path | None = None) -> Path:
    """The one data directory every loader reads: the argument, else $GLS_DATA_DIR, else ~/.cache/gls/data."""
    if override is not None:
        return Path(override)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return Path.home() / ".cache" / "gls" / "data"


def find_file(folder: Path, name: str) -> Path | None:
    """``name.gz`` or ``name`` in ``folder`` (compressed first, as distributed), or None."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def find_all(folders: Sequence[Path], names: Sequence[str]) -> list[Path] | None:
    """All ``names`` from the first folder that holds every one of them (files never mix across folders)."""
    for folder in folders:
        found = [find_file(folder, name) for name in names]
        if all(path is not None for path in found):
            return [path for path in found if path is not None]
    return None


def missing_error(dataset: str, root: Path, relative: str, names: Sequence[str], reason: str = "") -> FileNotFoundError:
    """The error for absent data, naming the directory (``root/relative``), each expected file, and the fix."""
    message = (f"{dataset}: files not found in {root / relative}; expected {', '.join(names)}. Put them there, or set "
               f"${DATA_DIR_ENV} (or pass root=) to a data directory that contains {relative}/")
    if reason:
        message += f". {reason}"
    return FileNotFoundError(message)
