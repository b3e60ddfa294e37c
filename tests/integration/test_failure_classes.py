"""Every class of database failure gets the fail mode's verdict within the deadline, counted.

Each class is provoked on a real PostgreSQL: a refused connection, a server process that stops
answering (SIGSTOP), an exhausted pool, a statement timeout, a cancel, a deadlock (retried once),
a read-only transaction, a full disk and an exhausted memory (as the server reports them), an
administrator's shutdown of the session, and an error nobody foresaw. ``closed`` denies with
``store_unavailable``; ``open`` allows and spools. Every decision is counted in
``dialguard_decisions_total`` with its rule.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from dialguard.decider import Decider
from dialguard.metrics import Metrics
from dialguard.policy.codes import Rule, Verdict
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.spool import Spool
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore, insert_spooled
from tests.support import daytime_block, make_decider

CALLER = "+12125550100"
DEADLINE = 0.5


class ListSpool:
    """Keeps what a fail-open decision spools."""

    def __init__(self) -> None:
        self.spooled: list[Decision] = []

    def append(
        self,
        decision: Decision,
        source: str,
        channel_id: str | None,
        spool_id: str | None = None,
        origin: str | None = None,
    ) -> None:
        self.spooled.append(decision)


class Probe:
    """A decider in one fail mode on a pool of its own, and what it counted and spooled."""

    def __init__(
        self, pool: asyncpg.Pool, fail_mode: str, deadline: float = DEADLINE, batches: int = 0
    ) -> None:
        self.registry = CollectorRegistry()
        self.spool = ListSpool()
        self.decider: Decider = make_decider(
            pool,
            decisions=DecisionStore(pool, batches=batches),
            metrics=Metrics(self.registry, build_version="test"),
            fail_mode=fail_mode,
            spool=self.spool,
            deadline=deadline,
        )
        self.destination = daytime_block() + "5555"

    async def decide(self) -> tuple[Decision, float]:
        started = time.monotonic()
        decision = await self.decider.decide(
            DecisionRequest(caller_id=CALLER, destination=self.destination, channel_id="ch-1")
        )
        return decision, time.monotonic() - started

    def counted(self, rule: str) -> float:
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "dialguard_decisions_total" and sample.labels["rule"] == rule:
                    total += sample.value
        return total


def assert_fail_mode_verdict(probe: Probe, fail_mode: str, decision: Decision, took: float) -> None:
    assert took < DEADLINE + 0.4, f"answered after {took:.2f} s"
    if fail_mode == "closed":
        assert decision.verdict is Verdict.DENY and decision.rule is Rule.STORE_UNAVAILABLE
        assert probe.counted("store_unavailable") == 1
        assert probe.spool.spooled == []
    else:
        assert decision.verdict is Verdict.ALLOW and decision.decision_id is None
        assert probe.counted("none") == 1
        assert [d.destination for d in probe.spool.spooled] == [probe.destination]


@pytest.fixture
async def admin(pool: asyncpg.Pool) -> asyncpg.Pool:
    await CallerIdStore(pool).add(CALLER, None)
    return pool


@asynccontextmanager
async def own_pool(dsn: str, **settings: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    if settings:
        await pool.close()
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=2, server_settings={"jit": "off", **settings}
        )
    try:
        yield pool
    finally:
        pool.terminate()


@asynccontextmanager
async def holding(pool: asyncpg.Pool, key: str) -> AsyncIterator[asyncpg.Connection]:
    """Another transaction holding ``key``'s lock, as an instance stuck mid-decision would."""
    conn = await pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("SELECT dg_lock(ARRAY[$1::text])", key)
    try:
        yield conn
    finally:
        await conn.execute("ROLLBACK")
        await pool.release(conn)


async def waiting_backend(admin: asyncpg.Pool) -> int:
    """The backend waiting on a lock in dg_decide, once there is one."""
    deadline = time.monotonic() + 2
    while True:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE '%dg_decide(%' LIMIT 1"
        )
        if pid is not None:
            return int(pid)
        assert time.monotonic() < deadline, "no decision waits on a lock"
        await asyncio.sleep(0.01)


async def while_waiting(
    admin: asyncpg.Pool, probe: Probe, act: Callable[[int], Awaitable[Any]]
) -> tuple[Decision, float]:
    """Decide while the destination's lock is held; ``act`` on the waiting backend."""
    async with holding(admin, "dest:" + probe.destination):
        task = asyncio.create_task(probe.decide())
        await act(await waiting_backend(admin))
        return await task


FAIL_MODES = pytest.mark.parametrize("fail_mode", ["closed", "open"])


@FAIL_MODES
async def test_connection_refused(admin: asyncpg.Pool, fail_mode: str) -> None:
    pool = await asyncpg.create_pool("postgresql://dg@127.0.0.1:9/none", min_size=0, max_size=1)
    try:
        probe = Probe(pool, fail_mode)
        decision, took = await probe.decide()
    finally:
        pool.terminate()
    assert_fail_mode_verdict(probe, fail_mode, decision, took)


@FAIL_MODES
async def test_a_server_that_stops_answering(
    admin: asyncpg.Pool, db_dsn: str, fail_mode: str
) -> None:
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, fail_mode)
        await probe.decider.sync_clock()
        pids = [r["pid"] for r in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )]  # fmt: skip
        # Only this pool's sessions are in this database besides the admin's: stop them all.
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            decision, took = await probe.decide()
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    assert_fail_mode_verdict(probe, fail_mode, decision, took)


@FAIL_MODES
async def test_an_exhausted_pool(admin: asyncpg.Pool, db_dsn: str, fail_mode: str) -> None:
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, fail_mode)
        held = [await pool.acquire(), await pool.acquire()]
        try:
            decision, took = await probe.decide()
        finally:
            for conn in held:
                await pool.release(conn)
    assert_fail_mode_verdict(probe, fail_mode, decision, took)


@FAIL_MODES
async def test_a_statement_timeout(admin: asyncpg.Pool, db_dsn: str, fail_mode: str) -> None:
    async with own_pool(db_dsn, statement_timeout="100ms") as pool:
        probe = Probe(pool, fail_mode)
        async with holding(admin, "dest:" + probe.destination):
            decision, took = await probe.decide()
    assert_fail_mode_verdict(probe, fail_mode, decision, took)
    assert "canceled" in decision.facts["error"]


@FAIL_MODES
async def test_a_cancelled_statement(admin: asyncpg.Pool, db_dsn: str, fail_mode: str) -> None:
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, fail_mode)
        decision, took = await while_waiting(
            admin, probe, lambda pid: admin.execute("SELECT pg_cancel_backend($1)", pid)
        )
    assert_fail_mode_verdict(probe, fail_mode, decision, took)
    assert "canceled" in decision.facts["error"]


@FAIL_MODES
async def test_an_administrators_shutdown_of_the_session(
    admin: asyncpg.Pool, db_dsn: str, fail_mode: str
) -> None:
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, fail_mode)
        decision, took = await while_waiting(
            admin, probe, lambda pid: admin.execute("SELECT pg_terminate_backend($1)", pid)
        )
    assert_fail_mode_verdict(probe, fail_mode, decision, took)


@FAIL_MODES
async def test_a_read_only_database(admin: asyncpg.Pool, db_dsn: str, fail_mode: str) -> None:
    # As a hot standby after a failover answers: every transaction is read-only.
    async with own_pool(db_dsn, default_transaction_read_only="on") as pool:
        probe = Probe(pool, fail_mode)
        decision, took = await probe.decide()
    assert_fail_mode_verdict(probe, fail_mode, decision, took)
    assert "read_only" in decision.facts["error"]


@pytest.mark.parametrize(
    ("errcode", "kind"),
    [("disk_full", "resources"), ("out_of_memory", "resources"), ("internal_error", None)],
)
@FAIL_MODES
async def test_disk_full_memory_out_and_the_unforeseen(
    admin: asyncpg.Pool, db_dsn: str, fail_mode: str, errcode: str, kind: str | None
) -> None:
    """The server reports the failure as it would (its SQLSTATE), from the decision's write."""
    await admin.execute(
        "CREATE FUNCTION fail_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" RAISE EXCEPTION 'could not extend file' USING ERRCODE = '{errcode}'; END $$"
    )
    await admin.execute(
        "CREATE TRIGGER fail_write BEFORE INSERT ON decisions"
        " FOR EACH STATEMENT EXECUTE FUNCTION fail_write()"
    )
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, fail_mode)
        decision, took = await probe.decide()
    assert_fail_mode_verdict(probe, fail_mode, decision, took)
    if kind is not None:
        assert kind in decision.facts["error"]


async def test_a_deadlock_is_retried_once_within_the_deadline(
    admin: asyncpg.Pool, db_dsn: str
) -> None:
    """The decision holds its destination and waits for its caller ID, which another
    transaction holds while it waits for the destination: PostgreSQL breaks the cycle by
    failing the decision, which runs again and is allowed once the other lets go."""
    async with own_pool(db_dsn, deadlock_timeout="100ms") as pool:
        probe = Probe(pool, "closed", deadline=3.0)
        other = await admin.acquire()
        try:
            await other.execute("SET deadlock_timeout = '10s'")  # the decision is the victim
            await other.execute("BEGIN")
            await other.execute("SELECT dg_lock(ARRAY['cid:' || $1::text])", CALLER)
            task = asyncio.create_task(probe.decide())
            await waiting_backend(admin)
            # Now the other wants the destination the decision holds: a cycle.
            wants = asyncio.create_task(
                other.execute("SELECT dg_lock(ARRAY['dest:' || $1::text])", probe.destination)
            )
            await wants  # granted once the decision has been failed and let go
            await other.execute("ROLLBACK")
        finally:
            await admin.release(other)
        decision, _ = await task
    assert decision.verdict is Verdict.ALLOW and decision.decision_id is not None
    assert probe.counted("none") == 1
    recorded = await admin.fetchval(
        "SELECT count(*) FROM decisions WHERE destination = $1", probe.destination
    )
    assert recorded == 1


@pytest.mark.parametrize("blacklisted", [False, True])
async def test_a_decision_recorded_too_late_and_spooled_counts_once(
    admin: asyncpg.Pool, db_dsn: str, tmp_path: Path, blacklisted: bool
) -> None:
    """A decision goes in a batch (the only slot is busy), and the database records it, but
    the commit comes after its caller's deadline: the call goes out in fail-open mode and is
    spooled. Written back, it is one call, and an allowed one (it was placed), whatever the
    database had decided."""
    block = daytime_block()
    first, late = block + "1111", block + "5555"
    if blacklisted:
        await BlacklistStore(admin).add_number(late)
    await admin.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.destination = '{late}' THEN PERFORM pg_sleep(0.8); END IF;"
        " RETURN NULL; END $$"
    )
    await admin.execute(
        "CREATE TRIGGER slow_commit AFTER INSERT ON decisions"
        " FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    spool = Spool(tmp_path, lambda rows: insert_spooled(admin, rows))
    async with own_pool(db_dsn) as pool:
        decider = make_decider(
            pool, decisions=DecisionStore(pool, batches=1), fail_mode="open", spool=spool,
            deadline=DEADLINE,
        )  # fmt: skip
        async with holding(admin, "dest:" + first):
            busy = asyncio.create_task(
                decider.decide(DecisionRequest(caller_id=CALLER, destination=first))
            )
            await waiting_backend(admin)
            queued = asyncio.create_task(
                decider.decide(
                    DecisionRequest(caller_id=CALLER, destination=late, channel_id="ch-late")
                )
            )
            await asyncio.sleep(0.05)
        assert (await busy).allowed
        decision = await queued
        assert decision.allowed and decision.decision_id is None, "allowed in fail-open mode"
        # The batch goes on to its commit, after the caller's deadline.
        deadline = time.monotonic() + 5
        while not await admin.fetchval(
            "SELECT count(*) FROM decisions WHERE destination = $1", late
        ):
            assert time.monotonic() < deadline, "the batch never committed"
            await asyncio.sleep(0.05)
    await admin.execute("DROP TRIGGER slow_commit ON decisions")
    assert await spool.flush() == 1
    rows = await admin.fetch(
        "SELECT allowed, channel_id FROM decisions WHERE destination = $1", late
    )
    assert [(r["allowed"], r["channel_id"]) for r in rows] == [(True, "ch-late")]
    await spool.stop()


@pytest.mark.parametrize("batches", [0, 1])
async def test_a_decision_allowed_after_its_deadline_is_recorded_as_not_placed(
    admin: asyncpg.Pool, db_dsn: str, batches: int
) -> None:
    """Closed mode: the database records an allowed decision, but the answer comes after the
    caller's deadline, and the gate hangs the call up. The record then says so: denied as
    store_unavailable, answered late, neither an attempt nor a call up."""
    dest = daytime_block() + "5555"
    await admin.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM pg_sleep(0.8); RETURN NULL; END $$"
    )
    await admin.execute(
        "CREATE TRIGGER slow_commit AFTER INSERT ON decisions"
        " FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    async with own_pool(db_dsn) as pool:
        probe = Probe(pool, "closed", batches=batches)
        decision, took = await probe.decide()
        assert_fail_mode_verdict(probe, "closed", decision, took)
        deadline = time.monotonic() + 5
        while True:
            row = await admin.fetchrow(
                "SELECT allowed, rule, facts FROM decisions WHERE destination = $1", dest
            )
            if row is not None and not row["allowed"]:
                break
            assert time.monotonic() < deadline, f"still {row!r}"
            await asyncio.sleep(0.05)
    assert row["rule"] == "store_unavailable" and row["facts"]["answered_late"] is True
