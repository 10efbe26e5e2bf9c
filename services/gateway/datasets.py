"""``/v1/datasets``: a tenant's own training data, uploaded as .npz or .safetensors holding x and y.

The file is validated by the same reader ``gls train`` uses for ``dataset: file`` (shape N x C x H x W,
pixels as uint8 or floats in [0, 1], integer labels), then stored in Redis in chunks. Pixels that
are exactly k/255 are stored as uint8 (a quarter of the memory; the coordinator divides by 255
again and gets the very same floats).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile

from gls_core.data.userfile import KEYS, read_user_file

from ..store import NotFound
from .context import Gateway
from .deps import PROTECTED, DatasetId, GatewayDep, Tenant, leave_out
from .errors import STORED_QUOTA, InvalidRequest, NotFoundError, error_responses
from .schemas import DatasetOut
from .uploads import FILE_DESCRIPTION, check_decoded, check_suffix, client_name, reader_error, spooled

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=PROTECTED)
MAX_CLASSES = 100_000
"""Classes a dataset may declare or its labels imply (the built-in networks have at most 200 outputs)."""
NO_DATASET = (404, "no such dataset for this tenant (another tenant's ids answer exactly the same)")
LOCATION = {"Location": {"description": "the path of the new dataset", "required": True,
                         "schema": {"type": "string"}}}
DATASET = {"dataset_id": "$response.body#/id"}
CREATED = {"get": {"operationRef": "#/paths/~1v1~1datasets~1{dataset_id}/get", "parameters": DATASET},
           "delete": {"operationRef": "#/paths/~1v1~1datasets~1{dataset_id}/delete", "parameters": DATASET}}


def _dataset(gateway: Gateway, tenant: str, dataset_id: str) -> dict[str, Any]:
    try:
        return gateway.store.dataset_info(dataset_id, tenant).public()
    except NotFound:
        raise NotFoundError("dataset", dataset_id) from None


@router.post("", status_code=201, response_model=DatasetOut,
             responses={201: {"headers": LOCATION, "links": CREATED}, **error_responses(
                 400, (413, "the file is larger than GLS_MAX_UPLOAD_MB, or its arrays would take more than "
                            "GLS_UPLOAD_MAX_DECODED_MB once decoded"),
                 (422, "not a readable dataset (the file's content, which the schema cannot describe, or a field); "
                       "detail says why"), STORED_QUOTA)})
def upload_dataset(gateway: GatewayDep, tenant: Tenant, response: Response,
                   file: Annotated[UploadFile, File(description=".npz or .safetensors with x (N x C x H x W, uint8 "
                                                                "or float in [0, 1]) and y (integer labels); "
                                                                + FILE_DESCRIPTION.format(".npz or .safetensors"))],
                   name: Annotated[str | None, Form(max_length=200, description="default: the file name"),
                                   leave_out({"type": "string", "maxLength": 200})] = None,
                   num_classes: Annotated[int | None, Form(ge=2, le=MAX_CLASSES, description="default: largest label "
                                                           "+ 1"),
                                          leave_out({"type": "integer", "minimum": 2, "maximum": MAX_CLASSES})] = None
                   ) -> dict[str, Any]:
    suffix = check_suffix(file, (".npz", ".safetensors"))
    filename = client_name(file)
    with spooled(file, suffix) as path:
        size = path.stat().st_size
        if size == 0:
            raise InvalidRequest.one("file", f"{filename}: the file is empty")
        check_decoded(path, suffix, filename, KEYS, gateway.settings.upload_max_decoded_mb, as_float=False)
        try:
            x, y, classes = read_user_file(path, num_classes, as_float=False)  # uint8 is stored as it is
        except ValueError as error:
            raise reader_error(error, path, filename) from None
        except EOFError:  # numpy's answer to a truncated .npy inside the archive (read_user_file lets it through)
            raise InvalidRequest.one("file", f"{filename}: cannot read it as .npz (truncated)") from None
    if classes > MAX_CLASSES:
        raise InvalidRequest.one("file", f"{filename}: 'y' has label {classes - 1}; labels must lie in "
                                         f"0..{MAX_CLASSES - 1} (num_classes at most {MAX_CLASSES})")
    if classes < 2:
        raise InvalidRequest.one("file", f"{filename}: 'y' holds a single class; certification needs at least 2 "
                                         "(pass num_classes if some classes are absent)")
    info = gateway.store.put_dataset(tenant, name or filename, x, y, classes, source=filename,
                                     quota=gateway.settings.tenant_max_stored_bytes)
    gateway.metrics.upload_bytes.labels("dataset").inc(size)
    response.headers["Location"] = f"{router.prefix}/{info.id}"
    return info.public()


@router.get("", response_model=list[DatasetOut])
def list_datasets(gateway: GatewayDep, tenant: Tenant) -> list[dict[str, Any]]:
    return [info.public() for info in gateway.store.list_datasets(tenant)]


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(NO_DATASET, 422))
def get_dataset(dataset_id: DatasetId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    return _dataset(gateway, tenant, dataset_id)


@router.delete("/{dataset_id}", response_model=DatasetOut, responses=error_responses(NO_DATASET, 422))
def delete_dataset(dataset_id: DatasetId, gateway: GatewayDep, tenant: Tenant) -> dict[str, Any]:
    """Delete the dataset (jobs already queued on it will fail when they start); returns what was deleted."""
    info = _dataset(gateway, tenant, dataset_id)
    if info["tenant"] != tenant:  # a shared dataset (tenant "") is visible but not the caller's to delete
        raise NotFoundError("dataset", dataset_id)
    try:
        gateway.store.delete_dataset(dataset_id, tenant)
    except NotFound:
        raise NotFoundError("dataset", dataset_id) from None
    return info
