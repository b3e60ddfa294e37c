"""One lock order everywhere: complaints, outcomes and decisions that share caller IDs and
campaigns, racing from separate pools, never deadlock; imports hold their locks only briefly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dialguard.policy.feedback import Complaint, FeedbackPolicy
from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.complaints import CHUNK, ComplaintStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore, batch_rows
from dialguard.store.queries import q
from tests.support import (
    RULES_ALL_OFF,
    BuiltinProfiles,
    daytime_block,
    make_decider,
    params_all_off,
)

# Two caller IDs whose text order and lock (hash) order differ: a complaint batch used to lock
# them in text order, decisions in hash order.
CALLERS = ["+12125550100", "+12125550101", "+12125550102", "+12125550103"]
PROFILE = BuiltinProfiles(
    rotation_per_destination="off",
    callerid_caps=[],
    callerid_max_concurrent="off",
    destination_min_interval="off",
    destination_caps=[],
    campaign_callerids_per_day=1000,
)


@pytest.fixture
async def pools(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    a = await create_pool(db_dsn, min_size=4, max_size=8)
    b = await create_pool(db_dsn, min_size=4, max_size=8)
    for c in CALLERS:
        await CallerIdStore(a).add(c, None)
    yield a, b
    await a.close()
    await b.close()


def complaints_from(callers: list[str], round_: int, at: datetime) -> list[Complaint]:
    # Complaints far in the past: they count, but never reach a threshold that rests anyone.
    return [
        Complaint(
            destination=f"+1646555{round_ % 100:02d}{i:02d}",
            source="carrier",
            at=at - timedelta(days=30, seconds=round_),
            caller_id=c,
            campaign="spring",
        )
        for i, c in enumerate(callers)
    ]


@pytest.mark.slow
async def test_complaint_and_decision_batches_sharing_caller_ids_never_deadlock(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = pools
    complaints = ComplaintStore(a)
    decisions = DecisionStore(b, batches=1)
    decider = make_decider(b, PROFILE, decisions=decisions)
    policy = FeedbackPolicy(complaints_to_rest=10_000, complaint_rate_min_calls=1_000_000)
    block = daytime_block()
    now = datetime.now(UTC)
    deadlocks = 0
    for n in range(200):
        # Both orders of the caller IDs, in the complaints and in the decisions.
        order = CALLERS if n % 2 else CALLERS[::-1]
        calls = [
            DecisionRequest(
                caller_id=c, destination=f"{block}{(n * 4 + i) % 10000:04d}", campaign="spring"
            )
            for i, c in enumerate(order[::-1] + order)
        ]
        results = await asyncio.gather(
            complaints.record(complaints_from(order, n, now), policy),
            *(decider.decide(r) for r in calls),
            return_exceptions=True,
        )
        deadlocks += sum(isinstance(r, asyncpg.DeadlockDetectedError) for r in results)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == [], errors
        assert all(d.allowed for d in results[1:]), [d.rule for d in results[1:]]
    assert deadlocks == 0
    assert max(decisions.batch_sizes) > 1, "decisions went in batches too"
    stats = await a.fetchval(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    assert not stats


async def test_a_complaint_and_a_decision_batch_caught_mid_lock_wait_in_turn(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """The interleaving that deadlocked, made certain: a third transaction holds one caller ID,
    so a complaint batch stops part-way through its locks; a decision batch over the same caller
    IDs then takes what it can. Once the third lets go, both finish: each took its locks in the
    one order, so neither holds what the other still needs before it."""
    a, b = pools
    blocker = await a.acquire()
    await blocker.execute("BEGIN")
    await blocker.execute("SELECT dg_lock(ARRAY['cid:' || $1::text])", CALLERS[1])
    policy = FeedbackPolicy(complaints_to_rest=10_000, complaint_rate_min_calls=1_000_000)
    complaint = asyncio.create_task(
        ComplaintStore(a).record(complaints_from(CALLERS, 1, datetime.now(UTC)), policy)
    )
    await wait_for_lock_waits(a, 1)
    block = daytime_block()
    rules = replace(RULES_ALL_OFF, cid_max_concurrent=10)
    batch = [
        replace(
            params_all_off(),
            caller_id=c,
            destination=f"{block}{i:04d}",
            rules=rules,
            live=True,
            campaign="spring",
        )
        for i, c in enumerate(CALLERS)
    ]

    async def decide_batch() -> list[asyncpg.Record]:
        async with b.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(q("decide"), *batch_rows(batch), True)
        return rows

    decisions = asyncio.create_task(decide_batch())
    await wait_for_lock_waits(a, 2)
    await blocker.execute("ROLLBACK")
    await a.release(blocker)
    recorded, rows = await asyncio.gather(complaint, decisions)
    assert len(recorded) == len(CALLERS)
    assert [r["rule"] for r in rows] == [None] * len(CALLERS)


async def wait_for_lock_waits(pool: asyncpg.Pool, n: int) -> None:
    """Until ``n`` sessions wait on an advisory lock."""
    deadline = time.monotonic() + 5
    while True:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        if waiting >= n:
            return
        assert time.monotonic() < deadline, f"{waiting} lock waits, expected {n}"
        await asyncio.sleep(0.01)


async def test_outcomes_and_complaints_sharing_caller_ids_never_deadlock(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = pools
    decider = make_decider(a, PROFILE)
    block = daytime_block()
    store = DecisionStore(b, batches=1)
    complaints = ComplaintStore(a)
    policy = FeedbackPolicy(complaints_to_rest=10_000, complaint_rate_min_calls=1_000_000)
    now = datetime.now(UTC)
    for n in range(50):
        order = CALLERS if n % 2 else CALLERS[::-1]
        allowed = [
            await decider.decide(
                DecisionRequest(caller_id=c, destination=f"{block}{(n * 4 + i):04d}")
            )
            for i, c in enumerate(order)
        ]
        ids = [d.decision_id for d in allowed if d.decision_id is not None]
        outcomes = [
            store.record_outcome(
                i, outcome="busy", answered_seconds=None, cause=17, sip_code=486, at=now
            )
            for i in ids[::-1]
        ]
        results = await asyncio.gather(
            complaints.record(complaints_from(order, n, now), policy), *outcomes
        )
        assert all(r.recorded for r in results[1:])


async def test_a_complaint_import_holds_a_caller_ids_lock_only_a_chunk_at_a_time(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Decisions from a caller ID keep flowing while 1,000 of its complaints are imported: each
    waits at most one short transaction, not the whole import."""
    a, b = pools
    cid = CALLERS[0]
    now = datetime.now(UTC)
    batch = [
        Complaint(
            destination=f"+1646555{i:04d}",
            source="carrier",
            at=now - timedelta(days=30, seconds=i),
            caller_id=cid,
        )
        for i in range(1000)
    ]
    policy = FeedbackPolicy(complaints_to_rest=10_000, complaint_rate_min_calls=1_000_000)
    decider = make_decider(b, BuiltinProfiles(callerid_caps=[], callerid_max_concurrent=5))
    block = daytime_block()
    waits: list[float] = []
    importing = asyncio.create_task(ComplaintStore(a).record(batch, policy))
    started = time.monotonic()
    n = 0
    while not importing.done():
        began = time.monotonic()
        d = await decider.decide(DecisionRequest(caller_id=cid, destination=f"{block}{n:04d}"))
        waits.append(time.monotonic() - began)
        assert d.rule is None or d.rule.value == "callerid_concurrency"
        n += 1
    took = time.monotonic() - started
    assert len(await importing) == 1000
    assert len(waits) >= 5, "decisions ran while the import did"
    # A chunk of CHUNK complaints takes a small share of the import's time; a decision waits
    # for one chunk at most, never for the whole import.
    assert max(waits) < max(took * 4 * CHUNK / 1000, 0.2), (max(waits), took)
