"""Fail-open accounting: calls allowed and spooled while the database was away get their
outcomes, keyed by their channels, written back with them; none of them stays "up"."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from dialguard.app import Service
from dialguard.outcomes import CallOutcome, StoreOutcomeSink
from dialguard.policy.codes import Outcome as Kind
from dialguard.spool import Spool
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore, SpooledDecision, insert_spooled
from dialguard.store.embedded import temporary_data_dir
from dialguard.store.migrate import migrate
from dialguard.testing import Call, FakeAsterisk, Outcome
from tests.integration.test_gate import CALLER, _poll, _stasis_id, running_service
from tests.integration.test_gate_resilience import OutagePostgres, verdict_of


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@pytest.fixture
async def outage_pg() -> AsyncIterator[OutagePostgres]:
    """A PostgreSQL of the test's own, to stop and start."""
    with temporary_data_dir(prefix="dialguard-outage-") as tmp:
        pg = OutagePostgres(tmp / "pgdata")
        await asyncio.to_thread(pg.start)
        yield pg
        await asyncio.to_thread(pg.stop)


async def test_ten_spooled_calls_end_and_none_counts_as_up_afterwards(
    outage_pg: OutagePostgres, fake: FakeAsterisk, tmp_path: Path
) -> None:
    fake.set_outcome("x", Outcome.answered(0.05))
    pool = await create_pool(outage_pg.url, min_size=1, max_size=10)
    try:
        await migrate(pool)
        await CallerIdStore(pool).add("+12125550100", None)
        async with running_service(
            pool,
            fake,
            tmp_path,
            DIALGUARD_GATE_FAIL_MODE="open",
            DIALGUARD_GATE_DECISION_DEADLINE="300ms",
            DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS="off",
            DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT="3",
            DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY="off",
        ) as service:
            await asyncio.to_thread(outage_pg.stop)
            spooled = []
            for i in range(10):
                call = await fake.originate_outbound(f"21226{i:05d}", CALLER)
                spooled.append(call)
                await fake.wait_for(_answered(fake, call), timeout=5.0)
            assert {verdict_of(fake, _stasis_id(c)) for c in spooled} == {"allow"}
            # Every call ends while the database is still away.
            await fake.wait_for(
                lambda: all(
                    fake.events("ChannelDestroyed", channel_id=_stasis_id(c)) for c in spooled
                ),
                timeout=10.0,
            )
            await fake.wait_for(lambda: service.spool.pending() >= 20, timeout=5.0)
            await asyncio.to_thread(outage_pg.start)
            await _poll(lambda: _nothing_spooled(service), within=30.0)

            async with pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT channel_id, outcome FROM decisions WHERE spool_id IS NOT NULL"
                )
            assert sorted(r["channel_id"] for r in rows) == sorted(_stasis_id(c) for c in spooled)
            assert {r["outcome"] for r in rows} == {"answered"}, "each got its outcome"

            # Ten calls up would make the caller ID's next call callerid_concurrency (limit 3).
            fresh = await fake.originate_outbound("2122649999", CALLER)
            await fake.wait_for(lambda: verdict_of(fake, _stasis_id(fresh)), timeout=5.0)
            assert verdict_of(fake, _stasis_id(fresh)) == "allow"
            async with pool.acquire() as conn:
                rule = await conn.fetchval(
                    "SELECT rule FROM decisions WHERE channel_id = $1", _stasis_id(fresh)
                )
            assert rule is None
    finally:
        await pool.close()


def _answered(fake: FakeAsterisk, call: Call) -> Callable[[], str | None]:
    return lambda: verdict_of(fake, _stasis_id(call))


async def _nothing_spooled(service: Service) -> bool:
    return service.spool.pending() == 0


async def test_a_spooled_outcome_waits_for_its_decision_and_is_recorded_after_it(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sink = StoreOutcomeSink(DecisionStore(pool))
    written: list[SpooledDecision] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, write_back, write_back_outcomes=sink.write_back)
    at = datetime.now(UTC)
    spool.append_outcome(
        CallOutcome(None, Kind.ANSWERED, 40, 16, None, at, "", "+12125550100", "chan-1")
    )
    await spool.flush()
    assert spool.pending() == 1, "no decision for chan-1 yet: the outcome stays spooled"
    await insert_spooled(
        pool,
        [
            SpooledDecision(
                str(uuid.uuid4()), at, "+12125550100", "+12122641234", "", "gate", "chan-1"
            )
        ],
    )
    await spool.flush()
    assert spool.pending() == 0
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT outcome, answered_seconds FROM decisions")
    assert (row["outcome"], row["answered_seconds"]) == ("answered", 40)


async def test_an_outcome_spooled_too_long_ago_is_given_up_and_counted(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    sink = StoreOutcomeSink(DecisionStore(pool))
    errors: list[str] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        return None

    spool = Spool(
        tmp_path,
        write_back,
        write_back_outcomes=sink.write_back,
        outcome_max_age=0.0,
        on_error=errors.append,
    )
    at = datetime.now(UTC)
    spool.append_outcome(
        CallOutcome(None, Kind.ANSWERED, 40, 16, None, at, "", "+12125550100", "chan-gone")
    )
    await spool.flush()
    assert spool.pending() == 0
    assert errors == ["spool_replay"]
