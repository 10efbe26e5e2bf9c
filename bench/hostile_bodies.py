"""Hostile request bodies and upload files for the gateway's limit and fuzz tests (no tests here).

Each builder writes what an attacker with a valid token could send: files whose headers claim more than they
hold or than any limit allows, compressed archives that expand far beyond their size, degenerate shapes, and
JSON built to cost memory (long arrays, deep nesting, long strings).
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import zipfile
from typing import Any
from urllib.parse import urlsplit

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


def send_partial(url: str, head: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    """Send an HTTP/1.1 request head (without its blank line) and ``body`` on a plain socket, then read the
    answer without sending anything more: what a client sees whose body the server refuses before reading it
    (a Content-Length larger than ``body``, or a chunked body that goes on). (status, answer body)."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[-1]


def mutated_file(data: bytes, rng: np.random.Generator) -> bytes:
    """``data`` with one seeded mutation where readers are most fragile: header bytes overwritten, a shape or
    length field replaced by a huge or negative number, the file cut short, or random bytes appended."""
    kind = int(rng.integers(5))
    if kind == 0:  # overwrite a few bytes among the first 256 (zip, .npy and safetensors headers live there)
        out = bytearray(data)
        for at in rng.integers(0, min(256, len(out)), int(rng.integers(1, 9))):
            out[int(at)] = int(rng.integers(256))
        return bytes(out)
    if kind == 1:  # every number in a shape or offset list made huge, negative or zero
        replacement = [b"99999999999999999999", b"-1", b"0", b"4611686018427387904"][int(rng.integers(4))]
        return re.sub(rb"(?<=[(\[, ])\d+(?=[,)\]])", replacement, data, count=int(rng.integers(1, 4)))
    if kind == 2:  # a safetensors length prefix, or the first 8 bytes, as a random 64-bit number
        return struct.pack("<Q", int(rng.integers(0, 2**63))) + data[8:]
    if kind == 3:
        return data[:int(rng.integers(0, len(data)))]
    return data + rng.bytes(int(rng.integers(1, 4096)))


HOSTILE_VALUES: list[Any] = [2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, "s" * 5000, "\u202e\u0000\ud7ff", None,
                             True, [[[[[[[[[[[]]]]]]]]]]], {"a": {"b": {"c": [1] * 20_000}}}, [0] * 12_000, "", -1, 0]
"""Leaf values a fuzzer puts in a JSON body: beyond int64 and float64, tiny, long, odd text, nulls, nesting."""


def mutated_json(document: Any, rng: np.random.Generator) -> bytes:
    """``document`` (dicts and lists) with one to three leaves replaced by :data:`HOSTILE_VALUES` or unknown keys
    added, as JSON text (non-JSON literals such as NaN stay out: they are malformed JSON, tested apart)."""
    copy = json.loads(json.dumps(document))
    for _ in range(int(rng.integers(1, 4))):
        node = copy
        while isinstance(node, dict | list) and node and rng.random() < 0.7:
            key = list(node)[int(rng.integers(len(node)))] if isinstance(node, dict) else \
                int(rng.integers(len(node)))
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        value = HOSTILE_VALUES[int(rng.integers(len(HOSTILE_VALUES)))]
        if isinstance(node, dict):
            keys = list(node) + ["unknown"]
            node[keys[int(rng.integers(len(keys)))]] = value
        elif isinstance(node, list) and node:
            node[int(rng.integers(len(node)))] = value
    return json.dumps(copy).encode()
