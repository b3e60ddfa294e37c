"""Bearer-token authentication of every API route but the probes and the OpenAPI document.

With no token configured the API accepts every request: ``config.py`` allows that only when it
listens on a loopback address. A refused request is logged with its route and peer, never with
what it presented.
"""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from dialguard.api.errors import Handler, error_response

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/v1/openapi.json"})


def auth_middleware(
    token: str | None,
) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS:
            return await handler(request)
        presented = request.headers.get("Authorization")
        if presented is not None and hmac.compare_digest(presented.encode(), expected):
            return await handler(request)
        why = "no bearer token" if presented is None else "a wrong bearer token"
        log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, why)
        return error_response(401, "unauthorized", "a valid bearer token is required")

    return auth
