"""What the real-Asterisk tests share: the Asterisk fixture, dialguard wired to it (in this
process, or as a `dialguard serve` process), and small readers of the audit trail.

The tests are marked `asterisk`; without DIALGUARD_TEST_ASTERISK they are skipped with the
reason, and tests that need the carrier (the SIP stack, root only) skip when it is missing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, TypeVar

import asyncpg
import pytest

from dialguard.app import Service, Stores
from dialguard.config import load_settings
from dialguard.testing.polling import poll_until, stderr_once_exited, wait_ready
from dialguard.testing.real_asterisk import RealAsterisk, skip_reason

T = TypeVar("T")

CALLER = "2125550100"
CALLER_E164 = "+12125550100"
DIALGUARD = str(Path(sys.executable).parent / "dialguard")

_reason = skip_reason()
requires_asterisk = [
    pytest.mark.asterisk,
    pytest.mark.skipif(_reason is not None, reason=_reason or ""),
]

# Every call of a test goes to its own destination and comes from one caller ID: the
# caller-ID rate caps (5 a minute) would otherwise deny the later calls of a longer test.
QUIET_PROFILE = {
    "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
    "DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS": "off",
}


class AriServer(Protocol):
    """What dialguard needs to know of an Asterisk, real or fake."""

    @property
    def base_url(self) -> str: ...
    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...


@pytest.fixture
async def asterisk() -> AsyncIterator[RealAsterisk]:
    async with RealAsterisk.from_env() as server:
        yield server


@pytest.fixture
def carrier(asterisk: RealAsterisk) -> RealAsterisk:
    """The Asterisk, with the sipp carrier behind PJSIP/carrier (skips without SIP)."""
    if not asterisk.sip:
        pytest.skip(f"no sipp carrier: {asterisk.without_sip_because}")
    return asterisk


def dialguard_env(
    asterisk: AriServer, tmp_path: Path, ari_url: str | None = None
) -> dict[str, str]:
    return {
        "DIALGUARD_ARI_URL": ari_url or asterisk.base_url,
        "DIALGUARD_ARI_USERNAME": asterisk.username,
        "DIALGUARD_ARI_PASSWORD": asterisk.password,
        "DIALGUARD_API_LISTEN": "127.0.0.1:0",
        "DIALGUARD_METRICS_LISTEN": "127.0.0.1:0",
        "DIALGUARD_DATA_DIR": str(tmp_path),
        **QUIET_PROFILE,
    }


@asynccontextmanager
async def gate_on(
    pool: asyncpg.Pool,
    asterisk: AriServer,
    tmp_path: Path,
    *,
    ari_url: str | None = None,
    **env: str,
) -> AsyncIterator[Service]:
    """dialguard's service in this process, connected to the real Asterisk and ready."""
    settings = load_settings(None, {**dialguard_env(asterisk, tmp_path, ari_url), **env})
    service = Service(settings, Stores.on(pool, settings.feedback), drain_timeout=5.0)
    await service.start()
    try:
        await poll(lambda: service.gate.ready, within=10.0)
        yield service
    finally:
        await service.stop()


async def poll(check: Callable[[], T | None], within: float = 10.0) -> T:
    return await poll_until(check, within, 0.02)


async def poll_async(check: Callable[[], Awaitable[T | None]], within: float = 10.0) -> T:
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def decisions(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return list(await conn.fetch("SELECT * FROM decisions ORDER BY id"))


async def decision_of(pool: asyncpg.Pool, channel_id: str) -> asyncpg.Record | None:
    async with pool.acquire() as conn:
        row: asyncpg.Record | None = await conn.fetchrow(
            "SELECT * FROM decisions WHERE channel_id = $1", channel_id
        )
        return row


async def outcome_of(pool: asyncpg.Pool, channel_id: str, within: float = 15.0) -> asyncpg.Record:
    """The decision of a channel once its outcome is recorded."""

    async def recorded() -> asyncpg.Record | None:
        row = await decision_of(pool, channel_id)
        return row if row is not None and row["outcome"] else None

    return await poll_async(recorded, within)


def reached_carrier(asterisk: RealAsterisk, channel_id: str) -> bool:
    """The channel ran Dial() towards the carrier (the `allowed` branch)."""
    return any(
        app == "Dial" and "@carrier" in data
        for app, data in asterisk.events.dialplan_apps(channel_id)
    )


class ServeProcess:
    """A `dialguard serve` process; killed on exit if still running."""

    def __init__(self, proc: asyncio.subprocess.Process, api: str) -> None:
        self.proc = proc
        self.api = api

    async def ready(self, within: float = 30.0) -> None:
        await wait_ready(self.api, lambda: stderr_once_exited(self.proc), within)


@asynccontextmanager
async def serve_process(
    db_dsn: str, asterisk: RealAsterisk, tmp_path: Path, *, ari_url: str | None = None, **extra: str
) -> AsyncIterator[ServeProcess]:
    from tests.system.test_serve import free_port

    api = free_port()
    env = {
        **os.environ,
        **dialguard_env(asterisk, tmp_path, ari_url),
        "DIALGUARD_DATABASE_URL": db_dsn,
        "DIALGUARD_API_LISTEN": f"127.0.0.1:{api}",
        "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        **extra,
    }
    proc = await asyncio.create_subprocess_exec(
        DIALGUARD,
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = ServeProcess(proc, f"http://127.0.0.1:{api}")
    try:
        await server.ready()
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def value(service: Service, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels or None) or 0.0
