"""Hostile request bodies and upload files for the gateway's limit and fuzz tests (no tests here).

Each builder writes what an attacker with a valid token could send: files whose headers claim more than they
hold or than any limit allows, compressed archives that expand far beyond their size, degenerate shapes, and
JSON built to cost memory (long arrays, deep nesting, long strings).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from typing import Any

import numpy as np
from safetensors.numpy import save as save_arrays


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_claiming(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"") -> bytes:
    """A .npy whose header states ``shape`` of ``descr`` but which holds only ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def zip_of(members: dict[str, bytes], compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def npz_of(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    return zip_of({f"{name}.npy": npy_bytes(array) for name, array in arrays.items()}, compressed)


def npz_claiming_petabytes() -> bytes:
    """A few hundred bytes whose 'x' header claims 2^50 float64 values (8 PiB): numpy would allocate them."""
    return zip_of({"x.npy": npy_claiming((2**50, 1, 1, 1)), "y.npy": npy_bytes(np.zeros(4, np.int64))})


def npz_bomb(decoded_mb: float, dtype: Any = np.uint8) -> bytes:
    """A compressed .npz of zeros: a few KiB that expand to ``decoded_mb`` MiB of 'x'."""
    n = max(1, round(decoded_mb * 2**20 / (64 * 64 * np.dtype(dtype).itemsize)))
    return npz_of(compressed=True, x=np.zeros((n, 1, 64, 64), dtype), y=np.arange(n) % 10)


def npz_many_members(count: int) -> bytes:
    return zip_of({f"m{index}.npy": b"" for index in range(count)})


def safetensors_of(metadata: dict[str, str] | None = None, **arrays: np.ndarray) -> bytes:
    return save_arrays(dict(arrays), metadata)


def safetensors_raw(header: Any, data: bytes = b"", length: int | None = None) -> bytes:
    """A .safetensors made by hand: an 8-byte length (``length``, default the header's), the header, ``data``."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def safetensors_claiming(shape: tuple[int, ...], dtype: str = "F32", name: str = "x",
                         metadata: dict[str, str] | None = None) -> bytes:
    """A header stating ``shape`` with data offsets to match, over 16 bytes of data."""
    size = int(np.prod(shape)) * {"F32": 4, "F64": 8, "U8": 1, "I64": 8}[dtype]
    header: dict[str, Any] = {name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, size]}}
    if metadata:
        header["__metadata__"] = metadata
    return safetensors_raw(header, b"\0" * 16)


HOSTILE_DATASETS: dict[str, bytes] = {
    "petabyte-header.npz": npz_claiming_petabytes(),
    "bomb.npz": npz_bomb(64),
    "float-bomb.npz": npz_bomb(64, np.float32),
    "zero-channels.npz": npz_of(x=np.zeros((4, 0, 8, 8), np.uint8), y=np.arange(4)),
    "zero-examples.npz": npz_of(x=np.zeros((0, 1, 8, 8), np.uint8), y=np.zeros(0, np.int64)),
    "huge-label.npz": npz_of(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.array([0, 1, 2, 2**63 - 1])),
    "uint64-label.npz": npz_of(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.array([0, 1, 2, 2**64 - 1], np.uint64)),
    "object-x.npz": zip_of({"x.npy": npy_claiming((4, 1, 8, 8), "|O"), "y.npy": npy_bytes(np.arange(4))}),
    "many-members.npz": npz_many_members(5000),
    "truncated-member.npz": zip_of({"x.npy": npy_claiming((4, 1, 8, 8), "|u1", b"\0" * 100),
                                    "y.npy": npy_bytes(np.arange(4))}),
    "claims.safetensors": safetensors_claiming((2**40, 1, 8, 8)),
    "header-longer-than-file.safetensors": safetensors_raw({"x": {}}, length=2**60),
    "header-not-json.safetensors": struct.pack("<Q", 5) + b"{{{{{",
    "zero-height.safetensors": safetensors_of(x=np.zeros((4, 1, 0, 8), np.float32), y=np.arange(4)),
}
"""Uploads the dataset route must answer 4xx (never 5xx), each without allocating what it claims."""


def json_array_body(megabytes: float) -> bytes:
    """``{"name": "x", "junk": [1, 1, ...]}`` of about ``megabytes`` MiB."""
    count = int(megabytes * 2**20) // 2
    return b'{"name": "x", "junk": [' + b"1," * (count - 1) + b"1]}"


def hostile_json(size: int) -> dict[str, bytes]:
    """JSON bodies of about ``size`` bytes that cost a whole-body parser memory or recursion."""
    return {
        "long-array": json_array_body(size / 2**20),
        "deep-nesting": b"[" * size,
        "long-string": b'{"name": "' + b"a" * (size - 12) + b'"}',
        "many-keys": b"{" + b",".join(b'"%x":0' % index for index in range(size // 10)) + b"}",
        "repeated-key": b"{" + b'"a": 1,' * (size // 7 - 1) + b'"a": 1}',
    }
