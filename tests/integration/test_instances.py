"""Leases and takeovers of the instances that gate one Asterisk, on a real PostgreSQL: each
instance on a pool of its own, as separate processes would be."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import asyncpg
import pytest

from dialguard.store.connection import create_pool
from dialguard.store.errors import StoreUnavailable
from dialguard.store.instances import InstanceStore

GRACE = 0.3


@pytest.fixture
async def stores(db_dsn: str) -> AsyncIterator[Callable[[], Awaitable[InstanceStore]]]:
    """Instance stores, each on a pool of its own; closed (lease given back) at the end."""
    async with AsyncExitStack() as stack:

        async def new() -> InstanceStore:
            pool = await create_pool(db_dsn, min_size=1, max_size=3)
            stack.push_async_callback(pool.close)
            store = InstanceStore(pool)
            stack.push_async_callback(store.close)
            return store

        yield new


async def until_dead(store: InstanceStore, instance_id: str) -> None:
    async with asyncio.timeout(5):
        while True:
            rows = {r.instance_id: r for r in await store.seen(GRACE)}
            if not rows[instance_id].alive:
                return
            await asyncio.sleep(0.05)


async def test_an_instance_is_alive_while_its_session_lives_and_dead_once_it_ends(
    stores: Callable[[], Awaitable[InstanceStore]],
) -> None:
    a, b = await stores(), await stores()
    assert await a.beat("a", "dialguard-a", "h1") is not None
    assert await b.beat("b", "dialguard-b", "h1") is not None
    seen = await b.seen(GRACE)
    assert [(r.instance_id, r.app, r.alive) for r in seen] == [
        ("a", "dialguard-a", True),
        ("b", "dialguard-b", True),
    ]
    # Still fresh: nobody may take it over before the grace time, even with its lease gone.
    await a.close()
    assert await b.take_over("a", 60.0) is None
    await until_dead(b, "a")
    assert await b.take_over("a", GRACE) == "dialguard-a"


async def test_a_second_process_under_the_same_instance_id_gets_no_lease(
    stores: Callable[[], Awaitable[InstanceStore]],
) -> None:
    first, second = await stores(), await stores()
    lease = await first.beat("a", "dialguard-a", "h")
    assert lease is not None
    assert await first.beat("a", "dialguard-a", "h") == lease  # held, not taken twice
    assert await second.beat("a", "dialguard-a", "h") is None
    await first.close()
    assert await second.beat("a", "dialguard-a", "h") == lease


async def test_of_survivors_racing_for_a_dead_instance_exactly_one_takes_it_over(
    stores: Callable[[], Awaitable[InstanceStore]],
) -> None:
    dead = await stores()
    await dead.beat("dead", "dialguard-dead", "h")
    survivors = [await stores() for _ in range(4)]
    for n, survivor in enumerate(survivors):
        await survivor.beat(f"s{n}", f"dialguard-s{n}", "h")
    await dead.close()
    await until_dead(survivors[0], "dead")
    for _ in range(20):
        taken = await asyncio.gather(*(s.take_over("dead", GRACE) for s in survivors))
        winners = [s for s, app in zip(survivors, taken, strict=True) if app is not None]
        assert len(winners) == 1
        await winners[0].taken_over("dead", done=False)
    # A survivor that dies mid-takeover leaves it to another.
    assert await survivors[0].take_over("dead", GRACE) == "dialguard-dead"
    await survivors[0].close()
    assert await survivors[1].take_over("dead", GRACE) == "dialguard-dead"
    # Done: the dead instance is forgotten.
    await survivors[1].taken_over("dead", done=True)
    assert "dead" not in {r.instance_id for r in await survivors[2].seen(GRACE)}
    assert await survivors[2].take_over("dead", GRACE) is None


async def test_an_instance_whose_session_broke_is_alive_again_once_it_beats(
    stores: Callable[[], Awaitable[InstanceStore]], db_dsn: str
) -> None:
    a, b = await stores(), await stores()
    await a.beat("a", "dialguard-a", "h")
    await b.beat("b", "dialguard-b", "h")
    admin = await asyncpg.connect(db_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND classid = 17017"
            " AND objid = (SELECT lease FROM dg_instances WHERE instance_id = 'a')::oid"
        )
    finally:
        await admin.close()
    await until_dead(b, "a")
    with pytest.raises(StoreUnavailable):
        await a.beat("a", "dialguard-a", "h")
    assert await a.beat("a", "dialguard-a", "h") is not None
    assert {r.instance_id: r.alive for r in await b.seen(GRACE)}["a"]
    assert await b.take_over("a", GRACE) is None


async def test_a_takeover_waits_for_decision_statements_that_started_before_it(
    stores: Callable[[], Awaitable[InstanceStore]], db_dsn: str
) -> None:
    store = await stores()
    busy = await asyncpg.connect(db_dsn)
    try:
        # A statement that mentions dg_decide and runs for a while, as a decision would.
        running = asyncio.create_task(busy.execute("SELECT pg_sleep(0.5), 'dg_decide'::text"))
        await asyncio.sleep(0.1)
        count, since = await store.decisions_running(None)
        assert count == 1
        await running
        assert (await store.decisions_running(since))[0] == 0
    finally:
        await busy.close()


async def test_an_instance_back_under_its_id_waits_for_the_survivor_taking_it_over(
    stores: Callable[[], Awaitable[InstanceStore]],
) -> None:
    old, survivor = await stores(), await stores()
    assert await old.reclaim("a") == 0  # no row yet: nothing to share
    await old.beat("a", "dialguard-a", "h")
    await survivor.beat("s", "dialguard-s", "h")
    await old.close()
    await until_dead(survivor, "a")
    assert await survivor.take_over("a", GRACE) == "dialguard-a"
    back = await stores()
    assert await back.reclaim("a") is None  # the survivor decides a's calls now
    await survivor.taken_over("a", done=False)
    lease = await back.reclaim("a")
    assert lease
    # Back and holding its own takeover: no survivor takes it over meanwhile.
    assert await survivor.take_over("a", GRACE) is None
    await back.release_reclaim(lease)
