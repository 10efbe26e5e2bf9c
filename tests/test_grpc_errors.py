"""services.grpc_errors on a real gRPC server: each failure's code, reason and field violations, and that a
ValueError which is no InvalidInput (a bug) is INTERNAL with an incident id and nothing of its text."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from gls_core.errors import InvalidInput
from services.errors import InvalidRequest, NotFoundError
from services.grpc_errors import MissingBlobError, SlotTimeout, abort, status_for
from services.rich_status import error_info, field_violations

FAILURES: dict[str, Callable[[], Exception]] = {
    "invalid": lambda: InvalidInput("perturbation.eps", "must be finite and >= 0, got -1.0", -1.0),
    "several": lambda: InvalidRequest([("inputs", "contains NaN or inf"), ("labels.3", "label 12 is not a class")]),
    "bug": lambda: ValueError("secret internals: x must be positive"),
    "missing": lambda: MissingBlobError("ab" * 32),
    "slot": lambda: SlotTimeout(),
    "not found": lambda: NotFoundError("model", "model-1"),
}


@pytest.fixture(scope="module")
def call() -> Iterator[Callable[[str], grpc.RpcError]]:
    """A real server whose one method fails with FAILURES[payload], mapped by grpc_errors; and a real client."""
    def fail(payload: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            raise FAILURES[payload.decode()]()
        except Exception as error:
            abort(context, status_for(error, "Fail"))

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.method_handlers_generic_handler("test.Errors", {"Fail": grpc.unary_unary_rpc_method_handler(fail)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    method = channel.unary_unary("/test.Errors/Fail", request_serializer=None, response_deserializer=None)

    def failing(name: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raised:
            method(name.encode(), timeout=10)
        return raised.value

    yield failing
    channel.close()
    server.stop(None)


def test_invalid_input_is_invalid_argument_with_its_field(call: Callable[[str], grpc.RpcError]) -> None:
    error = call("invalid")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "perturbation.eps: must be finite and >= 0, got -1.0"
    assert error_info(error) == ("INVALID_REQUEST", {})
    assert field_violations(error) == [("perturbation.eps", "must be finite and >= 0, got -1.0")]
    several = call("several")
    assert several.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(several) == [("inputs", "contains NaN or inf"), ("labels.3", "label 12 is not a class")]


def test_a_bare_value_error_is_internal_with_an_incident_id(call: Callable[[str], grpc.RpcError],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="services.grpc"):
        error = call("bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details() or ""
    found = re.fullmatch(r"Fail failed: internal error \(incident ([0-9a-f]{12}); the server's log has the details\)",
                         details)
    assert found is not None and "secret" not in details, details
    assert error_info(error) == ("INTERNAL_ERROR", {"incident": found.group(1)})
    assert field_violations(error) == []
    logged = [record for record in caplog.records if found.group(1) in record.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret internals" in str(logged[0].exc_info[1])


def test_the_other_expected_failures(call: Callable[[str], grpc.RpcError]) -> None:
    missing = call("missing")
    assert missing.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(missing) == ("MISSING_BLOB", {"sha256": "ab" * 32})
    slot = call("slot")
    assert slot.code() == grpc.StatusCode.DEADLINE_EXCEEDED and error_info(slot) == ("NO_COMPUTE_SLOT", {})
    absent = call("not found")
    assert absent.code() == grpc.StatusCode.NOT_FOUND and absent.details() == "model 'model-1' not found"
