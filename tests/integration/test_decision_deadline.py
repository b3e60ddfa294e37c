"""A decision the database cannot answer within the deadline: refused (or, in fail-open mode,
allowed and spooled) soon after the deadline, and decided normally once the database answers."""

from __future__ import annotations

import time

import asyncpg
import pytest

from dialguard.policy.codes import Rule, Verdict
from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.decisions import DecisionStore
from tests.support import NOON_NY, make_decider

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

    # A decision that went alone (the slots were free) took its statement with it when it gave
    # up: nothing was recorded, so with the lock gone the same call is allowed.
    again = await decider.decide(
        DecisionRequest(caller_id=CALLER, destination=DEST, at=NOON_NY, as_of=True)
    )
    assert again.verdict is Verdict.ALLOW
    assert again.decision_id is not None
