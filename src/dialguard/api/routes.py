"""The admin API application factory: ``/v1`` routes, bearer auth, one error mapping.

``build_api_app(deps)`` returns an app without ``/healthz`` and ``/readyz``: the service adds
those (``health.add_health_routes``) with its readiness probe. JSON bodies are limited to
``deps.max_body``; CSV bodies (scrub, imports) are streamed and unlimited.
"""

from __future__ import annotations

from aiohttp import web

from dialguard.api import blacklist, callerids, campaigns, complaints, decisions, openapi, scrub
from dialguard.api.auth import auth_middleware
from dialguard.api.context import DEPS
from dialguard.api.errors import error_middleware
from dialguard.api.ports import ApiDeps

__all__ = ["ApiDeps", "build_api_app"]


def build_api_app(deps: ApiDeps) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware(deps.errors), auth_middleware(deps.token)],
        client_max_size=deps.max_body,
    )
    app[DEPS] = deps
    for module in (decisions, scrub, blacklist, complaints, callerids, campaigns, openapi):
        module.add_routes(app)
    return app
