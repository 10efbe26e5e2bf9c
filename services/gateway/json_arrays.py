"""Read a JSON document as it arrives, its large numeric arrays straight into numpy.

A certify body is mostly a few big arrays of numbers. Parsed whole (``json.loads``, then pydantic)
every number becomes a Python float in a list of lists, 5-10x the JSON text. Here the text is fed in
chunks to yajl (through ``ijson``, in C); every value outside the named arrays is built as usual
(they are small), and the numbers of each named array go into float32/int64 blocks, checked as they
come: nesting depth, element types (pydantic's own messages), a rectangular shape, an item limit.
Everything outside the named arrays is read within :class:`JsonLimits` (nesting depth, string length,
items per list or object, values in all), so no body builds more than a bounded number of Python
objects whatever its size. Memory: the decoded arrays (each grown in place), the events of one slice,
and at most ``max_values`` small values; a string is held by yajl whole before it is judged, so a
string costs at most the body's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import GenericAlias
from typing import Any

import ijson
import numpy as np
from ijson.utils import sendable_list
from pydantic import TypeAdapter, ValidationError

Path = tuple[str | int, ...]
SLICE = 1 << 16
"""Bytes given to yajl at a time: bounds the event list (about 3,000 numbers) held at once."""
MAX_DEPTH = 32
"""Nesting allowed outside the named arrays (they have their own depth)."""
MAX_STRING = 4096
"""Characters of a string or object key outside the named arrays (ids, names and methods are far shorter)."""
MAX_ITEMS = 10_000
"""Items of one list or object outside the named arrays."""
MAX_VALUES = 100_000
"""Values (scalars and containers) outside the named arrays, in all."""
MAX_ERRORS = 20
"""Errors recorded; a body with a million bad numbers is not answered with a million messages."""


@dataclass(frozen=True)
class JsonLimits:
    """What a document may hold outside its named arrays; beyond any of them reading stops (:class:`MalformedJson`
    at the value, ``at_value``)."""

    max_depth: int = MAX_DEPTH
    max_string: int = MAX_STRING
    max_items: int = MAX_ITEMS
    max_values: int = MAX_VALUES


@dataclass(frozen=True)
class ArrayField:
    """A rectangular array of ``depth`` nested JSON lists whose leaves validate as ``item``."""

    depth: int
    item: Any  # a pydantic type (StrictFloat, StrictInt): its messages name what a bad element is
    dtype: Any  # np.float32 or np.int64
    max_items: int | None = None  # outer length, checked as the items arrive
    ragged: str = "ragged: every item must have the same shape"

    def adapter(self, level: int) -> TypeAdapter[Any]:
        """The type of a value inside a list at ``level`` (1: the outer list)."""
        kind = self.item
        for _ in range(self.depth - level):
            kind = GenericAlias(list, (kind,))
        return TypeAdapter(kind)


class TooManyItems(Exception):
    """An array passed its ``max_items``: reading stops there."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(f"{'.'.join(map(str, path))}: more than {limit} items")
        self.path, self.limit = path, limit


class MalformedJson(Exception):
    """The text is not JSON (or not UTF-8): reading stops. ``path`` is where it went wrong, ``at_value`` when the
    fault is a value there (NaN, Infinity, a number out of range) rather than the text's structure."""

    def __init__(self, path: Path, reason: str, at_value: bool = False, encoding: bool = False) -> None:
        super().__init__(reason)
        self.path, self.reason, self.at_value, self.encoding = path, reason, at_value, encoding


def _error(path: Path, adapter: TypeAdapter[Any], value: Any) -> dict[str, Any]:
    """pydantic's own error for ``value`` where ``adapter``'s type is expected, at ``path``."""
    try:
        adapter.validate_python(value)
    except ValidationError as error:
        first = error.errors()[0]
        return {"type": first["type"], "loc": path, "msg": first["msg"]}
    return {"type": "value_error", "loc": path, "msg": "invalid value"}


def _stand_in(event: str, value: Any) -> Any:
    """A value of the same JSON kind, to be judged in place of a container that is skipped."""
    return {} if event == "start_map" else [] if event == "start_array" else value


class _Sink:
    """One named array being read: its shape so far and a buffer of its numbers."""

    def __init__(self, path: Path, spec: ArrayField, errors: list[dict[str, Any]]) -> None:
        self.path, self.spec, self.errors = path, spec, errors
        self.dims: list[int | None] = [None] * spec.depth
        self.children = [0] * (spec.depth + 1)  # closed elements of the open list at each level (1-based)
        self.level = 1  # its start_array is consumed
        self.leaf_start = 0  # index of the open leaf list's first number
        self.values: list[Any] = []
        self.buffer = np.empty(0, dtype=spec.dtype)  # the numbers so far, then spare room
        self.flushed = 0
        self.skip = 0  # depth inside a container being skipped after an error
        self.ok = True

    def where(self, level: int) -> Path:
        index = self.flushed + len(self.values) - self.leaf_start if level == self.spec.depth else \
            self.children[level]
        return (*self.path, *self.children[1:level], index)

    def fail(self, level: int, event: str, value: Any) -> None:
        self.ok = False
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(_error(self.where(level), self.spec.adapter(level), _stand_in(event, value)))

    def consume(self, events: list[tuple[str, Any]], i: int) -> int:
        """Events from ``i`` on until the array closes (then ``level`` is 0); the index after the last one used."""
        depth, level, values, children = self.spec.depth, self.level, self.values, self.children
        integer = self.spec.dtype is np.int64
        count = len(events)
        while i < count:
            event, value = events[i]
            i += 1
            if self.skip:
                self.skip += 1 if event in ("start_map", "start_array") else -1 if event in ("end_map", "end_array") \
                    else 0
                continue
            if event == "number" and level == depth:
                if integer and type(value) is not int:
                    self.fail(level, event, value)
                values.append(value)
            elif event == "start_array" and level < depth:
                level += 1
                children[level] = 0
                if level == depth:
                    self.leaf_start = self.flushed + len(values)
            elif event == "end_array":
                length = self.flushed + len(values) - self.leaf_start if level == depth else children[level]
                known = self.dims[level - 1]
                if known is None:
                    self.dims[level - 1] = length
                elif known != length and self.ok:
                    self.ok = False
                    self.errors.append({"type": "value_error", "loc": self.path, "msg": self.spec.ragged})
                level -= 1
                if level == 0:
                    break
                children[level] += 1
                if level == 1 and self.spec.max_items is not None and children[1] > self.spec.max_items:
                    raise TooManyItems(self.path, self.spec.max_items)
            else:  # a scalar where a list belongs, a container where a number does, or an object
                self.fail(level, event, value)
                if event in ("start_map", "start_array"):
                    self.skip = 1
                if level == depth:
                    values.append(0)
                else:
                    children[level] += 1
        self.level = level
        self.flush()
        return i

    def flush(self) -> None:
        """Move the pending numbers into the buffer, which grows in place (realloc: large blocks are remapped, not
        copied, so its peak stays about its size rather than old + new)."""
        end = self.flushed + len(self.values)
        if self.spec.depth == 1 and self.spec.max_items is not None and end > self.spec.max_items:
            raise TooManyItems(self.path, self.spec.max_items)  # a flat array's items are its numbers
        if self.values and self.ok:
            if end > len(self.buffer):
                self.buffer.resize(max(end, len(self.buffer) * 3 // 2, 4096), refcheck=False)
            self.buffer[self.flushed:end] = self.values
        self.flushed = end
        self.values.clear()

    def array(self) -> np.ndarray:
        shape: list[int] = []
        for size in self.dims:
            if size is None:
                break
            shape.append(size)
        self.buffer.resize(self.flushed, refcheck=False)
        return self.buffer.reshape(shape)


@dataclass
class _Frame:
    container: dict[str, Any] | list[Any]
    key: str | None = None


@dataclass
class Parsed:
    document: Any  # each named array's place holds an empty list
    arrays: dict[Path, np.ndarray]  # the named arrays read without error
    errors: list[dict[str, Any]] = field(default_factory=list)  # pydantic-style: type, loc, msg


class JsonArrayReader:
    """Feed bytes with :meth:`feed`, then :meth:`finish`. Not thread-safe; one document per reader."""

    def __init__(self, arrays: Mapping[Path, ArrayField], limits: JsonLimits = JsonLimits()) -> None:
        self.specs = dict(arrays)
        self.limits = limits
        self.values = 0
        self.events = sendable_list()
        self.parser = ijson.basic_parse_coro(self.events, use_float=True)
        self.frames: list[_Frame] = []
        self.sink: _Sink | None = None
        self.root: Any = None
        self.done = False
        self.received = 0
        self.arrays: dict[Path, np.ndarray] = {}
        self.errors: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        for start in range(0, len(data), SLICE):
            piece = data[start:start + SLICE]
            self.received += len(piece)
            try:
                self.parser.send(piece)
            except ijson.JSONError as error:
                self._take()  # the events before the fault say where it is
                raise self._malformed(error) from None
            self._take()

    def finish(self) -> Parsed:
        if not self.received:
            raise MalformedJson((), "empty body")
        try:
            self.parser.close()
        except ijson.JSONError as error:
            self._take()
            raise self._malformed(error) from None
        self._take()
        return Parsed(self.root, self.arrays, self.errors)

    # ------------------------------------------------------------------------------------------ events

    def _take(self) -> None:
        events, i = self.events, 0
        while i < len(events):
            if self.sink is not None:
                i = self.sink.consume(events, i)
                if self.sink.level == 0:
                    self._close_sink(self.sink)
                continue
            event, value = events[i]
            i += 1
            self._event(event, value)
        events.clear()

    def _event(self, event: str, value: Any) -> None:
        if event in ("map_key", "string") and len(value) > self.limits.max_string:
            what = "an object key" if event == "map_key" else "a string"
            raise MalformedJson(self._path(), f"{what} longer than {self.limits.max_string} characters",
                                at_value=True)
        if event == "map_key":
            self.frames[-1].key = value
        elif event == "start_array" and (spec := self.specs.get(self._keys())) is not None:
            self.sink = _Sink(self._keys(), spec, self.errors)
        elif event in ("start_map", "start_array"):
            if len(self.frames) >= self.limits.max_depth:
                raise MalformedJson(self._path(), f"nested deeper than {self.limits.max_depth} levels", at_value=True)
            container: dict[str, Any] | list[Any] = {} if event == "start_map" else []
            self._put(container)
            self.frames.append(_Frame(container))
        elif event in ("end_map", "end_array"):
            self.frames.pop()
            self.done = not self.frames
        else:
            self._put(value)

    def _put(self, value: Any) -> None:
        self.values += 1
        if self.values > self.limits.max_values:
            raise MalformedJson(self._path(), f"more than {self.limits.max_values} values in the document",
                                at_value=True)
        if not self.frames:
            self.root = value
            self.done = True
            return
        frame = self.frames[-1]
        if len(frame.container) >= self.limits.max_items:
            kind = "keys" if isinstance(frame.container, dict) else "items"
            raise MalformedJson(self._path()[:-1], f"more than {self.limits.max_items} {kind}", at_value=True)
        if isinstance(frame.container, dict):
            frame.container[frame.key or ""] = value
        else:
            frame.container.append(value)

    def _close_sink(self, sink: _Sink) -> None:
        self.sink = None
        self._put([])
        if sink.ok:
            self.arrays[sink.path] = sink.array()
        else:
            self.arrays.pop(sink.path, None)  # a repeated key: the last one counts, as with json.loads

    def _keys(self) -> Path:
        """The dict keys leading to the next value, or () when a list lies on the way (no named array there)."""
        keys: list[str] = []
        for frame in self.frames:
            if not isinstance(frame.container, dict) or frame.key is None:
                return ()
            keys.append(frame.key)
        return tuple(keys)

    def _path(self) -> Path:
        if self.sink is not None:
            return self.sink.where(max(self.sink.level, 1))
        path: list[str | int] = []
        for depth, frame in enumerate(self.frames, 1):
            if isinstance(frame.container, dict):
                if frame.key is None:
                    break
                path.append(frame.key)
            else:  # an open list holds its open child last; the innermost is at its next value
                path.append(len(frame.container) - (depth < len(self.frames)))
        return tuple(path)

    def _malformed(self, error: Exception) -> MalformedJson:
        text = str(error)
        if "UTF8" in text:
            return MalformedJson(self._path(), "invalid UTF-8 in a string", encoding=True)
        lines = text.split("\n")
        reason = lines[0].rstrip(".")
        caret = lines[2].find("^") if len(lines) > 2 else -1
        token = lines[1][caret - 1:caret] if caret > 0 else ""
        if reason.startswith("lexical error") and (token in ("N", "I") or "minus sign" in reason):
            return MalformedJson(self._path(), "not a JSON number (NaN and Infinity are not JSON): must be a finite "
                                               "number", at_value=True)
        if "overflow" in reason:
            finite = ": must be a finite number" if "floating point" in reason else ""
            return MalformedJson(self._path(), f"number out of range ({reason.removeprefix('parse error: ')}){finite}",
                                 at_value=True)
        if self.done and not self.frames:
            return MalformedJson((), f"{reason} after the document")
        return MalformedJson(self._path(), reason)
