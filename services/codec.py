"""Conversions between gls_core objects and the gls.v1 wire messages, with the validation a server needs.

Every decoder raises :class:`~gls_core.errors.InvalidInput` naming the field it is about (a path in
the message: ``spec.layers[2]``, ``relaxation.alpha_steps``), so a server maps it to INVALID_ARGUMENT
with that field; a caller decoding a nested message re-roots the path with ``error.within(...)``.
Tensors travel as little-endian row-major bytes: encoding is
one copy (``tobytes``), decoding one copy out of the message (the tensor must own writable memory).

Floats that the protos declare as ``float`` (32 bit: Normalize constants, alpha-CROWN and PGD step
sizes) are decoded to the shortest decimal that round-trips through float32, so a value written as
a short decimal (0.1, 0.4914, ...) comes back as exactly the same Python float. This keeps the
worker's arithmetic bit-identical to the in-process trainer's without changing the wire contract.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from google.protobuf.descriptor import FieldDescriptor

from gls_core import relaxations
from gls_core.errors import InvalidInput
from gls_core.evaluation import COMPLETE
from gls_core.nets.spec import Conv2d, Flatten, Layer, Linear, NetSpec, Normalize, ReLU
from gls_core.training.estimators import Proposal
from gls_core.training.objective import LossKind, Objective
from gls_core.validation import check_count, check_radius

from .proto.gls.v1 import bound_worker_pb2, common_pb2

MAX_ELEMENTS = 1 << 31
"""Largest tensor accepted from the wire (elements); the message size limit usually bites first."""
MAX_DIMS = 8
MAX_LAYERS = 256
MAX_NAME = 256
"""Characters of a NetSpec name (zoo names are like ``cnn3-tiny-digits``)."""
MAX_ACTIVATION = 1 << 24
"""Largest activation per input (elements) a decoded spec may produce, so a spec cannot ask for absurd memory."""
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

DTYPES: dict[str, tuple[np.dtype[Any], torch.dtype]] = {
    "float32": (np.dtype("<f4"), torch.float32),
    "float64": (np.dtype("<f8"), torch.float64),
    "int64": (np.dtype("<i8"), torch.int64),
    "uint8": (np.dtype("u1"), torch.uint8),
    "bool": (np.dtype("?"), torch.bool),
}
_NAMES = {torch_dtype: name for name, (_, torch_dtype) in DTYPES.items()}

_KIND_NAMES: dict[int, LossKind] = {bound_worker_pb2.Objective.STANDARD: "standard",
                                    bound_worker_pb2.Objective.ADVERSARIAL: "adversarial",
                                    bound_worker_pb2.Objective.CERTIFIED: "certified"}
_KINDS = {name: value for value, name in _KIND_NAMES.items()}


# --------------------------------------------------------------------------------------------- tensors

def tensor_to_proto(tensor: torch.Tensor, out: common_pb2.Tensor | None = None) -> common_pb2.Tensor:
    """Encode a tensor (any device) as dtype, shape and little-endian bytes."""
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise InvalidInput("tensor", f"dtype {tensor.dtype} is not one of {', '.join(DTYPES)}")
    array = tensor.detach().cpu().contiguous().numpy()
    data = array.astype(DTYPES[name][0], copy=False).tobytes()  # no conversion on little-endian hosts
    message = common_pb2.Tensor() if out is None else out
    message.dtype = name
    message.shape[:] = tensor.shape
    message.data = data
    return message


def tensor_from_proto(message: common_pb2.Tensor, field: str = "tensor", *, dtypes: Sequence[str] | None = None,
                      max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Decode and validate a tensor; ``field`` names it in errors, ``dtypes`` restricts the accepted dtypes."""
    if message.dtype not in DTYPES:
        raise InvalidInput(f"{field}.dtype", f"{quoted(message.dtype)} is not one of {', '.join(DTYPES)}",
                           message.dtype)
    if dtypes is not None and message.dtype not in dtypes:
        raise InvalidInput(f"{field}.dtype", f"must be {' or '.join(dtypes)}, got {message.dtype}", message.dtype)
    shape = tuple(int(size) for size in message.shape)
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{field}.shape", f"has {len(shape)} dimensions, at most {MAX_DIMS} are accepted")
    if any(size < 0 for size in shape):
        raise InvalidInput(f"{field}.shape", f"{list(shape)} has a negative dimension")
    elements = math.prod(shape)
    if elements > max_elements:
        raise InvalidInput(f"{field}.shape", f"has {elements} elements, more than the limit of {max_elements}")
    np_dtype, _ = DTYPES[message.dtype]
    data = message.data
    if len(data) != elements * np_dtype.itemsize:
        raise InvalidInput(f"{field}.data", f"has {len(data)} bytes, shape {list(shape)} of {message.dtype} "
                                            f"needs {elements * np_dtype.itemsize}")
    if message.dtype == "bool" and data and int(np.frombuffer(data, dtype=np.uint8).max()) > 1:
        raise InvalidInput(f"{field}.data", "is bool but holds bytes other than 0 and 1")
    array = np.frombuffer(data, dtype=np_dtype).reshape(shape)
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True))


def content_hash(message: common_pb2.Tensor) -> str:
    """sha256 hex over dtype, shape and bytes: the name under which a worker caches a blob."""
    digest = hashlib.sha256()
    digest.update(message.dtype.encode())
    digest.update(b"\0")
    digest.update(np.asarray(list(message.shape), dtype="<i8").tobytes())
    digest.update(b"\0")
    digest.update(message.data)
    return digest.hexdigest()


def float32_value(value: float) -> float:
    """The shortest decimal that round-trips through float32 (see the module docstring)."""
    return float(str(np.float32(value)))


# -------------------------------------------------------------------------------------------- net specs

def _encode_normalize(layer: Any, item: common_pb2.Layer) -> None:
    item.normalize.mean[:] = layer.mean
    item.normalize.std[:] = layer.std


def _encode_conv2d(layer: Any, item: common_pb2.Layer) -> None:
    item.conv2d.CopyFrom(common_pb2.Conv2d(in_channels=layer.in_channels, out_channels=layer.out_channels,
                                           kernel=layer.kernel, stride=layer.stride, padding=layer.padding))


def _encode_linear(layer: Any, item: common_pb2.Layer) -> None:
    item.linear.CopyFrom(common_pb2.Linear(in_features=layer.in_features, out_features=layer.out_features))


# One encoder per layer type; NetSpec itself rejects any other type.
_LAYER_ENCODERS: dict[type, Callable[[Any, common_pb2.Layer], None]] = {
    Normalize: _encode_normalize,
    Conv2d: _encode_conv2d,
    Linear: _encode_linear,
    ReLU: lambda layer, item: item.relu.SetInParent(),
    Flatten: lambda layer, item: item.flatten.SetInParent(),
}


def spec_to_proto(spec: NetSpec, out: common_pb2.NetSpec | None = None) -> common_pb2.NetSpec:
    message = common_pb2.NetSpec() if out is None else out
    message.name = spec.name
    message.input_shape[:] = spec.input_shape
    del message.layers[:]
    for layer in spec.layers:
        _LAYER_ENCODERS[type(layer)](layer, message.layers.add())
    return message


def _layer_from_proto(index: int, item: common_pb2.Layer) -> Layer:
    kind = item.WhichOneof("kind")
    where = f"spec.layers[{index}]"
    if kind == "normalize":
        mean = tuple(float32_value(v) for v in item.normalize.mean)
        std = tuple(float32_value(v) for v in item.normalize.std)
        if not all(math.isfinite(v) for v in mean + std):
            raise InvalidInput(where, "Normalize mean/std must be finite")
        return Normalize(mean, std)
    if kind == "conv2d":
        c = item.conv2d
        if min(c.in_channels, c.out_channels, c.kernel, c.stride) < 1 or c.padding < 0:
            raise InvalidInput(where, f"Conv2d needs positive channels, kernel and stride and padding >= 0, got "
                             f"in={c.in_channels} out={c.out_channels} kernel={c.kernel} stride={c.stride} "
                             f"padding={c.padding}")
        return Conv2d(c.in_channels, c.out_channels, c.kernel, c.stride, c.padding)
    if kind == "linear":
        if min(item.linear.in_features, item.linear.out_features) < 1:
            raise InvalidInput(where, f"Linear needs positive features, got in={item.linear.in_features} "
                             f"out={item.linear.out_features}")
        return Linear(item.linear.in_features, item.linear.out_features)
    if kind == "relu":
        return ReLU()
    if kind == "flatten":
        return Flatten()
    raise InvalidInput(where, "has no layer kind set")


def spec_from_proto(message: common_pb2.NetSpec) -> NetSpec:
    """Rebuild a NetSpec; errors name ``spec`` or a field of it (NetSpec's own reasons under ``spec``)."""
    if len(message.name) > MAX_NAME:  # errors name the network: a long name would come back in every one
        raise InvalidInput("spec.name", f"has {len(message.name)} characters, at most {MAX_NAME} are accepted")
    shape = tuple(int(size) for size in message.input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise InvalidInput("spec.input_shape", f"must be (C, H, W) or (N,) with positive sizes, got {list(shape)}")
    if math.prod(shape) > MAX_ACTIVATION:
        raise InvalidInput("spec.input_shape", f"{list(shape)} is larger than {MAX_ACTIVATION} elements")
    if not message.layers:
        raise InvalidInput("spec.layers", "is empty")
    if len(message.layers) > MAX_LAYERS:
        raise InvalidInput("spec.layers", f"has {len(message.layers)} layers, at most {MAX_LAYERS} are accepted")
    layers = tuple(_layer_from_proto(index, item) for index, item in enumerate(message.layers))
    try:
        spec = NetSpec(shape, layers, name=message.name or "net")
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise InvalidInput("spec", str(error)) from None
    for index, out in enumerate(spec.shapes[1:]):
        if math.prod(out) > MAX_ACTIVATION:
            raise InvalidInput("spec", f"layer {index} output {list(out)} is larger than {MAX_ACTIVATION} elements")
    return spec


# ---------------------------------------------------------------------------------------- relaxations

def _dedicated(record: relaxations.Relaxation) -> list[relaxations.Option]:
    """The options that travel in fields of their own (the others in ``Relaxation.options``)."""
    return [item for item in record.options if item.wire is not None]


def _wire_set(message: common_pb2.Relaxation, item: relaxations.Option) -> bool:
    return bool(getattr(message, str(item.wire))) or (item.wire_flag is not None and getattr(message, item.wire_flag))


def relaxation_to_proto(method: str, options: dict[str, Any] | None = None,
                        out: common_pb2.Relaxation | None = None) -> common_pb2.Relaxation:
    """The method and its options (those left out at the method's defaults; none given: none sent)."""
    options = dict(options or {})
    message = common_pb2.Relaxation() if out is None else out
    if method == COMPLETE:  # the Certifier's branch and bound: only a per-input time limit
        if set(options) - {"timeout"}:
            raise InvalidInput("options", f"method {COMPLETE!r} takes only 'timeout', got {sorted(options)}")
        message.method = method
        message.complete_timeout = float(options.get("timeout", 0.0))
        return message
    record = relaxations.lookup(method)
    message.method = method
    if not options:
        return message
    values = record.check(options, "options")
    for item in record.options:
        value = values[item.name]
        if item.wire is None:
            message.options[item.name] = json.dumps(value)
        elif item.wire_flag is not None and value in item.words:
            setattr(message, item.wire_flag, True)
        else:
            setattr(message, item.wire, value)
    dedicated = _dedicated(record)
    if dedicated and not any(_wire_set(message, item) for item in dedicated):
        zeros = ", ".join(f"{item.name}=0" for item in dedicated)
        raise InvalidInput("options", f"{method} with {zeros} is not representable on the wire (all-zero "
                                      f"{', '.join(str(item.wire) for item in dedicated)} mean the defaults)")
    return message


MAX_PGD_STEPS = 1000
"""PGD steps per restart a worker runs (GLS_JOB_MAX_STEPS's default: no job asks for more); as for a relaxation's
steps (their records' ``served_max``), more is a request for unbounded work."""
MAX_PGD_RESTARTS = 100
"""PGD restarts a worker runs per member: work grows with steps x restarts, so both are bounded."""
MAX_ECHO = 64
"""Characters of a bad value quoted back in an error (gRPC metadata has a size limit)."""


def quoted(value: str) -> str:
    """``value`` for an error message: quoted, and cut short when long."""
    return repr(value) if len(value) <= MAX_ECHO else f"{value[:MAX_ECHO]!r}... ({len(value)} characters)"


def _wire_value(message: common_pb2.Relaxation, item: relaxations.Option) -> Any:
    if item.wire_flag is not None and getattr(message, item.wire_flag):
        return item.words[0]
    value = getattr(message, str(item.wire))
    kind = message.DESCRIPTOR.fields_by_name[str(item.wire)].type
    return float32_value(value) if kind == FieldDescriptor.TYPE_FLOAT else value


def _json_option(text: str, field: str) -> Any:
    if len(text) > MAX_ECHO:
        raise InvalidInput(field, f"has {len(text)} characters, at most {MAX_ECHO} are accepted")
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidInput(field, f"must be JSON text (a number or a quoted word), got {quoted(text)}") from None


def relaxation_from_proto(message: common_pb2.Relaxation, field: str = "relaxation") -> tuple[str, dict[str, Any]]:
    """(method, options): all of them, checked (served limits), or {} for the defaults when none is set.

    A method's own fields are read only for it (the proto says others ignore them); when any of them
    is set, all of them are read as they are (all zero: none given).
    """
    record = relaxations.lookup(message.method, f"{field}.method")
    dedicated = _dedicated(record)
    given: dict[str, Any] = {}
    if any(_wire_set(message, item) for item in dedicated):
        given = {item.name: _wire_value(message, item) for item in dedicated}
    given.update({name: _json_option(text, f"{field}.options.{name}") for name, text in message.options.items()})
    if not given:
        return message.method, {}
    names = {item.name: str(item.wire) if item.wire else f"options.{item.name}" for item in record.options}
    checked = record.check(given, field, served=True, names=names)
    return message.method, {name: checked[name] for name in given}  # the receiver fills in its defaults


# ----------------------------------------------------------------------------------------- objectives

def objective_to_proto(objective: Objective,
                       out: bound_worker_pb2.Objective | None = None) -> bound_worker_pb2.Objective:
    message = bound_worker_pb2.Objective() if out is None else out
    message.kind = _KINDS[objective.kind]  # type: ignore[assignment]
    if objective.method is not None:
        relaxation_to_proto(objective.method, objective.options, out=message.relaxation)
    message.pgd_steps = objective.pgd_steps
    message.pgd_step_size = objective.pgd_step_size
    message.pgd_restarts = objective.pgd_restarts
    return message


def objective_from_proto(message: bound_worker_pb2.Objective, field: str = "objective") -> Objective:
    kind = _KIND_NAMES.get(message.kind)
    if kind is None:
        raise InvalidInput(f"{field}.kind", f"must be STANDARD, ADVERSARIAL or CERTIFIED, got {message.kind}",
                           message.kind)
    step_size = float32_value(message.pgd_step_size)
    steps, restarts = int(message.pgd_steps), int(message.pgd_restarts)
    if kind == "adversarial":  # adversarial training's attack: bounded, as every other amount of work
        check_count(steps, f"{field}.pgd_steps", 0, MAX_PGD_STEPS)
        check_count(restarts, f"{field}.pgd_restarts", 1, MAX_PGD_RESTARTS)
        check_radius(step_size, f"{field}.pgd_step_size")
    if kind != "certified":
        if message.relaxation.method:
            raise InvalidInput(f"{field}.relaxation", "is set but only a CERTIFIED objective takes one")
        return Objective(kind, pgd_steps=steps, pgd_step_size=step_size, pgd_restarts=restarts)
    if not message.HasField("relaxation"):
        raise InvalidInput(f"{field}.relaxation", "is required for a CERTIFIED objective")
    method, options = relaxation_from_proto(message.relaxation, f"{field}.relaxation")
    return Objective(kind, method, options, pgd_steps=steps, pgd_step_size=step_size, pgd_restarts=restarts)


# ------------------------------------------------------------------------------------------ proposals

def proposal_fields(proposal: Proposal) -> dict[str, Any]:
    """The scalar PointsRequest fields of a proposal (centre and sigma travel as blobs)."""
    check_count(proposal.seed, "seed", 0)
    check_count(proposal.step, "step", 0)
    return {"seed": proposal.seed, "step": proposal.step, "count": proposal.count, "symmetric": proposal.symmetric,
            "want_gradients": proposal.needs_grads}


def proposal_from_request(request: bound_worker_pb2.PointsRequest, centre: torch.Tensor,
                          sigma: torch.Tensor) -> Proposal:
    """Rebuild the proposal of a PointsRequest around decoded (and validated) centre and sigma."""
    check_count(request.count, "count")
    if request.symmetric and request.count % 2:
        raise InvalidInput("count", f"must be even for symmetric pairs, got {request.count}", request.count)
    return Proposal(step=int(request.step), seed=int(request.seed), centre=centre, sigma=sigma,
                    count=int(request.count), symmetric=request.symmetric, needs_grads=request.want_gradients)
