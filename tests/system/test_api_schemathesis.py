"""Schemathesis against the served OpenAPI document: generated requests, valid and invalid,
against a real server on 127.0.0.1 and a real PostgreSQL, find no 5xx.

Bounded: a few examples per operation and mode, so that the run stays under a minute.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings

from dialguard.store.callerids import CallerIdStore
from tests.integration.api_harness import AUTH, TOKEN, api_client

EXAMPLES = 10


def _run(base_url: str) -> list[str]:
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{base_url}/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _probe(result.ok(), mode, base_url, failures)()
    return failures


def _probe(operation: Any, mode: Any, base_url: str, failures: list[str]) -> Any:
    """A hypothesis test of one operation in one generation mode, collecting 5xx answers."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def probe(case: Any) -> None:
        response = case.call(base_url=base_url, headers=AUTH, timeout=30)
        if response.status_code >= 500 and case.path != "/readyz":
            failures.append(
                f"{case.method} {case.formatted_path} ({mode.value}): "
                f"{response.status_code} {response.text[:200]}"
            )

    return probe


@pytest.mark.slow
async def test_generated_requests_find_no_server_errors(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    async with api_client(pool, tmp_path, API_TOKEN=TOKEN) as client:
        runner = web.AppRunner(client.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            failures = await asyncio.wait_for(
                asyncio.to_thread(_run, f"http://127.0.0.1:{port}"), timeout=120
            )
        finally:
            await runner.cleanup()
    assert failures == [], "\n".join(failures)
