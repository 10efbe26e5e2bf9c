"""Uploaded files: spooled to a private temporary file, so gls_core's readers (which take paths) can judge them.

The readers' messages name the file by its path; they are rewritten to the name the client sent,
so an error points at the client's file, never at a server path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath

from fastapi import UploadFile

from .errors import InvalidRequest


def client_name(upload: UploadFile) -> str:
    """The file's own name without any directory part a client may have sent."""
    return PurePath((upload.filename or "upload").replace("\\", "/")).name or "upload"


def check_suffix(upload: UploadFile, suffixes: tuple[str, ...]) -> str:
    name = client_name(upload)
    suffix = PurePath(name).suffix.lower()
    if suffix not in suffixes:
        raise InvalidRequest.one("file", f"{name}: unsupported file type {suffix or '(none)'!r}; expected "
                                         f"{' or '.join(suffixes)}")
    return suffix


@contextmanager
def spooled(upload: UploadFile, suffix: str) -> Iterator[Path]:
    """The upload's bytes in a temporary file named ``upload<suffix>``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="gls-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        upload.file.seek(0)
        with path.open("wb") as handle:
            shutil.copyfileobj(upload.file, handle, 1 << 20)
        yield path


def reader_error(error: Exception, path: Path, name: str) -> InvalidRequest:
    return InvalidRequest.one("file", str(error).replace(str(path), name))
