"""Python clients of the gateway: ``GlsClient`` (REST, httpx) and ``CertifierClient`` (gRPC).

Both raise :class:`ClientError` carrying the server's own message (for a 422, one ``field: reason``
per problem), so a caller sees what to fix rather than a status code.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import torch
import yaml

from gls_core.nets.spec import NetSpec
from gls_core.training.config import apply_overrides

from .codec import relaxation_to_proto, spec_to_proto, tensor_to_proto
from .proto.gls.v1 import certifier_pb2
from .tls import ClientTLS, secure_or_insecure_channel

JSON = dict[str, Any]
ArrayLike = torch.Tensor | np.ndarray | Sequence[Any]


class ClientError(Exception):
    """A request the server refused or could not serve; ``status`` is the HTTP status or gRPC code name."""

    def __init__(self, message: str, status: int | str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def _message(response: httpx.Response) -> tuple[str, Any]:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}: {response.text[:500]}", None
    if isinstance(detail, list):
        parts = [f"{item.get('field', '?')}: {item.get('msg', '')}" if isinstance(item, dict) else str(item)
                 for item in detail]
        return f"HTTP {response.status_code}: " + "; ".join(parts), detail
    return f"HTTP {response.status_code}: {detail}", detail


def _tensor(values: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) per server-sent event; comments and ``retry`` lines are skipped."""
    event_id: str | None = None
    event = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, event, "\n".join(data)
            event_id, event, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


class GlsClient:
    """The REST API under ``/v1`` with one tenant's token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None, tls: ClientTLS | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=timeout, transport=transport, verify=tls.ssl_context() if tls else True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(f"cannot reach the gateway at {self.base_url}: {error}") from error
        if response.status_code >= 400:
            message, detail = _message(response)
            raise ClientError(message, response.status_code, detail)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # jobs ------------------------------------------------------------------------------------
    def submit(self, config: Mapping[str, Any] | str | Path, overrides: Sequence[str] = ()) -> JSON:
        """Queue a job from a config mapping or a YAML file, with ``key.path=value`` overrides applied."""
        if isinstance(config, str | Path):
            path = Path(config)
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise ClientError(f"cannot read config {path}: {error}") from error
            if not isinstance(data, dict):
                raise ClientError(f"config {path} must be a mapping of keys, got {type(data).__name__}")
        else:
            data = dict(config)
        try:
            body = apply_overrides(data, list(overrides))
        except ValueError as error:
            raise ClientError(str(error)) from error
        result: JSON = self._json("POST", "/v1/jobs", json=body)
        return result

    def jobs(self) -> list[JSON]:
        result: list[JSON] = self._json("GET", "/v1/jobs")
        return result

    def job(self, job_id: str) -> JSON:
        result: JSON = self._json("GET", f"/v1/jobs/{job_id}")
        return result

    def cancel(self, job_id: str) -> JSON:
        result: JSON = self._json("DELETE", f"/v1/jobs/{job_id}")
        return result

    def metrics(self, job_id: str, start: int = 0) -> list[JSON]:
        result: list[JSON] = self._json("GET", f"/v1/jobs/{job_id}/metrics", params={"start": start})
        return result

    def curves(self, job_id: str) -> bytes:
        """The job's training curves as PNG bytes."""
        response = self._request("GET", f"/v1/jobs/{job_id}/curves.png")
        return response.content

    def events(self, job_id: str, after: str | None = None, reconnects: int = 5) -> Iterator[JSON]:
        """The job's events as dicts (``type`` says which; ``event_id`` resumes), ending with ``type: end``.

        A dropped connection is resumed from the last event seen (``Last-Event-ID``), so no event is
        lost or repeated; ``reconnects`` bounds consecutive failed attempts.
        """
        failures = 0
        while True:
            headers = {"Last-Event-ID": after} if after else {}
            try:
                with self.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                      timeout=httpx.Timeout(30.0, read=None)) as response:
                    if response.status_code >= 400:
                        response.read()
                        message, detail = _message(response)
                        raise ClientError(message, response.status_code, detail)
                    for event_id, event, data in parse_sse(response.iter_lines()):
                        failures = 0
                        item: JSON = json.loads(data)
                        item.setdefault("type", event)
                        if event_id is not None:
                            after = item["event_id"] = event_id
                        yield item
                        if event == "end":
                            return
            except httpx.TransportError as error:
                failures += 1
                if failures > reconnects:
                    raise ClientError(f"lost the event stream of {job_id}: {error}") from error
                time.sleep(min(5.0, 0.2 * 2 ** failures))

    def download_model(self, job_id: str, path: str | Path, latest: bool = False) -> Path:
        """Write the job's trained model (``latest``: its latest checkpoint while it runs) to ``path``."""
        params = {"latest": "true"} if latest else {}
        return self._save(self._request("GET", f"/v1/jobs/{job_id}/model", params=params).content, path)

    @staticmethod
    def _save(data: bytes, path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    # datasets and models -----------------------------------------------------------------------
    def _upload(self, route: str, path: str | Path, fields: Mapping[str, str]) -> JSON:
        source = Path(path)
        try:
            with source.open("rb") as handle:
                result: JSON = self._json("POST", route, files={"file": (source.name, handle)}, data=dict(fields))
        except OSError as error:
            raise ClientError(f"cannot read {source}: {error}") from error
        return result

    def upload_dataset(self, path: str | Path, name: str | None = None, num_classes: int | None = None) -> JSON:
        fields = {key: str(value) for key, value in (("name", name), ("num_classes", num_classes)) if value}
        return self._upload("/v1/datasets", path, fields)

    def datasets(self) -> list[JSON]:
        result: list[JSON] = self._json("GET", "/v1/datasets")
        return result

    def dataset(self, dataset_id: str) -> JSON:
        result: JSON = self._json("GET", f"/v1/datasets/{dataset_id}")
        return result

    def delete_dataset(self, dataset_id: str) -> JSON:
        result: JSON = self._json("DELETE", f"/v1/datasets/{dataset_id}")
        return result

    def upload_model(self, path: str | Path) -> JSON:
        return self._upload("/v1/models", path, {})

    def models(self) -> list[JSON]:
        result: list[JSON] = self._json("GET", "/v1/models")
        return result

    def model(self, model_id: str) -> JSON:
        result: JSON = self._json("GET", f"/v1/models/{model_id}")
        return result

    def delete_model(self, model_id: str) -> JSON:
        result: JSON = self._json("DELETE", f"/v1/models/{model_id}")
        return result

    def download_stored_model(self, model_id: str, path: str | Path) -> Path:
        return self._save(self._request("GET", f"/v1/models/{model_id}/download").content, path)

    # certification ----------------------------------------------------------------------------
    def certify(self, inputs: ArrayLike, labels: ArrayLike, eps: float, method: str = "deeppoly", *,
                model_id: str | None = None, model: Mapping[str, Any] | None = None,
                options: Mapping[str, Any] | None = None) -> JSON:
        """Verdicts for ``inputs`` [B, C, H, W]; ``model`` is inline: {"arch", "dataset", "theta"}."""
        body: JSON = {"inputs": _tensor(inputs, torch.float32).tolist(),
                      "labels": _tensor(labels, torch.int64).tolist(), "eps": float(eps),
                      "relaxation": {"method": method, **(options or {})}}
        if model_id is not None:
            body["model_id"] = model_id
        if model is not None:
            theta = model["theta"]
            body["model"] = {**model, "theta": _tensor(theta, torch.float32).tolist()}
        result: JSON = self._json("POST", "/v1/certify", json=body)
        return result

    def ready(self) -> JSON:
        response = self.http.get("/readyz")
        result: JSON = response.json()
        return result


def verdict_dict(verdict: certifier_pb2.Verdict) -> JSON:
    """A Verdict as the REST API writes it (status and seconds are the complete method's, else None)."""
    complete = bool(verdict.status)
    return {"index": verdict.index, "predicted": verdict.predicted, "correct": verdict.correct,
            "certified": verdict.certified,
            "worst_margin": None if math.isnan(verdict.worst_margin) else verdict.worst_margin,
            "margin_upper": list(verdict.margin_upper), "status": verdict.status if complete else None,
            "seconds": verdict.seconds if complete else None}


class CertifierClient:
    """The gRPC ``gls.v1.Certifier``; answers as the same dicts ``GlsClient.certify`` returns."""

    def __init__(self, address: str, token: str, *, max_message_mb: int = 256, timeout: float = 600.0,
                 tls: ClientTLS | None = None) -> None:
        size = max_message_mb * 1024 * 1024
        self.channel = secure_or_insecure_channel(address, tls, [("grpc.max_send_message_length", size),
                                                                 ("grpc.max_receive_message_length", size)])
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout
        self._certify = self.channel.unary_unary(
            "/gls.v1.Certifier/Certify", request_serializer=certifier_pb2.CertifyRequest.SerializeToString,
            response_deserializer=certifier_pb2.CertifyResponse.FromString)
        self._stream = self.channel.stream_stream(
            "/gls.v1.Certifier/CertifyStream", request_serializer=certifier_pb2.CertifyRequest.SerializeToString,
            response_deserializer=certifier_pb2.Verdict.FromString)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CertifierClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def request(inputs: ArrayLike | None, labels: ArrayLike | None, eps: float | None, method: str | None,
                model_id: str | None = None, inline: tuple[NetSpec, torch.Tensor] | None = None,
                options: Mapping[str, Any] | None = None) -> certifier_pb2.CertifyRequest:
        """A CertifyRequest; parts left None stay unset (a stream's later chunks need inputs and labels only)."""
        message = certifier_pb2.CertifyRequest()
        if model_id is not None:
            message.model_id = model_id
        elif inline is not None:
            spec_to_proto(inline[0], out=message.inline.spec)
            tensor_to_proto(_tensor(inline[1], torch.float32), out=message.inline.theta)
        if inputs is not None:
            x = inputs if isinstance(inputs, torch.Tensor) and inputs.dtype == torch.uint8 else \
                _tensor(inputs, torch.float32)
            tensor_to_proto(x, out=message.inputs)
        if labels is not None:
            tensor_to_proto(_tensor(labels, torch.int64), out=message.labels)
        if eps is not None:
            message.perturbation.eps = float(eps)
        if method is not None:
            relaxation_to_proto(method, dict(options or {}), out=message.relaxation)
        return message

    def certify(self, inputs: ArrayLike, labels: ArrayLike, eps: float, method: str = "deeppoly", *,
                model_id: str | None = None, inline: tuple[NetSpec, torch.Tensor] | None = None,
                options: Mapping[str, Any] | None = None) -> JSON:
        request = self.request(inputs, labels, eps, method, model_id, inline, options)
        try:
            response = self._certify(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ClientError(f"{error.code().name}: {error.details()}", error.code().name) from error
        return {"verdicts": [verdict_dict(v) for v in response.verdicts], "certified": response.certified,
                "total": response.total, "method": response.method, "eps": response.eps}

    def certify_stream(self, inputs: ArrayLike, labels: ArrayLike, eps: float, method: str = "deeppoly", *,
                       model_id: str | None = None, inline: tuple[NetSpec, torch.Tensor] | None = None,
                       options: Mapping[str, Any] | None = None, chunk_size: int = 256) -> Iterator[JSON]:
        """Verdicts in input order, sent ``chunk_size`` inputs per message; the model travels once."""
        x, y = _tensor(inputs, torch.float32), _tensor(labels, torch.int64)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

        def messages() -> Iterator[certifier_pb2.CertifyRequest]:
            for start in range(0, len(x), chunk_size):
                part = slice(start, start + chunk_size)
                if start == 0:
                    yield self.request(x[part], y[part], eps, method, model_id, inline, options)
                else:
                    yield self.request(x[part], y[part], None, None)

        try:
            for verdict in self._stream(messages(), metadata=self.metadata, timeout=self.timeout):
                yield verdict_dict(verdict)
        except grpc.RpcError as error:
            raise ClientError(f"{error.code().name}: {error.details()}", error.code().name) from error
