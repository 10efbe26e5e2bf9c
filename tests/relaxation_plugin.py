"""A relaxation registered from outside the package: IBP under another name, with one option.

Run as a script (tests/test_relaxation_registry.py does, in a fresh process, so that the record is
registered before anything reads the registry, as a record in gls_core/relaxations.py would be), it
checks that every entry point accepts the method, validates its option and applies its defaults:
`gls evaluate`, a training config, REST certify, the gRPC Certifier and a bound worker.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gls_core.bounds.backsub import Sides
from gls_core.bounds.methods import ibp_bounds
from gls_core.bounds.types import Box
from gls_core.nets.spec import NetSpec
from gls_core.relaxations import Relaxation, option, register

NAME = "ibp-again"
SEEN: list[int] = []
"""The ``passes`` each call received: which default or value reached the bound function."""


@dataclass(frozen=True)
class IbpAgainOptions:
    passes: int = option(2, "times the intervals are propagated (each pass gives the same bounds)", minimum=1,
                         maximum=5)


def ibp_again_bounds(spec: NetSpec, params: torch.Tensor, input_box: Box, C: torch.Tensor | None,
                     sides: Sides = "both", *, passes: int) -> Box:
    SEEN.append(passes)
    return ibp_bounds(spec, params, input_box, C, sides)


register(Relaxation(NAME, f"{__name__}:ibp_again_bounds", True, "IBP, once more", IbpAgainOptions,
                    evaluation={"passes": 3}, footprint="activations"))


def seen_since(mark: int) -> set[int]:
    return set(SEEN[mark:])


def check_evaluate(folder: Path) -> None:
    from cli_runner import run_cli
    from test_gateway_support import digits_model

    from gls_core.training.checkpoint import save_model

    _, theta = digits_model()
    model = folder / "model.safetensors"
    save_model(model, theta, "fc-16", "digits")
    common = ("evaluate", str(model), "--eps", "0.01", "--limit", "20", "--pgd-steps", "1", "--pgd-restarts", "1",
              "--method", NAME, "--json")
    for extra, passes in (((), 3), (("--option", "passes=4"), 4)):
        mark = len(SEEN)
        ran = run_cli(*common, *extra)
        assert ran.returncode == 0, ran.stderr
        assert seen_since(mark) == {passes}, (extra, SEEN[mark:])
    ran = run_cli(*common, "--option", "passes=9")
    assert ran.returncode == 2 and "--option.passes" in ran.stderr, ran.stderr


def check_config() -> None:
    from gls_core.training.config import ConfigError, parse_config
    from gls_core.training.stages import build_stages

    default = parse_config({"relaxation": NAME, "estimator": "grad"})
    assert default.relaxation_options() == {"passes": 2}
    chosen = parse_config({"relaxation": NAME, "estimator": "rgs", NAME: {"passes": 5}})
    assert build_stages(chosen, 1)[-1].objective.options == {"passes": 5}
    try:
        parse_config({"relaxation": NAME, NAME: {"passes": 0}})
    except ConfigError as error:
        assert f"{NAME}.passes" in str(error), error
    else:
        raise AssertionError("passes 0 was accepted")


def check_services(folder: Path) -> None:
    import grpc
    from test_gateway_support import ALICE, digits_model, digits_test, start_stack

    from gls_core.bounds.api import compute_bounds, margin_spec
    from services.client import CertifierClient
    from services.codec import relaxation_to_proto, spec_to_proto, tensor_to_proto
    from services.proto.gls.v1 import bound_worker_pb2

    spec, theta = digits_model()
    x, y = digits_test(8)
    with torch.no_grad():
        _, expected = compute_bounds(spec, x, 0.02, "ibp", C=margin_spec(y, 10), params=theta)
    stack = start_stack(folder / "redis", workers=1)
    try:
        inline = {"arch": "fc-16", "dataset": "digits", "theta": theta.tolist()}
        for options, passes in (({}, 3), ({"passes": 4}, 4)):  # REST: evaluation's default, or the option
            mark = len(SEEN)
            answer = stack.client().certify(x, y, 0.02, NAME, model=inline, options=options)
            assert seen_since(mark) == {passes}, (options, SEEN[mark:])
            torch.testing.assert_close(torch.tensor([v["margin_upper"] for v in answer["verdicts"]]), expected)
        refused = stack.http(ALICE).post("/v1/certify", json={
            "model": inline, "inputs": x.tolist(), "labels": y.tolist(), "eps": 0.02,
            "relaxation": {"method": NAME, "passes": 9}})
        assert refused.status_code == 422 and "relaxation.passes" in refused.text, refused.text

        with stack.certifier() as client:  # the gRPC Certifier: the option travels in Relaxation.options
            for options, passes in (({}, 3), ({"passes": 5}, 5)):
                mark = len(SEEN)
                answer = client.certify(x, y, 0.02, NAME, inline=(spec, theta), options=options)
                assert seen_since(mark) == {passes}, (options, SEEN[mark:])
            request = CertifierClient.request(x, y, 0.02, NAME, inline=(spec, theta))
            request.relaxation.options["passes"] = "9"
            try:
                client._certify(request, metadata=client.metadata, timeout=60)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert "relaxation.options.passes" in (error.details() or ""), error.details()
            else:
                raise AssertionError("the Certifier accepted passes 9")

        worker = stack.workers[0]  # a worker on its own: no options is the training default
        channel = grpc.insecure_channel(worker.address)
        bounds = channel.unary_unary("/gls.v1.BoundWorker/Bounds",
                                     request_serializer=bound_worker_pb2.BoundsRequest.SerializeToString,
                                     response_deserializer=bound_worker_pb2.BoundsResponse.FromString)
        request_w = bound_worker_pb2.BoundsRequest()
        request_w.perturbation.eps = 0.02
        spec_to_proto(spec, out=request_w.spec)
        tensor_to_proto(theta.unsqueeze(0), out=request_w.params.tensor)
        tensor_to_proto(x, out=request_w.inputs.tensor)
        relaxation_to_proto(NAME, out=request_w.relaxation)
        metadata = worker_metadata(stack)
        for passes in (None, 4, 7):
            if passes is not None:
                request_w.relaxation.options["passes"] = str(passes)
            mark = len(SEEN)
            try:
                bounds(request_w, metadata=metadata, timeout=60)
            except grpc.RpcError as error:
                assert passes == 7 and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert "relaxation.options.passes" in (error.details() or ""), error.details()
            else:
                assert seen_since(mark) == {passes or 2}, (passes, SEEN[mark:])
        channel.close()
    finally:
        stack.stop()


def worker_metadata(stack: Any) -> tuple[tuple[str, str], ...]:
    token = stack.settings.worker_token
    return (("authorization", f"Bearer {token}"),) if token else ()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        check_evaluate(folder)
        check_config()
        check_services(folder)
    print("ok")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
