"""Live decisions from two separate pools ("instances"), on the real clock, never exceed a limit.

Each pool's decider sends its decisions in batches (two slots in flight), so a round races both
batch slots of both instances. The database orders live decisions: the instances' own clocks,
skewed by seconds, must not matter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dialguard.decider import Decider
from dialguard.policy.codes import Rule
from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from tests.support import BuiltinProfiles, daytime_block, make_decider

ROUNDS = 50
# Every round's winner may be any caller ID: only the destination's rules stay on.
ONE_DESTINATION = BuiltinProfiles(
    rotation_per_destination="off", callerid_caps=[], callerid_max_concurrent="off"
)


@pytest.fixture
async def two_pools(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    a = await create_pool(db_dsn, min_size=8, max_size=16)
    b = await create_pool(db_dsn, min_size=8, max_size=16)
    yield a, b
    await a.close()
    await b.close()


def skewed(seconds: float) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(seconds=seconds)


async def _race(deciders: list[Decider], requests: list[DecisionRequest]) -> list[Rule | None]:
    results = await asyncio.gather(
        *(deciders[i % len(deciders)].decide(r) for i, r in enumerate(requests))
    )
    return [d.rule for d in results]


async def _register(pool: asyncpg.Pool, callers: list[str]) -> None:
    store = CallerIdStore(pool)
    for c in callers:
        await store.add(c, None)


async def _rounds_to_one_destination(deciders: list[Decider], callers: list[str]) -> list[int]:
    """Allowed calls in each round of 64 live decisions at once for a new destination."""
    block = daytime_block()
    allowed = []
    for n in range(ROUNDS):
        requests = [DecisionRequest(caller_id=c, destination=f"{block}{n:04d}") for c in callers]
        rules = await _race(deciders, requests)
        assert set(rules) <= {None, Rule.DESTINATION_INTERVAL}
        allowed.append(rules.count(None))
    return allowed


@pytest.mark.slow
async def test_64_live_calls_to_one_destination_allow_exactly_one_in_every_round(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    callers = [f"+1212555{n:04d}" for n in range(300, 364)]
    await _register(a, callers)
    profiles = ONE_DESTINATION
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    allowed = await _rounds_to_one_destination(deciders, callers)
    assert allowed == [1] * ROUNDS


@pytest.mark.slow
@pytest.mark.parametrize("skew", [2.0, -2.0])
async def test_a_skewed_instance_clock_changes_nothing(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool], skew: float
) -> None:
    a, b = two_pools
    callers = [f"+1212555{n:04d}" for n in range(300, 364)]
    await _register(a, callers)
    profiles = ONE_DESTINATION
    deciders = [make_decider(a, profiles), make_decider(b, profiles, clock=skewed(skew))]
    allowed = await _rounds_to_one_destination(deciders, callers)
    assert allowed == [1] * ROUNDS
    # The skewed instance follows the database's clock, which its pure checks (calling hours)
    # read: within milliseconds, though its own clock is seconds off.
    database_now = await b.fetchval("SELECT clock_timestamp()")
    assert abs(deciders[1].now() - database_now) < timedelta(milliseconds=50)


async def test_live_calls_from_one_caller_id_across_two_pools_allow_exactly_its_cap(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    await _register(a, ["+12125550100"])
    profiles = BuiltinProfiles(callerid_caps=["5/1m"], callerid_max_concurrent="off")
    deciders = [make_decider(a, profiles), make_decider(b, profiles, clock=skewed(2.0))]
    block = daytime_block()
    requests = [
        DecisionRequest(caller_id="+12125550100", destination=f"{block}{n:04d}") for n in range(64)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 5
    assert set(rules) - {None} == {Rule.CALLERID_RATE}


async def test_live_new_caller_ids_respect_the_campaign_rotation_limit(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    callers = [f"+1212555{n:04d}" for n in range(400, 432)]
    await _register(a, callers)
    profiles = BuiltinProfiles(campaign_callerids_per_day=4)
    deciders = [make_decider(a, profiles), make_decider(b, profiles, clock=skewed(-2.0))]
    block = daytime_block()
    requests = [
        DecisionRequest(caller_id=c, destination=f"{block}{i:04d}", campaign="spring")
        for i, c in enumerate(callers)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 4
    assert set(rules) - {None} == {Rule.CAMPAIGN_ROTATION}


async def test_live_calls_respect_caller_id_concurrency(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    await _register(a, ["+12125550100"])
    profiles = BuiltinProfiles(callerid_caps=[], callerid_max_concurrent=3)
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    block = daytime_block()
    requests = [
        DecisionRequest(caller_id="+12125550100", destination=f"{block}{n:04d}") for n in range(40)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 3


async def test_an_earlier_stamp_committed_later_is_still_seen(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """An instance whose clock runs 2 s ahead decides first; one whose clock runs 2 s behind
    decides next: the second sees the first, though the first carries a later local time."""
    a, b = two_pools
    await _register(a, ["+12125550100", "+12125550101"])
    ahead = make_decider(a, clock=skewed(2.0))
    behind = make_decider(b, clock=skewed(-2.0))
    dest = daytime_block() + "7777"
    first = await ahead.decide(DecisionRequest(caller_id="+12125550100", destination=dest))
    second = await behind.decide(DecisionRequest(caller_id="+12125550101", destination=dest))
    assert first.allowed
    assert second.rule is Rule.DESTINATION_INTERVAL
    # Both carry the database's time, in the order they were decided.
    assert first.at < second.at < first.at + timedelta(seconds=1)
