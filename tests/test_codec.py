"""services.codec: exact round trips between gls_core objects and gls.v1 messages, and every rejection."""

from __future__ import annotations

import math

import pytest
import torch

import gls_core
from gls_core.nets.spec import Conv2d, Flatten, Linear, NetSpec, Normalize, ReLU
from gls_core.nets.zoo import ARCHITECTURES
from gls_core.relaxations import names
from gls_core.training.estimators import Proposal
from gls_core.training.objective import Objective
from services import codec
from services.proto.gls.v1 import bound_worker_pb2, common_pb2

# ------------------------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("tensor", [
    torch.randn(3, 4),
    torch.randn(2, 3, dtype=torch.float64),
    torch.tensor([-(2**62), 0, 7], dtype=torch.int64),
    torch.arange(256, dtype=torch.uint8).view(16, 16),
    torch.tensor([[True, False], [False, True]]),
    torch.tensor(1.5),              # 0-d
    torch.empty(0, 5),              # empty
    torch.randn(4, 6).t(),          # not contiguous
], ids=["f32", "f64", "i64", "u8", "bool", "scalar", "empty", "transposed"])
def test_tensor_round_trip_is_exact(tensor: torch.Tensor) -> None:
    message = codec.tensor_to_proto(tensor)
    back = codec.tensor_from_proto(message)
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)
    assert back.numpy().flags.writeable  # the decoded tensor owns its memory: safe to modify in place


def test_tensor_bytes_are_little_endian_row_major() -> None:
    message = codec.tensor_to_proto(torch.tensor([[1.0, 2.0]], dtype=torch.float32))
    assert message.dtype == "float32" and list(message.shape) == [1, 2]
    assert message.data == b"\x00\x00\x80\x3f\x00\x00\x00\x40"


def test_encoding_rejects_unsupported_dtypes() -> None:
    with pytest.raises(ValueError, match="torch.float16 is not one of"):
        codec.tensor_to_proto(torch.zeros(2, dtype=torch.float16))


@pytest.mark.parametrize(("message", "match"), [
    (common_pb2.Tensor(dtype="float16", shape=[1], data=b"\0\0"), r"inputs\.dtype: 'float16' is not one of"),
    (common_pb2.Tensor(dtype="float32", shape=[2, -1], data=b""), r"inputs\.shape: \[2, -1\] has a negative"),
    (common_pb2.Tensor(dtype="float32", shape=[1] * 9, data=b"\0" * 4), "inputs.shape: has 9 dimensions"),
    (common_pb2.Tensor(dtype="float32", shape=[3], data=b"\0" * 8), "inputs.data: has 8 bytes, shape .3. of float32 "
                                                                     "needs 12"),
    (common_pb2.Tensor(dtype="bool", shape=[2], data=b"\x01\x02"), "inputs.data: is bool but holds bytes other than"),
    (common_pb2.Tensor(dtype="float32", shape=[1 << 20, 1 << 20], data=b""),
     "inputs.shape: has 1099511627776 elements"),
])
def test_tensor_decoding_errors_name_the_field(message: common_pb2.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.tensor_from_proto(message, "inputs")


def test_decoding_restricts_dtypes_and_element_count() -> None:
    message = codec.tensor_to_proto(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels.dtype: must be int64, got float64"):
        codec.tensor_from_proto(message, "labels", dtypes=("int64",))
    with pytest.raises(ValueError, match="more than the limit of 3"):
        codec.tensor_from_proto(message, "x", max_elements=3)


def test_content_hash_covers_dtype_shape_and_bytes() -> None:
    base = codec.tensor_to_proto(torch.arange(6, dtype=torch.float32))
    same = codec.tensor_to_proto(torch.arange(6, dtype=torch.float32))
    reshaped = codec.tensor_to_proto(torch.arange(6, dtype=torch.float32).view(2, 3))
    as_int = common_pb2.Tensor(dtype="int64", shape=[3], data=base.data)
    other = codec.tensor_to_proto(torch.arange(1, 7, dtype=torch.float32))
    hashes = {codec.content_hash(m) for m in (base, reshaped, as_int, other)}
    assert codec.content_hash(base) == codec.content_hash(same)
    assert len(hashes) == 4 and all(codec.SHA256_HEX.match(h) for h in hashes)


# ----------------------------------------------------------------------------------------- net specs


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "digits"])
@pytest.mark.parametrize("arch", [*sorted(ARCHITECTURES), "fc-16", "fc-32x16"])
def test_spec_round_trip_is_exact(arch: str, dataset: str) -> None:
    spec = gls_core.network(arch, dataset)
    back = codec.spec_from_proto(codec.spec_to_proto(spec))
    assert back == spec and back.num_params == spec.num_params and back.name == spec.name


def test_normalize_constants_survive_float32_on_the_wire() -> None:
    spec = NetSpec((3, 4, 4), (Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)), Flatten(),
                               Linear(48, 10)), name="n")
    assert codec.spec_from_proto(codec.spec_to_proto(spec)) == spec


def _layers(*layers: common_pb2.Layer) -> list[common_pb2.Layer]:
    return list(layers)


LINEAR = common_pb2.Layer(linear=common_pb2.Linear(in_features=4, out_features=2))


@pytest.mark.parametrize(("message", "match"), [
    (common_pb2.NetSpec(input_shape=[4]), "spec.layers: is empty"),
    (common_pb2.NetSpec(input_shape=[4], layers=[common_pb2.Layer()]), r"spec.layers\[0\]: has no layer kind"),
    (common_pb2.NetSpec(input_shape=[4, 4], layers=[LINEAR]), r"spec.input_shape: must be \(C, H, W\) or \(N,\)"),
    (common_pb2.NetSpec(input_shape=[0], layers=[LINEAR]), "spec.input_shape"),
    (common_pb2.NetSpec(input_shape=[5], layers=[LINEAR]), r"spec: layer 0: Linear expects \(4,\), input is \(5,\)"),
    (common_pb2.NetSpec(input_shape=[4], layers=[common_pb2.Layer(relu=common_pb2.ReLU())]),
     "spec: a network needs at least one Conv2d or Linear layer"),
    (common_pb2.NetSpec(input_shape=[1, 4, 4], layers=[common_pb2.Layer(
        conv2d=common_pb2.Conv2d(in_channels=1, out_channels=2, kernel=3, stride=0))]), "Conv2d needs positive"),
    (common_pb2.NetSpec(input_shape=[1, 4, 4], layers=[common_pb2.Layer(
        conv2d=common_pb2.Conv2d(in_channels=1, out_channels=2, kernel=9, stride=1))]), "Conv2d output is empty"),
    (common_pb2.NetSpec(input_shape=[1, 4, 4], layers=[common_pb2.Layer(
        conv2d=common_pb2.Conv2d(in_channels=1, out_channels=4096, kernel=1, stride=1, padding=1000))]),
     "is larger than 16777216 elements"),
    (common_pb2.NetSpec(input_shape=[4], layers=[common_pb2.Layer(linear=common_pb2.Linear(in_features=4))]),
     "Linear needs positive features"),
    (common_pb2.NetSpec(input_shape=[2, 4, 4], layers=[
        common_pb2.Layer(normalize=common_pb2.Normalize(mean=[0.5], std=[0.5])), LINEAR]),
     "spec: layer 0: Normalize needs one mean/std per channel"),
    (common_pb2.NetSpec(input_shape=[1, 2, 2], layers=[
        common_pb2.Layer(normalize=common_pb2.Normalize(mean=[0.5], std=[0.0])), LINEAR]),
     "Normalize std must be at least"),
])
def test_invalid_specs_are_rejected_with_netspecs_reason(message: common_pb2.NetSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.spec_from_proto(message)


def test_spec_to_proto_writes_every_layer_kind() -> None:
    spec = NetSpec((1, 6, 6), (Normalize((0.5,), (0.25,)), Conv2d(1, 2, 3, 1, 1), ReLU(), Flatten(),
                               Linear(72, 3)), name="all")
    kinds = [layer.WhichOneof("kind") for layer in codec.spec_to_proto(spec).layers]
    assert kinds == ["normalize", "conv2d", "relu", "flatten", "linear"]


# --------------------------------------------------------------------------------------- relaxations


@pytest.mark.parametrize(("method", "options"), [
    *((m, {}) for m in sorted(names())),
    ("alpha-crown", {"steps": 3, "step_size": 0.1, "init": "deeppoly"}),
    ("alpha-crown", {"steps": 0, "step_size": 0.0, "init": 0.3}),
    ("alpha-crown", {"steps": 1, "step_size": 0.5, "init": 0.5}),
])
def test_relaxation_round_trip(method: str, options: dict[str, object]) -> None:
    assert codec.relaxation_from_proto(codec.relaxation_to_proto(method, options)) == (method, options)


def test_alpha_fields_are_ignored_by_other_methods_and_init_deeppoly_maps() -> None:
    message = common_pb2.Relaxation(method="ibp", alpha_steps=3, alpha_init=0.2)
    assert codec.relaxation_from_proto(message) == ("ibp", {})
    message = common_pb2.Relaxation(method="alpha-crown", alpha_steps=2, alpha_init_deeppoly=True)
    assert codec.relaxation_from_proto(message) == ("alpha-crown", {"steps": 2, "step_size": 0.0, "init": "deeppoly"})
    partial = codec.relaxation_to_proto("alpha-crown", {"steps": 4})
    assert codec.relaxation_from_proto(partial)[1] == {"steps": 4, "step_size": 0.5, "init": 0.5}


@pytest.mark.parametrize(("message", "match"), [
    (common_pb2.Relaxation(method="zonotope"), "relaxation.method: unknown relaxation 'zonotope'; expected "
                                               "one of alpha-crown, crown, crown-ibp, deeppoly, hbox, ibp"),
    (common_pb2.Relaxation(), "relaxation.method: is empty"),
    (common_pb2.Relaxation(method="alpha-crown", alpha_steps=-1),
     r"relaxation.alpha_steps: must be an integer in \[0, 1000\]"),
    (common_pb2.Relaxation(method="alpha-crown", alpha_steps=1, alpha_step_size=-0.5), "alpha_step_size"),
    (common_pb2.Relaxation(method="alpha-crown", alpha_steps=1, alpha_step_size=math.nan), "alpha_step_size"),
    (common_pb2.Relaxation(method="alpha-crown", alpha_init=1.5),
     r"relaxation.alpha_init: must be 'deeppoly' or a number in \[0, 1\]"),
])
def test_invalid_relaxations(message: common_pb2.Relaxation, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.relaxation_from_proto(message)


@pytest.mark.parametrize(("method", "options", "match"), [
    ("zonotope", {}, "method: unknown relaxation 'zonotope'"),
    ("deeppoly", {"steps": 2}, "only apply to alpha-crown, not deeppoly"),
    ("alpha-crown", {"iterations": 2}, "unknown"),
    ("alpha-crown", {"steps": 0, "step_size": 0.0, "init": 0.0}, "not representable"),
])
def test_relaxation_encoding_errors(method: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.relaxation_to_proto(method, options)


# ---------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("objective", [
    Objective("standard"),
    Objective("adversarial", pgd_steps=5, pgd_step_size=0.1, pgd_restarts=2),
    *(Objective("certified", m) for m in sorted(names())),
    Objective("certified", "alpha-crown", {"steps": 1, "step_size": 0.5, "init": 0.5}),
], ids=lambda o: f"{o.kind}-{o.method}")
def test_objective_round_trip_is_exact(objective: Objective) -> None:
    assert codec.objective_from_proto(codec.objective_to_proto(objective)) == objective


@pytest.mark.parametrize(("message", "match"), [
    (bound_worker_pb2.Objective(), "objective.kind: must be STANDARD, ADVERSARIAL or CERTIFIED"),
    (bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.CERTIFIED), "objective.relaxation: is required"),
    (bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.CERTIFIED,
                                relaxation=common_pb2.Relaxation(method="box")),
     "objective.relaxation.method: unknown relaxation 'box'"),
    (bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.STANDARD,
                                relaxation=common_pb2.Relaxation(method="ibp")), "only a CERTIFIED objective"),
    (bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.ADVERSARIAL, pgd_steps=3),
     r"objective.pgd_restarts: must be an integer in \[1, 100\]"),
    (bound_worker_pb2.Objective(kind=bound_worker_pb2.Objective.ADVERSARIAL, pgd_steps=3, pgd_restarts=1,
                                pgd_step_size=-1), "objective.pgd_step_size: must be finite"),
])
def test_invalid_objectives(message: bound_worker_pb2.Objective, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.objective_from_proto(message)


# ----------------------------------------------------------------------------------------- proposals


@pytest.mark.parametrize("symmetric", [True, False])
def test_proposal_round_trip_regenerates_the_same_points(symmetric: bool) -> None:
    theta = torch.randn(20)
    proposal = Proposal(step=11, seed=2**40 + 3, centre=theta, sigma=torch.full_like(theta, 0.1), count=6,
                        symmetric=symmetric, needs_grads=not symmetric)
    request = bound_worker_pb2.PointsRequest(**codec.proposal_fields(proposal))
    back = codec.proposal_from_request(request, theta, proposal.sigma)
    assert (back.step, back.seed, back.count, back.symmetric, back.needs_grads) == (
        proposal.step, proposal.seed, proposal.count, proposal.symmetric, proposal.needs_grads)
    assert torch.equal(back.points(2, 5), proposal.points(2, 5))


def test_proposal_wire_limits() -> None:
    theta = torch.zeros(3)
    proposal = Proposal(step=0, seed=-1, centre=theta, sigma=theta, count=2, symmetric=True, needs_grads=False)
    with pytest.raises(ValueError, match="seed: must be an integer >= 0"):
        codec.proposal_fields(proposal)
    with pytest.raises(ValueError, match="count: must be even for symmetric pairs, got 3"):
        codec.proposal_from_request(bound_worker_pb2.PointsRequest(count=3, symmetric=True), theta, theta)
