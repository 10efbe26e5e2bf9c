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


ZIP_MAGIC = b"PK\x03\x04"
"""How every non-empty .npz (a zip archive) starts."""
FILE_DESCRIPTION = "the file name's suffix, when it has one, must be {}; without one, the content decides"


def check_suffix(upload: UploadFile, suffixes: tuple[str, ...]) -> str:
    """The file's type from its name, or from its first bytes when the name has no suffix.

    A multipart part's file name is not something OpenAPI can constrain, so a name such as ``file``
    is accepted and judged by its content: a zip archive is an .npz, anything else is read as
    .safetensors (whose reader then says what is wrong). A suffix that names another type is refused.
    """
    name = client_name(upload)
    suffix = PurePath(name).suffix.lower()
    if not suffix:
        upload.file.seek(0)
        zipped = upload.file.read(len(ZIP_MAGIC)) == ZIP_MAGIC
        upload.file.seek(0)
        return ".npz" if zipped and ".npz" in suffixes else suffixes[-1]
    if suffix not in suffixes:
        raise InvalidRequest.one("file", f"{name}: unsupported file type {suffix!r}; expected "
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
