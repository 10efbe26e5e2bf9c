"""Dependencies as named ``Annotated`` aliases: the gateway state, the caller's tenant, the ids in paths."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import WithJsonSchema
from pydantic.config import JsonDict

from .context import Gateway
from .errors import ApiError, error_responses

bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="a token from GLS_TOKENS; each token belongs to one tenant")
CHALLENGE = {"WWW-Authenticate": "Bearer"}
PROTECTED = error_responses(401, 503)
"""What every /v1 route can answer besides its own statuses: no valid token, Redis unavailable."""
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
"""The ids the Store makes (job-..., model-..., data-..., builtin-mnist-train): one path segment, nothing to escape."""


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_tenant(gateway: GatewayDep,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The tenant owning the bearer token; 401 (with the reason) for a missing, malformed or unknown token."""
    if credentials is None:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <token>'", CHALLENGE)
    tenant = gateway.tenant_for(credentials.credentials)
    if tenant is None:
        raise ApiError(401, "invalid bearer token", CHALLENGE)
    return tenant


Tenant = Annotated[str, Depends(get_tenant)]


def leave_out(schema: JsonDict) -> WithJsonSchema:
    """The schema of an ``X | None`` parameter one may leave out (then None): X alone, with its constraints.

    A query, header or form field cannot carry a null (a generated one would arrive as the text 'null'), so the
    schema must not offer one.
    """
    return WithJsonSchema(schema)


def _id(kind: str) -> Any:
    return Path(pattern=ID_PATTERN, description=f"a {kind} id of this tenant (another tenant's answers 404)")


JobId = Annotated[str, _id("job")]
DatasetId = Annotated[str, _id("dataset")]
ModelId = Annotated[str, _id("model")]
