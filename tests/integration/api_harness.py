"""The admin API as ``dialguard serve`` builds it (``Service.build_api``), on a real socket and
a real PostgreSQL, for the API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from dialguard.api.health import add_health_routes
from dialguard.app import Service, Stores
from dialguard.config import load_settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def api_client(
    pool: asyncpg.Pool, data_dir: Path, **env: str
) -> AsyncIterator[TestClient[object, object]]:
    """A client of the API app; ``env`` adds DIALGUARD_* settings (``API_TOKEN=...``)."""
    variables = {
        "DIALGUARD_DATA_DIR": str(data_dir),
        "DIALGUARD_ARI_URL": "http://127.0.0.1:9/ari",
        **{f"DIALGUARD_{k}": v for k, v in env.items()},
    }
    service = Service(load_settings(None, variables), Stores.on(pool))
    app = service.build_api()
    add_health_routes(app, service.readiness)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client
    finally:
        await service.stop()
