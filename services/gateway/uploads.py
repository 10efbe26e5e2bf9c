"""Uploaded files: spooled to a private temporary file, so gls_core's readers (which take paths) can judge them.

The readers' messages name the file by its path; they are rewritten to the name the client sent,
so an error points at the client's file, never at a server path.

Before a reader decodes anything, the file's own headers are read (each .npz member's .npy header, the
.safetensors JSON header): every array must hold exactly the bytes its header claims, and together the
arrays must fit ``GLS_UPLOAD_MAX_DECODED_MB`` once decoded, so a small file that claims (or expands to)
huge arrays is refused before any of them is allocated.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
from fastapi import UploadFile

from .errors import InvalidRequest

MAX_NAME = 200
"""Characters of an upload's file name (stored as its source, and its name unless one is given)."""


def client_name(upload: UploadFile) -> str:
    """The file's own name without any directory part a client may have sent."""
    name = PurePath((upload.filename or "upload").replace("\\", "/")).name or "upload"
    if len(name) > MAX_NAME:
        raise InvalidRequest.one("file", f"the file name has {len(name)} characters, more than {MAX_NAME}")
    return name


MIB = 1024 * 1024
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


# ------------------------------------------------------------------------------- headers before arrays

MAX_MEMBERS = 64
"""Members of an .npz (a dataset has two): zipfile builds an object per member while it opens the archive."""
MAX_SAFETENSORS_HEADER = 1 << 20
"""Bytes of a .safetensors JSON header (a dataset's or a model's is a few hundred)."""
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
FLOAT_KINDS = ("F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3")


@dataclass(frozen=True)
class ArrayHeader:
    """What a file says an array is, before it is read: its shape and element type."""

    shape: tuple[int, ...]
    itemsize: int
    floating: bool
    unsigned_bytes: bool  # uint8: kept as it is

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize

    def held_bytes(self, as_float: bool = True) -> int:
        """Bytes this array takes once read and converted as the gateway holds it: uint8 pixels as they are,
        other floats as float32 (after reading the file's own type), integers as int64."""
        if self.unsigned_bytes and not as_float:
            return self.elements
        return self.elements * max(self.itemsize, 4 if self.floating else 8)


def _unreadable(name: str, suffix: str, reason: str) -> InvalidRequest:
    return InvalidRequest.one("file", f"{name}: cannot read it as {suffix} ({reason})")


def _zip_entries(path: Path) -> int | None:
    """The member count the archive's end record states (zip64 included), or None when there is none."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        handle.seek(max(0, size - (22 + 0xFFFF)))
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            return None
        entries: int = struct.unpack_from("<H", tail, at + 10)[0]
        if entries == 0xFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
            handle.seek(struct.unpack_from("<Q", tail, at - 20 + 8)[0])
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                entries = struct.unpack_from("<Q", record, 32)[0]
    return entries


def npz_headers(path: Path, name: str, keys: tuple[str, ...]) -> dict[str, ArrayHeader]:
    """The ``keys`` members' .npy headers, read without decoding any data; each must hold exactly the bytes its
    header claims. 422 naming ``file`` for anything else."""
    entries = _zip_entries(path)
    if entries is None:
        return {}  # not a zip archive: the reader says what it is
    if entries > MAX_MEMBERS:
        raise _unreadable(name, ".npz", f"{entries} members; a dataset has 'x' and 'y', at most {MAX_MEMBERS} "
                                        "are read")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            for key in keys:
                info = members.get(key)
                if info is None:
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f"'{key}' is .npy format {version[0]}.{version[1]}, not 1.0 or 2.0")
                    offset = member.tell()
                if dtype.hasobject:
                    raise ValueError(f"'{key}' holds Python objects ({dtype}), which are never loaded")
                header = ArrayHeader(tuple(shape), dtype.itemsize, dtype.kind == "f", dtype == np.uint8)
                if offset + header.nbytes != info.file_size:
                    raise ValueError(f"'{key}' claims shape {header.shape} of {dtype} ({header.nbytes:,} bytes), but "
                                     f"its member holds {max(0, info.file_size - offset):,}")
                headers[key] = header
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as error:
        raise _unreadable(name, ".npz", str(error)) from None
    return headers


def safetensors_headers(path: Path, name: str) -> dict[str, ArrayHeader]:
    """Every tensor's entry of the JSON header, checked against the file's size before any tensor is read."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 0 or length > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise InvalidRequest.one("file", f"{name}: not a readable safetensors file (its header length "
                                             f"{length:,} does not fit the {size:,} bytes of the file, or passes "
                                             f"{MAX_SAFETENSORS_HEADER:,})")
        text = handle.read(length)
    try:
        header = json.loads(text)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        data_size, tensors = size - 8 - length, {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in SAFETENSORS_ITEMSIZE:
                raise ValueError(f"'{key}' has an unknown dtype {str(dtype)[:16]!r}")
            if not all(type(dim) is int and dim >= 0 for dim in shape):
                raise ValueError(f"'{key}' has a bad shape {str(shape)[:64]}")
            tensor = ArrayHeader(tuple(shape), SAFETENSORS_ITEMSIZE[dtype], dtype in FLOAT_KINDS, dtype == "U8")
            begin, end = offsets
            if not (0 <= begin <= end <= data_size and end - begin == tensor.nbytes):
                raise ValueError(f"'{key}' claims shape {tensor.shape} of {dtype} at bytes {str(offsets)[:64]}, "
                                 f"which the {data_size:,} data bytes of the file do not hold")
            tensors[str(key)] = tensor
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise InvalidRequest.one("file", f"{name}: not a readable safetensors file ({str(error)[:200]})") from None
    return tensors


def check_decoded(path: Path, suffix: str, name: str, keys: tuple[str, ...] | None, limit_mb: int,
                  as_float: bool = True) -> dict[str, ArrayHeader]:
    """The headers of the arrays an upload's reader will decode (``keys``; None: every tensor), refused with 413
    when together they would hold more than ``limit_mb`` MiB (GLS_UPLOAD_MAX_DECODED_MB) once read."""
    if suffix == ".npz":
        headers = npz_headers(path, name, keys or ())
    else:
        headers = safetensors_headers(path, name)
        headers = {key: header for key, header in headers.items() if keys is None or key in keys}
    held = sum(header.held_bytes(as_float) for header in headers.values())
    if held > limit_mb * MIB:
        described = ", ".join(f"'{key}' {header.shape}" for key, header in headers.items())
        raise InvalidRequest.one("file", f"{name}: its arrays ({described}) would take {held / MIB:,.0f} MiB once "
                                         f"decoded, more than the limit of {limit_mb} MiB "
                                         "(GLS_UPLOAD_MAX_DECODED_MB)", status=413)
    return headers
