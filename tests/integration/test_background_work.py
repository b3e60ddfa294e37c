"""Supervised background work against a real PostgreSQL: housekeeping and the outcome sink
meet errors nobody planned for, log and count each one, and carry on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from dialguard.app import Service, Stores
from dialguard.config import load_settings
from dialguard.metrics import BACKGROUND_TASKS
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import FakeAsterisk, Outcome
from tests.integration.test_gate import _poll


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@asynccontextmanager
async def serving(pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path) -> AsyncIterator[Service]:
    settings = load_settings(
        None,
        {
            "DIALGUARD_ARI_URL": fake.base_url,
            "DIALGUARD_ARI_PASSWORD": "dialguard",
            "DIALGUARD_API_LISTEN": "127.0.0.1:0",
            "DIALGUARD_METRICS_LISTEN": "127.0.0.1:0",
            "DIALGUARD_DATA_DIR": str(tmp_path),
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
        },
    )
    service = Service(settings, Stores.on(pool), drain_timeout=5.0, housekeeping_interval=0.05)
    await service.start()
    try:
        await fake.wait_for(lambda: service.gate.ready, timeout=5.0)
        yield service
    finally:
        await service.stop()


def sample(service: Service, name: str, **labels: str) -> float:
    value = service.registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} exists"
    return value


async def execute(pool: asyncpg.Pool, sql: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(sql)


async def test_every_background_error_series_exists_at_zero_from_start(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    async with serving(pool, fake, tmp_path) as service:
        for task in BACKGROUND_TASKS:
            assert sample(service, "dialguard_background_errors_total", task=task) == 0


async def test_housekeeping_counts_an_unexpected_error_and_carries_on(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    async with serving(pool, fake, tmp_path) as service:
        # An error that is no outage: the table the caller-ID gauges read is gone.
        await execute(pool, "ALTER TABLE callerids RENAME TO callerids_away")
        await fake.wait_for(
            lambda: sample(service, "dialguard_background_errors_total", task="housekeeping") >= 3,
            timeout=5.0,
        )
        await execute(pool, "ALTER TABLE callerids_away RENAME TO callerids")
        await CallerIdStore(pool).add("+12125550100", None)
        # The same loop, still running, refreshes the gauge once the table is back.
        await fake.wait_for(
            lambda: sample(service, "dialguard_callerid_state", state="active") == 1, timeout=5.0
        )
        assert service.supervisor.running("housekeeping")
        assert service.supervisor.restarts["housekeeping"] == 0


async def test_the_outcome_sink_counts_an_unexpected_error_and_records_on_retry(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    # Every write to a decision fails with an error PostgreSQL raises on purpose.
    await execute(
        pool,
        """
        CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
        """,
    )
    async with serving(pool, fake, tmp_path) as service:
        fake.set_outcome("2122641234", Outcome.answered(0.05))
        await execute(
            pool,
            "CREATE TRIGGER refuse BEFORE UPDATE ON decisions"
            " FOR EACH ROW EXECUTE FUNCTION test_refuse()",
        )
        await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(
            lambda: sample(service, "dialguard_background_errors_total", task="outcome_sink") >= 1,
            timeout=5.0,
        )
        await execute(pool, "DROP TRIGGER refuse ON decisions")

        async def recorded() -> bool:
            async with pool.acquire() as conn:
                return bool(await conn.fetchval("SELECT outcome FROM decisions"))

        await _poll(recorded)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT outcome FROM decisions") == "answered"
