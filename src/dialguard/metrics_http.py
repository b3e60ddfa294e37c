"""The ``/metrics`` endpoint: a tiny aiohttp app that renders one injected registry."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["REGISTRY_KEY", "make_metrics_app", "serve_metrics"]

REGISTRY_KEY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[REGISTRY_KEY]
    # Rendering walks every series; with per-caller-ID labels that can take tens of milliseconds.
    # A worker thread keeps that off the event loop, where it would add to decision latency.
    # prometheus_client guards each value with its own lock, so this is safe.
    body = await asyncio.to_thread(generate_latest, registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app.router.add_get("/metrics", _metrics)
    return app


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve ``registry`` on ``http://host:port/metrics`` and return the started runner.

    The caller owns the runner and must ``await runner.cleanup()`` to close the socket. Port 0
    binds a free port; ``runner.addresses`` tells which.
    """
    runner = web.AppRunner(make_metrics_app(registry), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
