"""The streaming JSON reader of certify bodies against the whole-body parse it replaces (json.loads + pydantic)."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from pydantic import StrictFloat, StrictInt, TypeAdapter, ValidationError

from services.gateway.certify_rest import INPUTS, LABELS, RAGGED, THETA, body_arrays
from services.gateway.json_arrays import MAX_DEPTH, JsonArrayReader, MalformedJson, Parsed, TooManyItems

PIXELS = TypeAdapter(list[list[list[list[StrictFloat]]]])
LABEL_LIST = TypeAdapter(list[StrictInt])


def read(text: str | bytes, chunk: int = 1 << 20, max_inputs: int = 10_000) -> Parsed:
    data = text.encode() if isinstance(text, str) else text
    reader = JsonArrayReader(body_arrays(max_inputs))
    for start in range(0, len(data), chunk):
        reader.feed(data[start:start + chunk])
    return reader.finish()


def body(inputs: Any, labels: Any = (0,), **fields: Any) -> str:
    return json.dumps({"model_id": "m", "inputs": inputs, "labels": list(labels), "eps": 0.1, **fields})


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_arrays_and_fields_equal_the_whole_parse(chunk: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((5, 2, 3, 4), dtype=np.float32).tolist()
    x[0][0][0][:3] = [0, 1, 1e-05]  # JSON integers and exponents are pixels too
    theta = (rng.standard_normal(50) * 1e3).tolist()
    text = json.dumps({"model": {"arch": "fc-1", "dataset": "digits", "theta": theta}, "inputs": x,
                       "labels": [3, 1, 4, 1, 5], "eps": 0.25, "relaxation": {"method": "alpha-crown", "steps": 3}},
                      indent=1)  # whitespace and newlines between every token
    parsed, whole = read(text, chunk), json.loads(text)
    assert not parsed.errors
    np.testing.assert_array_equal(parsed.arrays[INPUTS], np.asarray(whole["inputs"], dtype=np.float32))
    np.testing.assert_array_equal(parsed.arrays[LABELS], np.asarray(whole["labels"], dtype=np.int64))
    np.testing.assert_array_equal(parsed.arrays[THETA], np.asarray(theta, dtype=np.float32))
    assert parsed.arrays[INPUTS].dtype == np.float32 and parsed.arrays[LABELS].dtype == np.int64
    whole["inputs"], whole["labels"], whole["model"]["theta"] = [], [], []  # their places hold empty lists
    assert parsed.document == whole


@pytest.mark.parametrize("inputs", [[], [[]], [[[]]], [[[[]]]], [[[[0.5]]], [[[0.5]]]], [[[[0.5]]], [[]]],
                                    [[[[0.5, 0.5]]], [[[0.5]]]], [[[[0.5]], [[0.5]]], [[[0.5]]]], [[], [[[0.5]]]]])
def test_shapes_and_ragged_inputs_as_numpy_sees_them(inputs: list[Any]) -> None:
    parsed = read(body(inputs))
    try:
        expected = np.asarray(inputs, dtype=np.float32)
    except ValueError:  # numpy refuses ragged lists
        assert parsed.errors == [{"type": "value_error", "loc": ("inputs",), "msg": RAGGED}]
        assert INPUTS not in parsed.arrays
        return
    assert not parsed.errors and parsed.arrays[INPUTS].shape == expected.shape


def pydantic_errors(adapter: TypeAdapter[Any], value: Any, field: str) -> list[tuple[Any, str]]:
    with pytest.raises(ValidationError) as caught:
        adapter.validate_python(value)
    return [((field, *error["loc"]), error["msg"]) for error in caught.value.errors()]


@pytest.mark.parametrize("inputs", [
    [[[[0.5, "0.5", True, None]]]],  # strings, booleans and null are no numbers
    [[[0.5]]],  # too shallow: a number where a row belongs
    [[[[[0.5]]]]],  # too deep: a list where a number belongs
    [[[[0.5, {"a": [1, 2]}, 0.5]]], [[[0.5, 0.5, [0.5]]]]],  # an object, and errors in a later input
    "pixels", 0.5,  # not a list at all: pydantic's own error
    [[[["x"] * 30]]],  # more bad numbers than are reported
])
def test_bad_elements_get_pydantics_errors_at_the_same_place(inputs: Any) -> None:
    parsed = read(body(inputs))
    got = [(error["loc"], error["msg"]) for error in parsed.errors]
    if not isinstance(inputs, list):  # kept as it is in the document, for the model to judge
        assert not got and parsed.document["inputs"] == inputs
        return
    assert got == pydantic_errors(PIXELS, inputs, "inputs")[:20] and INPUTS not in parsed.arrays


def test_labels_and_theta_elements_are_judged_like_the_model_fields() -> None:
    parsed = read(body([[[[0.5]]]], labels=[0, 1.0, 0.5, "2", False], model={"theta": [0.5, "x", None]}))
    got = [(error["loc"], error["msg"]) for error in parsed.errors]
    number = "Input should be a valid number"
    assert got == pydantic_errors(LABEL_LIST, [0, 1.0, 0.5, "2", False], "labels") + [
        (("model", "theta", 1), number), (("model", "theta", 2), number)]
    assert set(parsed.arrays) == {INPUTS}


@pytest.mark.parametrize(("text", "path", "reason"), [
    ('{"inputs": [[[[0.5, NaN]]]]}', ("inputs", 0, 0, 0, 1), "finite"),
    ('{"inputs": [[[[0.5]], [[Infinity]]]]}', ("inputs", 0, 1, 0, 0), "finite"),
    ('{"eps": -Infinity}', ("eps",), "finite"),
    ('{"inputs": [[[[1e999]]]]}', ("inputs", 0, 0, 0, 0), "finite"),
    ('{"labels": [0, 99999999999999999999999]}', ("labels", 1), "out of range"),
    ('{"relaxation": ' + "[" * (MAX_DEPTH + 1), ("relaxation",) + (0,) * (MAX_DEPTH - 1), "nested deeper"),
])
def test_values_json_cannot_hold_are_named_where_they_are(text: str, path: tuple[Any, ...], reason: str) -> None:
    for chunk in (3, 1 << 20):
        with pytest.raises(MalformedJson) as caught:
            read(text, chunk)
        assert caught.value.at_value and caught.value.path == path and reason in caught.value.reason


def test_every_truncation_of_a_body_is_malformed_json() -> None:
    text = body([[[[0.5, 1]], [[0.25, 0]]]], labels=[1], relaxation={"method": "ibp"})
    for end in range(len(text)):
        with pytest.raises(MalformedJson) as caught:
            read(text[:end], chunk=5)
        assert not caught.value.at_value and not caught.value.encoding, (end, caught.value.reason)
    with pytest.raises(MalformedJson, match="premature EOF") as caught:
        read('{"inputs": [[[[0.5, 0.25')
    assert caught.value.path == ("inputs", 0, 0, 0, 2)
    for bad in ('{"inputs": [[[[0.5,, 1]]]]}', '{"eps": 0.1} {"eps": 0.2}', '{"eps" 0.1}', "[1, 2]]"):
        with pytest.raises(MalformedJson):
            read(bad)


def test_invalid_utf8_is_an_encoding_error() -> None:
    with pytest.raises(MalformedJson) as caught:
        read(b'{"model_id": "\xff\xfe"}')
    assert caught.value.encoding and caught.value.path == ("model_id",)


def test_reading_stops_at_the_first_input_over_the_limit() -> None:
    reader = JsonArrayReader(body_arrays(3))
    reader.feed(b'{"inputs": [[[[0.5]]], [[[0.5]]], [[[0.5]]], ')
    with pytest.raises(TooManyItems) as caught:
        reader.feed(b'[[[0.5]]], ')  # the body goes on; nothing more is read
    assert caught.value.path == INPUTS and caught.value.limit == 3
    with pytest.raises(TooManyItems) as caught:
        read(body([[[[0.5]]]], labels=[0] * 4), max_inputs=3)
    assert caught.value.path == LABELS


def test_memory_is_the_decoded_array_not_the_python_lists() -> None:
    """tracemalloc's peak while a ~5 MiB body is read in 64 KiB pieces: the float32 array (with its growth room)
    and one piece's events, where json.loads alone would hold several times the text."""
    rng = np.random.default_rng(1)
    data = body(rng.random((4000, 1, 8, 8), dtype=np.float32).tolist(), labels=[0] * 4000).encode()
    decoded = 4000 * 64 * 4
    tracemalloc.start()
    try:
        reader = JsonArrayReader(body_arrays(10_000))
        for start in range(0, len(data), 1 << 16):
            reader.feed(data[start:start + (1 << 16)])
        parsed = reader.finish()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        json.loads(data)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.arrays[INPUTS].shape == (4000, 1, 8, 8) and len(data) > 4 * 2**20
    assert peak < 2 * decoded + 2**20, (peak, decoded)
    assert whole_peak > 4 * peak, (whole_peak, peak)
