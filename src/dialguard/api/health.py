"""``/healthz`` (the process lives) and ``/readyz`` (it can gate calls now)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

ReadinessProbe = Callable[[], tuple[bool, dict[str, bool]]]
READINESS: web.AppKey[ReadinessProbe] = web.AppKey("readiness", ReadinessProbe)  # type: ignore[arg-type]


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[READINESS]()
    return web.json_response({"ready": ready, **detail}, status=200 if ready else 503)


def add_health_routes(app: web.Application, readiness: ReadinessProbe) -> None:
    app[READINESS] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
