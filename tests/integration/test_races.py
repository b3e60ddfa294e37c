"""Concurrent decisions from two separate pools (two "instances") never exceed a limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dialguard.decider import Decider
from dialguard.policy.codes import Rule
from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from tests.support import NOON_NY, BuiltinProfiles, make_decider


@pytest.fixture
async def two_pools(db_dsn: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    a = await create_pool(db_dsn, min_size=8, max_size=16)
    b = await create_pool(db_dsn, min_size=8, max_size=16)
    yield a, b
    await a.close()
    await b.close()


async def _race(deciders: list[Decider], requests: list[DecisionRequest]) -> list[Rule | None]:
    results = await asyncio.gather(
        *(deciders[i % len(deciders)].decide(r) for i, r in enumerate(requests))
    )
    return [d.rule for d in results]


async def test_64_concurrent_calls_to_one_destination_allow_exactly_one(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    callers = [f"+1212555{n:04d}" for n in range(300, 364)]
    for c in callers:
        await CallerIdStore(a).add(c, None)
    profiles = BuiltinProfiles(rotation_per_destination="off")
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    requests = [
        DecisionRequest(caller_id=c, destination="+12122641234", at=NOON_NY, as_of=True)
        for c in callers
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 1
    assert set(rules) - {None} == {Rule.DESTINATION_INTERVAL}


async def test_concurrent_calls_from_one_caller_id_allow_exactly_its_cap(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    await CallerIdStore(a).add("+12125550100", None)
    profiles = BuiltinProfiles(callerid_caps=["5/1m"], callerid_max_concurrent="off")
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    requests = [
        DecisionRequest(
            caller_id="+12125550100", destination=f"+1212264{n:04d}", at=NOON_NY, as_of=True
        )
        for n in range(64)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 5
    assert set(rules) - {None} == {Rule.CALLERID_RATE}


async def test_concurrent_new_caller_ids_respect_the_campaign_rotation_limit(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    callers = [f"+1212555{n:04d}" for n in range(400, 432)]
    for c in callers:
        await CallerIdStore(a).add(c, None)
    profiles = BuiltinProfiles(campaign_callerids_per_day=4)
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    requests = [
        DecisionRequest(
            caller_id=c, destination=f"+1212264{i:04d}", campaign="spring", at=NOON_NY, as_of=True
        )
        for i, c in enumerate(callers)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 4
    assert set(rules) - {None} == {Rule.CAMPAIGN_ROTATION}


async def test_concurrent_calls_respect_caller_id_concurrency(
    two_pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    a, b = two_pools
    await CallerIdStore(a).add("+12125550100", None)
    profiles = BuiltinProfiles(callerid_caps=[], callerid_max_concurrent=3)
    deciders = [make_decider(a, profiles), make_decider(b, profiles)]
    requests = [
        DecisionRequest(
            caller_id="+12125550100", destination=f"+1212264{n:04d}", at=NOON_NY, as_of=True
        )
        for n in range(40)
    ]
    rules = await _race(deciders, requests)
    assert rules.count(None) == 3
