"""A decision the database cannot answer within the deadline: refused (or, in fail-open mode,
allowed and spooled) soon after the deadline, and decided normally once the database answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from dialguard.policy.codes import Rule, Verdict
from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.decisions import DecisionStore
from tests.support import NOON_NY, daytime_block, make_decider

CALLER = "+12125550100"
DEST = "+12122641234"


async def hold_destination(pool: asyncpg.Pool) -> asyncpg.pool.PoolConnectionProxy:
    """Another instance deciding for DEST, stuck inside its transaction (its lock held)."""
    conn = await pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('dest:' || $1, 0))", DEST)
    return conn


@pytest.mark.parametrize("batches", [0, 2])
async def test_a_decision_past_its_deadline_is_refused_as_store_unavailable(
    pool: asyncpg.Pool, batches: int
) -> None:
    await CallerIdStore(pool).add(CALLER, None)
    decider = make_decider(pool, decisions=DecisionStore(pool, batches=batches), deadline=0.2)
    holder = await hold_destination(pool)
    try:
        started = time.monotonic()
        decision = await decider.decide(
            DecisionRequest(caller_id=CALLER, destination=DEST, at=NOON_NY, as_of=True)
        )
        waited = time.monotonic() - started
    finally:
        await holder.execute("ROLLBACK")
        await pool.release(holder)
    assert decision.verdict is Verdict.DENY
    assert decision.rule is Rule.STORE_UNAVAILABLE
    assert decision.facts == {"deadline_ms": 200, "error": "TimeoutError"}
    assert 0.2 <= waited < 1.0  # not before the deadline; soon after it, on a busy machine too

    # Alone, the decision took its statement with it when it gave up. In a batch slot the
    # statement runs on, is recorded once the lock goes, and is then rewritten as not placed,
    # in the background: once that is done, nothing stands as an allowed attempt.
    await decider.drain(5.0)
    async with pool.acquire() as conn:
        assert not await conn.fetchval("SELECT count(*) FROM decisions WHERE allowed")
    again = await decider.decide(
        DecisionRequest(caller_id=CALLER, destination=DEST, at=NOON_NY, as_of=True)
    )
    assert again.verdict is Verdict.ALLOW
    assert again.decision_id is not None


async def test_a_batch_held_on_a_lock_past_its_deadline_records_nothing(pool: asyncpg.Pool) -> None:
    """Live decisions queued behind busy slots leave together in a batch, which the database
    holds on a lock past their callers' deadline: the callers are answered store_unavailable,
    and once the lock goes the batch records no allowed attempt and leaves no call up."""
    callers = [f"+1212555{n:04d}" for n in range(200, 208)]
    for c in callers:
        await CallerIdStore(pool).add(c, None)
    await CallerIdStore(pool).add(CALLER, None)
    store = DecisionStore(pool, batches=2)
    decider = make_decider(pool, decisions=store, deadline=0.2)
    dest = daytime_block() + "4321"
    # Warm: the numbering plan's metadata and the profile are loaded by a first decision.
    await make_decider(pool).decide(DecisionRequest(caller_id=CALLER, destination=dest[:-4]))
    await decider.decide(DecisionRequest(caller_id=CALLER, destination=dest[:-4] + "9999"))
    holder = await hold(pool, "dest:" + dest)
    try:
        # The first two take the free slots for destinations nobody holds, and leave at once;
        # the rest queue meanwhile, and leave together for the held one.
        first = [
            DecisionRequest(caller_id=c, destination=f"{dest[:-4]}000{i}")
            for i, c in enumerate(callers[:2])
        ]
        rest = [DecisionRequest(caller_id=c, destination=dest) for c in callers[2:]]
        decisions = await asyncio.gather(*(decider.decide(r) for r in first + rest))
        assert all(d.allowed for d in decisions[:2]), [d.facts for d in decisions[:2]]
        assert {d.rule for d in decisions[2:]} == {Rule.STORE_UNAVAILABLE}
        assert max(store.batch_sizes) > 1, "some of them went in a batch"
        # The batches are still waiting on the lock, their callers gone; hold it a while longer.
        await asyncio.sleep(0.3)
    finally:
        await holder.execute("ROLLBACK")
        await pool.release(holder)
    # Every statement the batches sent has ended once nothing runs dg_decide any more.
    await poll(lambda: _running_decisions(pool), lambda n: n == 0)
    rows = await pool.fetch(
        "SELECT allowed, outcome_at FROM decisions WHERE destination = $1", dest
    )
    assert [r for r in rows if r["allowed"]] == []
    up = await pool.fetchval(
        "SELECT count(*) FROM decisions WHERE caller_id = ANY ($1) AND allowed"
        " AND outcome_at IS NULL",
        callers[2:],
    )
    assert up == 0, "those who gave up have no call up"
    # With the lock gone the destination is free: nothing phantom blocks it.
    again = await decider.decide(DecisionRequest(caller_id=callers[0], destination=dest))
    assert again.allowed


async def hold(pool: asyncpg.Pool, key: str) -> asyncpg.pool.PoolConnectionProxy:
    """Another instance stuck inside its transaction, holding ``key``'s lock."""
    conn = await pool.acquire()
    await conn.execute("BEGIN")
    await conn.execute("SELECT dg_lock(ARRAY[$1])", key)
    return conn


async def _running_decisions(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%dg_decide(%'"
        " AND state = 'active' AND pid <> pg_backend_pid()"
    )
    return n


async def poll(probe: Any, done: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        value = await probe()
        if done(value):
            return
        assert time.monotonic() < deadline, f"still {value!r} after {seconds} s"
        await asyncio.sleep(0.02)
