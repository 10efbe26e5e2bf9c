"""``/v1/models``: GLS model files (theta + metadata naming the architecture and dataset).

An upload is validated with ``gls_core.training.load_model`` (format, known arch and dataset,
theta length) and stored in canonical form: float32 theta and its metadata only, so any other
tensors a file carried are dropped. Trained models appear here too (the coordinator stores them).
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import APIRouter, File, Response, UploadFile
from safetensors import SafetensorError
from safetensors.torch import save as save_tensors

from gls_core.training.checkpoint import load_model

from ..store import NotFound
from .context import Gateway
from .deps import PROTECTED, GatewayDep, ModelId, Tenant
from .errors import STORED_QUOTA, InvalidRequest, NotFoundError, error_responses
from .schemas import ModelOut
from .uploads import FILE_DESCRIPTION, check_decoded, check_suffix, client_name, reader_error, spooled

router = APIRouter(prefix="/v1/models", tags=["models"], responses=PROTECTED)
NO_MODEL = (404, "no such model for this tenant (another tenant's ids answer exactly the same)")
LOCATION = {"Location": {"description": "the path of the new model", "required": True, "schema": {"type": "string"}}}
MODEL = {"model_id": "$response.body#/id"}
CREATED = {name: {"operationRef": f"#/paths/~1v1~1models~1{{model_id}}{suffix}", "parameters": MODEL}
           for name, suffix in [("get", "/get"), ("download", "~1download/get"), ("delete", "/delete")]}
STANDARD_KEYS = ("format", "arch", "dataset", "num_params")


MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 32, 64, 1024
"""What a model file's metadata may hold: it is stored, and listed with every GET /v1/models."""


def check_metadata(metadata: dict[str, str], filename: str) -> None:
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidRequest.one("file", f"{filename}: {len(metadata)} metadata entries, more than "
                                         f"{MAX_METADATA_KEYS}")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequest.one("file", f"{filename}: metadata {key[:MAX_METADATA_KEY]!r} is longer than "
                                             f"{MAX_METADATA_KEY} characters (key) or {MAX_METADATA_VALUE} (value)")


def _model(gateway: Gateway, tenant: str, model_id: str) -> dict[str, Any]:
    try:
        return gateway.store.model_info(model_id, tenant).public()
    except NotFound:
        raise NotFoundError("model", model_id) from None


@router.post("", status_code=201, response_model=ModelOut,
             responses={201: {"headers": LOCATION, "links": CREATED}, **error_responses(
                 400, (413, "the file is larger than GLS_MAX_UPLOAD_MB, or its tensors would take more than "
                            "GLS_UPLOAD_MAX_DECODED_MB once read"),
                 (422, "not a GLS model file (the file's content, which the schema cannot describe); detail says "
                       "why"), STORED_QUOTA)})
def upload_model(gateway: GatewayDep, tenant: Tenant, response: Response,
                 file: Annotated[UploadFile, File(description="a GLS model.safetensors (as written by gls train); "
                                                              + FILE_DESCRIPTION.format(".safetensors"))]
                 ) -> dict[str, Any]:
    suffix = check_suffix(file, (".safetensors",))
    filename = client_name(file)
    with spooled(file, suffix) as path:
        check_decoded(path, suffix, filename, None, gateway.settings.upload_max_decoded_mb)
        try:
            spec, theta, metadata = load_model(path)
            if not bool(torch.isfinite(theta).all()):
                raise ValueError(f"{path}: theta contains NaN or inf")
        except (ValueError, FileNotFoundError) as error:
            raise reader_error(error, path, filename) from None
        except SafetensorError as error:  # load_model lets this one through (gls_core catches OSError/RuntimeError)
            raise InvalidRequest.one("file", f"{filename}: not a readable safetensors file ({error})") from None
        size = path.stat().st_size
    check_metadata(metadata, filename)
    data = save_tensors({"theta": theta.contiguous()}, {**metadata, "num_params": str(spec.num_params)})
    extra = {key: value for key, value in metadata.items() if key not in STANDARD_KEYS}
    info = gateway.store.put_model(tenant, data, metadata["arch"], metadata["dataset"], spec.num_params,
                                   source=filename, extra=extra, quota=gateway.settings.tenant_max_stored_bytes)
    gateway.metrics.upload_bytes.labels("model").inc(size)
    response.headers["Location"] = f"{router.prefix}/{info.id}"
    return info.public()


@router.get("", response_model=list[ModelOut])
def list_models(gateway: GatewayDep, tenant: Tenant) -> list[dict[str, Any]]:
    """Uploaded and trained models of this tenant, oldest first."""
    return [info.public() for info in gateway.store.list_models(tenant)]


@router.get("/{model_id}", response_model=ModelOut, responses=error_responses(NO_MODEL, 422))
def get_model(model_id: ModelId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    return _model(gateway, tenant, model_id)


@router.get("/{model_id}/download", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "model.safetensors"},
                       **error_responses(NO_MODEL, 422)})
def download_model(model_id: ModelId, gateway: GatewayDep, tenant: Tenant) -> Response:
    try:
        data = gateway.store.model_data(model_id, tenant)
    except NotFound:
        raise NotFoundError("model", model_id) from None
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{model_id}.safetensors"'})


@router.delete("/{model_id}", response_model=ModelOut, responses=error_responses(NO_MODEL, 422))
def delete_model(model_id: ModelId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    info = _model(gateway, tenant, model_id)
    try:
        gateway.store.delete_model(model_id, tenant)
    except NotFound:
        raise NotFoundError("model", model_id) from None
    return info
