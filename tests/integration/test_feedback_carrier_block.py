"""The carrier-block detector, on scripted outcomes recorded through the outcome path."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from dialguard.policy.codes import Outcome
from dialguard.policy.outcome import classify
from dialguard.store.callerids import CallerIdStore
from dialguard.store.decisions import DecisionStore, OutcomeRecorded
from tests.integration.test_feedback import CID, add_calls
from tests.support import NOON_NY

REJECTED = (None, 21, None)  # answered seconds, Q.850 cause, SIP code
SIP_608 = (None, 127, 608)
ANSWERED = (40, 16, None)
BUSY = (None, 17, 486)


@pytest.fixture
async def calls(pool: asyncpg.Pool) -> list[int]:
    """60 allowed calls from CID awaiting their outcomes, oldest first."""
    await CallerIdStore(pool).add(CID, None)
    await add_calls(pool, 60, end=NOON_NY)
    rows = await pool.fetch("SELECT id FROM decisions WHERE caller_id = $1 ORDER BY at", CID)
    return [r["id"] for r in rows]


async def record(
    store: DecisionStore, decision_id: int, how: tuple[int | None, int, int | None]
) -> OutcomeRecorded:
    answered, cause, sip = how
    return await store.record_outcome(
        decision_id,
        outcome=classify(answered, cause, sip).value,
        answered_seconds=answered,
        cause=cause,
        sip_code=sip,
        at=NOON_NY + timedelta(minutes=1),
    )


async def state(pool: asyncpg.Pool) -> tuple[str, str | None]:
    row = await CallerIdStore(pool).get(CID)
    assert row is not None
    return row["state"], row["reason"]


async def test_49_rejections_are_not_judged_and_the_50th_rests_the_caller_id(
    pool: asyncpg.Pool, calls: list[int]
) -> None:
    store = DecisionStore(pool)
    for decision_id in calls[:49]:
        assert not (await record(store, decision_id, REJECTED)).rested
    assert await state(pool) == ("active", None)
    fiftieth = await record(store, calls[49], SIP_608)
    assert fiftieth.recorded and fiftieth.rested and fiftieth.caller_id == CID
    assert await state(pool) == ("rested", "carrier_block_suspected")


async def test_share_just_below_the_threshold_keeps_the_caller_id_active(
    pool: asyncpg.Pool, calls: list[int]
) -> None:
    store = DecisionStore(pool)
    # 26 answered, then 24 rejected: 48 % of 50 completed calls, below 50 %.
    for i, decision_id in enumerate(calls[:50]):
        await record(store, decision_id, ANSWERED if i < 26 else REJECTED)
    assert await state(pool) == ("active", None)
    # One more rejection; the oldest answered call slides out of the window: 25 of 50.
    assert (await record(store, calls[50], REJECTED)).rested
    assert await state(pool) == ("rested", "carrier_block_suspected")


async def test_busy_and_no_answer_are_not_carrier_rejections(
    pool: asyncpg.Pool, calls: list[int]
) -> None:
    store = DecisionStore(pool)
    for decision_id in calls[:50]:
        await record(store, decision_id, BUSY)
    assert await state(pool) == ("active", None)
    assert classify(*BUSY) is Outcome.BUSY


async def test_a_released_caller_id_is_judged_on_its_calls_after_the_release(
    pool: asyncpg.Pool, calls: list[int]
) -> None:
    store = DecisionStore(pool)
    for decision_id in calls[:50]:
        await record(store, decision_id, REJECTED)
    assert await state(pool) == ("rested", "carrier_block_suspected")
    await CallerIdStore(pool).set_state(CID, "active", None)
    # The calls that rested it predate the release: a new rejection is not judged on them.
    await add_calls(pool, 1, end=NOON_NY + timedelta(hours=1))
    newest = await pool.fetchval(
        "SELECT id FROM decisions WHERE caller_id = $1 ORDER BY at DESC LIMIT 1", CID
    )
    assert not (await record(store, newest, REJECTED)).rested
    assert await state(pool) == ("active", None)


async def test_a_manually_rested_caller_id_keeps_its_reason(
    pool: asyncpg.Pool, calls: list[int]
) -> None:
    await CallerIdStore(pool).set_state(CID, "rested", "manual")
    store = DecisionStore(pool)
    for decision_id in calls[:50]:
        assert not (await record(store, decision_id, REJECTED)).rested
    assert await state(pool) == ("rested", "manual")


async def test_configured_window_and_share_are_used(pool: asyncpg.Pool, calls: list[int]) -> None:
    store = DecisionStore(pool, carrier_block_window=10, carrier_block_share=0.3)
    for i, decision_id in enumerate(calls[:10]):
        result = await record(store, decision_id, REJECTED if i < 3 else ANSWERED)
    assert result.rested, "3 rejections in 10 calls is 30 %"


async def test_an_outcome_is_recorded_once(pool: asyncpg.Pool, calls: list[int]) -> None:
    store = DecisionStore(pool)
    assert (await record(store, calls[0], ANSWERED)).recorded
    assert not (await record(store, calls[0], REJECTED)).recorded
