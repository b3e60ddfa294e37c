"""The gate through trouble: a restart with channels parked in Stasis, a database that goes
away under load in both fail modes, and malformed events on the websocket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.embedded import EmbeddedPostgres, temporary_data_dir
from dialguard.store.migrate import migrate
from dialguard.testing import Call, FakeAsterisk, Outcome
from tests.integration.test_gate import CALLER, _poll, _stasis_id, running_service


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


def verdict_of(fake: FakeAsterisk, channel_id: str) -> str | None:
    """'allow' or 'deny' once the gate has answered the channel, else None."""
    for r in fake.requests:
        if r.path == f"/channels/{channel_id}/continue":
            return "allow" if r.query.get("label") == "allowed" else "deny"
        if r.method == "DELETE" and r.path == f"/channels/{channel_id}":
            return "deny"
    return None


async def park_call_of_a_crashed_instance(fake: FakeAsterisk) -> Call:
    """A previous dialguard holds the app, receives the StasisStart, and dies without answering:
    the channel stays parked in Stasis."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{fake.base_url}/events?app=dialguard&subscribeAll=true",
            headers={"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")},
        )
        call = await fake.originate_outbound("2122641234", CALLER)
        await fake.wait_for_event("StasisStart", channel_id=_stasis_id(call))
        await fake.drop_websocket("dialguard", abort=True)
        await ws.close()
    return call


async def test_channel_parked_by_a_previous_instance_is_decided_on_connect(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    call = await park_call_of_a_crashed_instance(fake)
    assert verdict_of(fake, _stasis_id(call)) is None
    async with running_service(pool, fake, tmp_path) as service:
        # Readiness comes only after reconciliation, so the parked call is answered by now.
        assert service.gate.ready
        assert verdict_of(fake, _stasis_id(call)) == "allow"
    listed = [r for r in fake.requests if r.method == "GET" and r.path == "/channels"]
    assert listed, "reconciliation lists channels"


async def test_malformed_and_unexpected_events_are_skipped_with_a_log_line(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    async with running_service(pool, fake, tmp_path):
        await fake.push_event("dialguard", "this is not json")
        await fake.push_event("dialguard", {"type": "StasisStart", "channel": {"id": 5}})
        await fake.push_event("dialguard", {"type": "SomethingNew", "detail": True})
        call = await fake.originate_outbound("2122641234", CALLER)
        await fake.wait_for(lambda: verdict_of(fake, _stasis_id(call)))
        assert verdict_of(fake, _stasis_id(call)) == "allow"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("json" in r.getMessage().lower() for r in warnings)
    assert any("StasisStart" in r.getMessage() for r in warnings)


class OutagePostgres:
    """A PostgreSQL of the test's own, to stop and start under load."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = EmbeddedPostgres(path)
        self.url = ""

    def start(self) -> str:
        self.server = EmbeddedPostgres(self.path)
        self.url = self.server.start()
        return self.url

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
async def outage_pg() -> AsyncIterator[OutagePostgres]:
    with temporary_data_dir(prefix="dialguard-outage-") as tmp:
        pg = OutagePostgres(tmp / "pgdata")
        await asyncio.to_thread(pg.start)
        yield pg
        await asyncio.to_thread(pg.stop)


async def _run_outage(
    fail_mode: str, outage_pg: OutagePostgres, fake: FakeAsterisk, tmp_path: Path
) -> tuple[list[Call], dict[str, str], asyncpg.Pool]:
    pool = await create_pool(outage_pg.url, min_size=2, max_size=10)
    await migrate(pool)
    await CallerIdStore(pool).add("+12125550100", None)
    calls: list[Call] = []
    async with running_service(
        pool,
        fake,
        tmp_path,
        DIALGUARD_GATE_FAIL_MODE=fail_mode,
        DIALGUARD_GATE_DECISION_DEADLINE="300ms",
        DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS="off",
        DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT="off",
        DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY="off",
    ) as service:

        async def place(n: int) -> None:
            for _ in range(n):
                calls.append(await fake.originate_outbound(f"21226{len(calls):05d}", CALLER))
                await asyncio.sleep(0.02)

        await place(10)
        await asyncio.to_thread(outage_pg.stop)
        await place(15)
        await asyncio.to_thread(outage_pg.start)
        await place(10)
        # Recovery takes as long as the pool's reconnect: keep calling until a call is allowed.
        async with asyncio.timeout(15):
            while True:
                await fake.wait_for(lambda: verdict_of(fake, _stasis_id(calls[-1])), timeout=5.0)
                if verdict_of(fake, _stasis_id(calls[-1])) == "allow":
                    break
                await place(1)
        await fake.wait_for(
            lambda: all(verdict_of(fake, _stasis_id(c)) for c in calls), timeout=10.0
        )
        if fail_mode == "open":
            await _poll(lambda: _spool_empty(service), within=10.0)
        verdicts = {_stasis_id(c): verdict_of(fake, _stasis_id(c)) or "" for c in calls}
    return calls, verdicts, pool


async def _spool_empty(service: Any) -> bool:
    return bool(service.spool.pending() == 0)


async def _allowed_in_db(pool: asyncpg.Pool) -> set[str]:
    async def fetch() -> set[str]:
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT destination FROM decisions WHERE allowed")
        return {r["destination"] for r in rows}

    return await _poll(fetch, within=10.0)


async def test_database_outage_fails_closed_and_every_call_is_answered(
    outage_pg: OutagePostgres, fake: FakeAsterisk, tmp_path: Path
) -> None:
    calls, verdicts, pool = await _run_outage("closed", outage_pg, fake, tmp_path)
    try:
        assert all(verdicts.values()), "every call got an answer"
        denied = [v for v in verdicts.values() if v == "deny"]
        assert denied, "calls during the outage are denied"
        assert list(verdicts.values())[-1] == "allow", "dialguard recovered by itself"
        allowed = {f"+1{c.number}" for c in calls if verdicts[_stasis_id(c)] == "allow"}
        assert await _allowed_in_db(pool) == allowed, "every allowed call is counted"
        rules = {
            r.query.get("value")
            for r in fake.requests
            if r.query.get("variable") == "DIALGUARD_RULE"
        }
        assert rules == {"store_unavailable"}
    finally:
        await pool.close()


async def test_database_outage_fails_open_and_spooled_calls_are_written_back(
    outage_pg: OutagePostgres, fake: FakeAsterisk, tmp_path: Path
) -> None:
    fake.set_outcome("x", Outcome.answered())
    calls, verdicts, pool = await _run_outage("open", outage_pg, fake, tmp_path)
    try:
        assert set(verdicts.values()) == {"allow"}, "fail-open allows every call"
        allowed = {f"+1{c.number}" for c in calls}
        assert await _allowed_in_db(pool) == allowed, "no allowed call is missing from counts"
        async with pool.acquire() as conn:
            spooled = await conn.fetchval(
                "SELECT count(*) FROM decisions WHERE spool_id IS NOT NULL"
            )
        assert spooled > 0
    finally:
        await pool.close()


async def test_parked_channel_decided_before_a_crash_gets_that_decision_not_a_new_one(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    call = await park_call_of_a_crashed_instance(fake)
    # The crashed instance had recorded its allow for this channel before dying.
    from dialguard.policy.model import DecisionRequest
    from tests.support import BuiltinProfiles, make_decider

    # Calling hours open all day: the decision is made at the wall clock's time.
    decided = await make_decider(pool, BuiltinProfiles(calling_hours="00:00-24:00")).decide(
        DecisionRequest(
            caller_id="+12125550100", destination="+12122641234", channel_id=_stasis_id(call)
        )
    )
    assert decided.allowed
    async with running_service(pool, fake, tmp_path):
        assert verdict_of(fake, _stasis_id(call)) == "allow"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM decisions") == 1


async def test_calls_left_up_across_a_restart_get_their_end_recorded(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    """One instance allows two calls and goes away without a word (as a SIGKILL leaves it).
    One call ends while nobody listens; the other is still up when a new instance connects.
    The new instance records the first as ended, unheard, and follows the second to its end:
    neither counts as a call up afterwards."""
    await CallerIdStore(pool).add("+12125550100", None)
    async with running_service(pool, fake, tmp_path) as service:
        short = await fake.originate_outbound(
            "2122641234", CALLER, outcome=Outcome.answered(seconds=0.6)
        )
        # Long enough to be up still after a slow restart (CI on a loaded machine).
        long = await fake.originate_outbound(
            "2122641235", CALLER, outcome=Outcome.answered(seconds=8.0)
        )
        for call in (short, long):
            await fake.wait_for(lambda c=call: verdict_of(fake, _stasis_id(c)) == "allow")
    # The instance is gone, and what it knew of the two calls with it.

    async def up() -> list[str]:
        rows = await pool.fetch(
            "SELECT destination FROM decisions WHERE allowed AND outcome_at IS NULL"
        )
        return sorted(r["destination"] for r in rows)

    assert await up() == ["+12122641234", "+12122641235"]
    await asyncio.sleep(0.8)  # the short call ends while nobody listens
    async with running_service(pool, fake, tmp_path) as service:
        assert service.gate.ready
        await _poll_async(lambda: up(), lambda v: v == ["+12122641235"])
        ended = await pool.fetchrow(
            "SELECT outcome, cause FROM decisions WHERE destination = '+12122641234'"
        )
        assert (ended["outcome"], ended["cause"]) == ("failed", None)
        # The long call, followed from here, ends in sight: its outcome comes from Asterisk.
        await _poll_async(lambda: up(), lambda v: v == [], within=15.0)


async def _poll_async(probe: Any, done: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if done(value):
            return
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r}"
        await asyncio.sleep(0.05)
