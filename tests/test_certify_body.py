"""``POST /v1/certify`` bodies read as they arrive: the same verdicts as a whole-body parse, and every bad
body answered 4xx naming the field, against a real gateway, Redis and bound worker on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from test_gateway_support import ALICE, Stack, digits_model, digits_test, start_stack, upload_digits_model

from bench.hostile_bodies import send_partial
from gls_core.evaluation import certify

EPS = 0.02
MAX_INPUTS = 50
MAX_BODY_MB = 1


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("redis"), workers=1, certify_max_inputs=MAX_INPUTS,
                          certify_max_body_mb=MAX_BODY_MB)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def model_id(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_digits_model(stack, tmp_path_factory.mktemp("model"))


def post(stack: Stack, content: bytes | Iterator[bytes], token: str | None = ALICE,
         content_type: str = "application/json") -> tuple[int, Any]:
    with stack.http(token) as client:
        response = client.post("/v1/certify", content=content, headers={"Content-Type": content_type})
    return response.status_code, response.json()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    """The body in small pieces: httpx sends them chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start:start + size]


def fields(answer: dict[str, Any]) -> dict[str, str]:
    detail = answer["detail"]
    return {item["field"]: item["msg"] for item in detail} if isinstance(detail, list) else {"": detail}


def test_a_streamed_body_gives_the_verdicts_of_the_whole_parse(stack: Stack, model_id: str) -> None:
    x, y = digits_test(40)
    text = json.dumps({"model_id": model_id, "inputs": x.tolist(), "labels": y.tolist(), "eps": EPS,
                       "relaxation": "deeppoly"}).encode()
    whole = json.loads(text)  # the previous path: a Python tree, then numpy
    x_whole = torch.from_numpy(np.asarray(whole["inputs"], dtype=np.float32))
    y_whole = torch.from_numpy(np.asarray(whole["labels"], dtype=np.int64))
    spec, theta = digits_model()
    expected = certify(spec, theta, x_whole, y_whole, EPS, "deeppoly")
    with stack.certifier() as client:  # the gRPC Certifier takes the tensors themselves, no JSON
        unary = client.certify(x_whole, y_whole, EPS, "deeppoly", model_id=model_id)
    status, at_once = post(stack, text)
    assert status == 200, at_once
    status, chunked = post(stack, pieces(text, 97))
    assert status == 200 and chunked == at_once
    assert at_once["verdicts"] == unary["verdicts"]  # the same float32 inputs: the same numbers, bit for bit
    assert (at_once["total"], at_once["method"], at_once["eps"]) == (40, "deeppoly", EPS)
    assert [v["certified"] for v in at_once["verdicts"]] == expected.tolist()
    assert at_once["certified"] == int(expected.sum()) and 0 < at_once["certified"] < 40


def test_malformed_bodies_get_4xx_naming_the_field(stack: Stack, model_id: str) -> None:
    x, y = digits_test(4)
    good = {"model_id": model_id, "inputs": x.tolist(), "labels": y.tolist(), "eps": EPS}
    text = json.dumps(good)
    nested = json.loads(text)
    nested["inputs"][1][0][2] = 0.5  # a number where a row of pixels belongs
    words = json.loads(text)
    words["inputs"][2][0][3][1] = "0.5"
    marked = json.loads(text)
    marked["inputs"][3][0][7][7] = 0.123456  # to become NaN
    cases: list[tuple[bytes, int, str, str]] = [
        (text[:len(text) // 2].encode(), 422, "body", "malformed JSON in inputs."),
        (json.dumps(nested).encode(), 422, "inputs.1.0.2", "valid list"),
        (json.dumps(words).encode(), 422, "inputs.2.0.3.1", "valid number"),
        (json.dumps(marked).replace("0.123456", "NaN").encode(), 422, "inputs.3.0.7.7", "finite"),
        (json.dumps({**good, "inputs": [good["inputs"][0]] * (MAX_INPUTS + 1)}).encode(), 413, "inputs",
         f"limit of {MAX_INPUTS}"),
        (json.dumps({**good, "labels": [0] * (MAX_INPUTS + 1)}).encode(), 413, "labels", f"limit of {MAX_INPUTS}"),
        (text.replace('"eps"', '"eps": 0.1, "colour"').encode(), 422, "colour", "unknown field"),
        (text.replace(model_id, model_id + "\udcff", 1).encode("utf-8", "surrogateescape"), 400, "",
         "not UTF-8"),
        (b"", 422, "body", "Field required"),
    ]
    for content, status, field, reason in cases:
        for sent in (content, pieces(content, 1000)):
            code, answer = post(stack, sent)
            assert code == status and reason in fields(answer).get(field, ""), (field, code, answer)
    code, answer = post(stack, text.encode(), content_type="text/plain")
    assert code == 422 and "Content-Type" in fields(answer)["body"]
    assert post(stack, b'{"inputs": [[[[NaN', token=None)[0] == 401  # the token is checked before the body
    assert post(stack, text.encode())[0] == 200  # still serving


def raw_request(stack: Stack, head: str, body: bytes) -> tuple[int, bytes]:
    """Send the head and part of a body on a plain socket, then read the answer without sending the rest: a
    server that waited for the rest would time out here."""
    return send_partial(stack.url, head, body, timeout=30)


def test_a_body_over_the_cap_is_refused_before_the_rest_is_read(stack: Stack, model_id: str) -> None:
    limit = MAX_BODY_MB * 2**20
    start = b'{"model_id": "%s", "inputs": [' % model_id.encode()
    head = (f"POST /v1/certify HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ALICE}\r\n"
            "Content-Type: application/json\r\n")
    status, answer = raw_request(stack, head + f"Content-Length: {limit + 1}\r\n", start)
    assert status == 413 and b"GLS_CERTIFY_MAX_BODY_MB" in answer, answer
    row = b"[[[" + b",".join([b"0.5"] * 8) + b"]]],"
    chunk = row * (2**16 // len(row))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in [start] + [chunk] * (limit // len(chunk) + 1))  # no last chunk: the body goes on
    status, answer = raw_request(stack, head + "Transfer-Encoding: chunked\r\n", chunks)
    assert status == 413 and b"GLS_CERTIFY_MAX_BODY_MB" in answer, answer
    x, y = digits_test(2)
    assert post(stack, json.dumps({"model_id": model_id, "inputs": x.tolist(), "labels": y.tolist(),
                                   "eps": EPS}).encode())[0] == 200
