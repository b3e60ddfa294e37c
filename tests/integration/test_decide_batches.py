"""Decisions sent in batches (dg_decide) decide exactly as the same calls one by one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from datetime import datetime, timedelta

import asyncpg
import pytest

from dialguard.decider import Decider
from dialguard.policy.codes import Rule
from dialguard.policy.model import DecisionRequest
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecideRules, DecisionStore, OutcomeRecorded
from tests.support import (
    NOON_NY,
    RULES_ALL_OFF,
    BuiltinProfiles,
    make_decider,
    params_all_off,
)


def decider_on(
    pool: asyncpg.Pool, batches: int, profiles: BuiltinProfiles, store: DecisionStore | None = None
) -> Decider:
    return make_decider(
        pool, profiles, decisions=store or DecisionStore(pool, batches=batches), deadline=10.0
    )


async def scenario(pool: asyncpg.Pool, area: str, at: datetime) -> list[DecisionRequest]:
    """Calls that make most rules speak, in an order where each depends on those before it.

    Numbers are drawn from ``area`` so that two runs in one database do not see each other.
    """
    a, b, c, d = (f"+1{area}5550{n}00" for n in range(1, 5))
    for caller in (a, b, c):
        await CallerIdStore(pool).add(caller, None)
    await BlacklistStore(pool).add_number(f"+1{area}2649999")
    dest = [f"+1{area}26400{n:02d}" for n in range(12)]

    def call(caller: str, destination: str, seconds: int) -> DecisionRequest:
        return DecisionRequest(
            caller_id=caller,
            destination=destination,
            at=at + timedelta(seconds=seconds),
            as_of=True,
        )

    return [
        call(a, dest[0], 0),  # allow
        call(b, dest[0], 1),  # destination_interval: the attempt just before counts
        call(d, dest[1], 2),  # callerid_unknown
        call(a, f"+1{area}2649999", 3),  # blacklisted
        *(call(a, dest[n], 4 + n) for n in range(1, 6)),  # four allowed, then callerid_rate
        call(c, dest[6], 20),  # allow
        call(c, dest[6], 21),  # destination_interval again
        call(b, dest[7], 22),  # allow
        call(a, "not a number", 23),  # invalid_number
    ]


async def test_a_batch_decides_as_the_same_calls_one_after_another(pool: asyncpg.Pool) -> None:
    profiles = BuiltinProfiles(callerid_caps=["5/1m"])
    one_by_one = decider_on(pool, 0, profiles)
    alone = [await one_by_one.decide(r) for r in await scenario(pool, "212", NOON_NY)]

    # One slot: the first call leaves alone and every later one waits for it, so all of them
    # go together in the second batch, in arrival order.
    store = DecisionStore(pool, batches=1)
    observed: list[int] = []
    store.observe_batches(observed.append)
    batched = decider_on(pool, 1, profiles, store)
    requests = await scenario(pool, "718", NOON_NY + timedelta(days=1))
    await batched.profile_for("default")  # else the calls reach the store as their loads finish
    together = await asyncio.gather(*(batched.decide(r) for r in requests))

    assert [d.rule for d in together] == [d.rule for d in alone]
    assert store.batch_sizes == {1: 1, 12: 1}
    assert observed == [1, 12]
    assert [d.rule for d in alone] == [
        None,
        Rule.DESTINATION_INTERVAL,
        Rule.CALLERID_UNKNOWN,
        Rule.BLACKLISTED,
        None,
        None,
        None,
        None,
        Rule.CALLERID_RATE,
        None,
        Rule.DESTINATION_INTERVAL,
        None,
        Rule.INVALID_NUMBER,
    ]
    # Every decision is recorded, with its own id, in arrival order.
    ids = [d.decision_id or 0 for d in together]
    assert all(ids) and ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_each_item_of_a_batch_is_judged_by_its_own_campaign_s_rules(
    pool: asyncpg.Pool,
) -> None:
    """A batch sends each profile's rules once; items of two campaigns, one allowing a caller
    ID a call a minute and one not counting at all, go together and keep their own limits."""
    caller = "+12125550100"
    await CallerIdStore(pool).add(caller, None)
    await CampaignStore(pool).set("strict", "default", {"callerid_caps": ["1/1m"]})
    await CampaignStore(pool).set("loose", "default", {"callerid_caps": []})
    store = DecisionStore(pool, batches=1)
    decider = decider_on(pool, 1, BuiltinProfiles(callerid_max_concurrent="off"), store)
    for campaign in ("strict", "loose"):
        await decider.profile_for(campaign)

    def call(campaign: str, n: int) -> DecisionRequest:
        return DecisionRequest(
            caller_id=caller,
            destination=f"+121226400{n:02d}",
            campaign=campaign,
            at=NOON_NY + timedelta(seconds=n),
            as_of=True,
        )

    first = asyncio.create_task(decider.decide(call("strict", 0)))
    await asyncio.sleep(0)
    campaigns = ["loose", "strict", "loose", "strict", "loose"]
    rest = await asyncio.gather(*(decider.decide(call(c, n)) for n, c in enumerate(campaigns, 1)))
    assert (await first).rule is None
    assert store.batch_sizes == {1: 1, 5: 1}
    # The strict campaign's caller ID has made its call this minute; the loose one counts none.
    assert [d.rule for d in rest] == [
        None,
        Rule.CALLERID_RATE,
        None,
        Rule.CALLERID_RATE,
        None,
    ]
    assert rest[1].facts["limit"] == 1


async def test_the_server_reads_the_rules_literal_back_field_by_field(pool: asyncpg.Pool) -> None:
    """A batch's rules travel as text made once per profile; the server must read back every
    limit, in its place, or a rule would be judged with another's value."""
    every = DecideRules(
        require_registered=True,
        cooldown_s=604800,
        conversation_min_s=30,
        interval_s=14400,
        dest_cap_limits=(3, 7),
        dest_cap_windows=(86400, 604800),
        rotation_limit=2,
        rotation_window_s=2592000,
        campaign_rotation_limit=20,
        cid_cap_limits=(5, 60, 300),
        cid_cap_windows=(60, 3600, 86400),
        cid_max_concurrent=10,
        max_call_s=7200,
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM unnest($1::text::dg_decide_rules[])",
            "{" + every.literal + "," + RULES_ALL_OFF.literal + "}",
        )
    as_read = [tuple(tuple(v) if isinstance(v, list) else v for v in r.values()) for r in rows]
    assert as_read == [every.row(), RULES_ALL_OFF.row()]


async def test_a_batch_counts_the_caller_ids_its_earlier_items_brought_to_the_campaign(
    pool: asyncpg.Pool,
) -> None:
    """The batch writes its records at the end; a count of the campaign's caller IDs in the
    middle of it must still see the ones the batch itself just allowed."""
    a, b, c = (f"+12125550{n}00" for n in range(1, 4))
    for caller in (a, b, c):
        await CallerIdStore(pool).add(caller, None)
    profiles = BuiltinProfiles(campaign_callerids_per_day=2, callerid_caps=[])
    store = DecisionStore(pool, batches=1)
    decider = decider_on(pool, 1, profiles, store)
    await decider.profile_for("default")

    def call(caller: str, n: int) -> DecisionRequest:
        return DecisionRequest(
            caller_id=caller,
            destination=f"+1212264{n:04d}",
            at=NOON_NY + timedelta(seconds=n),
            as_of=True,
        )

    # The first call leaves alone; the other four go together, in this order.
    requests = [call(a, 0), call(b, 1), call(c, 2), call(b, 3), call(a, 4)]
    decided = await asyncio.gather(*(decider.decide(r) for r in requests))

    assert store.batch_sizes == {1: 1, 4: 1}
    # c would be the campaign's third caller ID in a day, b having been brought in by the
    # batch itself; b and a, already the campaign's, still call.
    assert [d.rule for d in decided] == [None, None, Rule.CAMPAIGN_ROTATION, None, None]
    assert decided[2].facts == {"used": 2, "limit": 2, "window_s": 86400}


async def test_an_item_the_database_rejects_fails_alone_and_the_rest_are_decided(
    pool: asyncpg.Pool,
) -> None:
    store = DecisionStore(pool, batches=1)
    first = asyncio.create_task(store.decide(params_all_off("+12122640001", 0)))
    await asyncio.sleep(0)
    # A destination the decider would never send: its bigint key cannot be read.
    items = [
        params_all_off("+12122640002", 1),
        params_all_off("+1212x", 2),
        params_all_off("+12122640003", 3),
    ]
    rest = await asyncio.gather(*(store.decide(p) for p in items), return_exceptions=True)
    assert (await first).rule is None
    assert store.batch_sizes == {1: 1, 3: 1}
    assert isinstance(rest[1], asyncpg.PostgresError)
    assert not isinstance(rest[0], BaseException) and rest[0].rule is None
    assert not isinstance(rest[2], BaseException) and rest[2].rule is None
    async with pool.acquire() as conn:
        recorded = await conn.fetch("SELECT destination FROM decisions ORDER BY id")
    assert [r["destination"] for r in recorded] == [
        "+12122640001",
        "+12122640002",
        "+12122640003",
    ]


async def test_a_caller_that_gives_up_before_its_batch_leaves_records_nothing(
    pool: asyncpg.Pool,
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    decider = decider_on(pool, 1, BuiltinProfiles())
    first = asyncio.create_task(
        decider.decide(
            DecisionRequest(
                caller_id="+12125550100", destination="+12122640010", at=NOON_NY, as_of=True
            )
        )
    )
    await asyncio.sleep(0)
    given_up = asyncio.create_task(
        decider.decide(
            DecisionRequest(
                caller_id="+12125550100", destination="+12122640011", at=NOON_NY, as_of=True
            )
        )
    )
    await asyncio.sleep(0)
    given_up.cancel()
    assert (await first).decision_id is not None
    with pytest.raises(asyncio.CancelledError):
        await given_up
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM decisions WHERE destination = '+12122640011'")
            == 0
        )


async def test_batches_sharing_destinations_and_caller_ids_never_deadlock(db_dsn: str) -> None:
    """Two instances, overlapping keys in every order: no error, and each limit holds."""
    pools = [await create_pool(db_dsn, min_size=4, max_size=8) for _ in range(2)]
    try:
        callers = [f"+1212555{n:04d}" for n in range(500, 510)]
        for c in callers:
            await CallerIdStore(pools[0]).add(c, None)
        profiles = BuiltinProfiles(
            rotation_per_destination="off", callerid_caps=[], callerid_max_concurrent="off"
        )
        deciders = [decider_on(p, 4, profiles) for p in pools]
        dests = [f"+1212264{n:04d}" for n in range(20)]
        rng = random.Random(7)
        requests = [
            DecisionRequest(
                caller_id=rng.choice(callers), destination=rng.choice(dests), at=NOON_NY, as_of=True
            )
            for _ in range(300)
        ]
        decided = await asyncio.gather(*(deciders[i % 2].decide(r) for i, r in enumerate(requests)))
    finally:
        for p in pools:
            await p.close()
    assert Rule.STORE_UNAVAILABLE not in {d.rule for d in decided}
    # Exactly one allowed call a destination (its interval), whichever batch it was in.
    allowed = sorted(d.destination for d in decided if d.rule is None)
    assert allowed == sorted({r.destination for r in requests})
    assert {d.rule for d in decided} == {None, Rule.DESTINATION_INTERVAL}


async def test_outcomes_in_a_batch_are_recorded_and_judged_one_after_another(
    pool: asyncpg.Pool,
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    one_by_one = decider_on(pool, 0, BuiltinProfiles())
    ids = []
    for n in range(5):
        decided = await one_by_one.decide(
            DecisionRequest(
                caller_id="+12125550100", destination=f"+1212264{n:04d}", at=NOON_NY, as_of=True
            )
        )
        assert decided.rule is None and decided.decision_id
        ids.append(decided.decision_id)

    # Three carrier rejections in a window of three rest the caller ID: the third does it.
    store = DecisionStore(pool, carrier_block_window=3, carrier_block_share=0.5, batches=1)
    end = NOON_NY + timedelta(minutes=1)

    def rejected(decision_id: int) -> Awaitable[OutcomeRecorded]:
        return store.record_outcome(
            decision_id,
            outcome="carrier_rejected",
            answered_seconds=None,
            cause=21,
            sip_code=603,
            at=end,
        )

    first = asyncio.create_task(rejected(ids[0]))
    await asyncio.sleep(0)
    rest = await asyncio.gather(
        rejected(ids[1]),
        rejected(ids[1]),  # the same call again: the first outcome recorded wins
        rejected(987654321),  # no such decision
        rejected(ids[2]),
        rejected(ids[3]),
    )
    assert (await first).recorded
    assert [r.recorded for r in rest] == [True, False, False, True, True]
    assert [r.rested for r in rest] == [False, False, False, True, False]
    assert rest[0].caller_id == "+12125550100"
    assert (await CallerIdStore(pool).get("+12125550100") or {})["state"] == "rested"
    async with pool.acquire() as conn:
        ended = await conn.fetchval("SELECT count(*) FROM decisions WHERE outcome_at IS NOT NULL")
    assert ended == 4
