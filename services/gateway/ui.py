"""The web dashboard: static files under ``/ui/`` (``/ui`` redirects there), outside the OpenAPI schema.

The files need no token: the page asks for one, keeps it in sessionStorage and sends it as
``Authorization: Bearer`` on each /v1 call, so it shows exactly what the API shows that tenant.
Since a script on this origin could read that token, every file goes out with a strict
Content-Security-Policy (same-origin scripts only, no inline code) and no referrer.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


class DashboardFiles(StaticFiles):
    """StaticFiles (ETag and 304, index.html for the folder) plus the security headers."""

    route: Mount | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the request metrics count these under "/ui", not as unmatched
        await super().__call__(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"  # revalidate (a 304 by ETag): releases never mix old and new js
        return response


def mount(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/``; a mount, so it stays out of the OpenAPI schema."""
    files = DashboardFiles(directory=STATIC, html=True)
    files.route = Mount(PREFIX, app=files, name="ui")
    app.router.routes.append(files.route)
