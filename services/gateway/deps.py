"""Dependencies as named ``Annotated`` aliases: the gateway state and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import Gateway
from .errors import ApiError

bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="a token from GLS_TOKENS; each token belongs to one tenant")
CHALLENGE = {"WWW-Authenticate": "Bearer"}


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
