"""The batcher's scheduling: alone when idle, together when busy, errors kept to their item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import pytest

from dialguard.store.batching import Batcher
from dialguard.store.errors import StoreUnavailable


class Recorder:
    """``one`` and ``many`` square numbers, note each call, and can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.many_error: Exception | None = None

    async def one(self, n: int) -> int:
        self.calls.append([n])
        await self.gate.wait()
        if n < 0:
            raise ValueError(f"negative: {n}")
        return n * n

    async def many(self, ns: Sequence[int]) -> list[int]:
        self.calls.append(list(ns))
        await self.gate.wait()
        if self.many_error is not None:
            raise self.many_error
        return [n * n for n in ns]


async def test_an_item_leaves_alone_when_a_slot_is_free() -> None:
    r = Recorder()
    b = Batcher(r.one, r.many, slots=2)
    assert await b.run(3) == 9
    assert list(await asyncio.gather(b.run(4), b.run(5))) == [16, 25]
    assert r.calls == [[3], [4], [5]]


async def test_callers_just_answered_come_back_together() -> None:
    """A closed loop of callers (each sends its next item as soon as it has an answer), one
    slot: once a batch has been answered, every round trip carries all of them. Were the slot
    freed before they came back, the first of them would leave alone and the rest wait."""
    calls: list[list[int]] = []

    async def one(n: int) -> int:
        calls.append([n])
        await asyncio.sleep(0)  # a round trip suspends
        return n

    async def many(ns: Sequence[int]) -> list[int]:
        calls.append(list(ns))
        await asyncio.sleep(0)
        return list(ns)

    b = Batcher(one, many, slots=1)

    async def caller(n: int) -> None:
        for _ in range(4):
            assert await b.run(n) == n

    await asyncio.gather(*(caller(n) for n in range(1, 6)))
    # The first goes alone, the others arrive meanwhile and go next; then all go together.
    assert [len(c) for c in calls] == [1, 4, 5, 5, 5]


async def test_the_slots_carry_even_shares() -> None:
    """Eight callers in a closed loop, two slots, a database whose time grows with the batch:
    the slots settle on four items each. Without even shares one slot would carry seven while
    the other turned over single items, which cost the database the most per item."""
    sizes: list[int] = []

    async def one(n: int) -> int:
        sizes.append(1)
        await asyncio.sleep(0.002)
        return n

    async def many(ns: Sequence[int]) -> list[int]:
        sizes.append(len(ns))
        await asyncio.sleep(0.0005 * len(ns))
        return list(ns)

    b = Batcher(one, many, slots=2)

    async def caller(n: int) -> None:
        for _ in range(20):
            assert await b.run(n) == n

    await asyncio.gather(*(caller(n) for n in range(8)))
    settled = sizes[6:-6]
    assert settled and set(settled) == {4}, sizes


async def test_items_that_arrive_while_the_slots_are_busy_go_together_in_order() -> None:
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.one, r.many, slots=1, max_items=3)
    first = asyncio.create_task(b.run(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.run(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    r.gate.set()
    assert await first == 1
    assert [await t for t in rest] == [4, 9, 16, 25, 36]
    assert r.calls == [[1], [2, 3, 4], [5, 6]]


async def test_a_database_error_in_a_batch_reaches_only_the_item_that_caused_it() -> None:
    r = Recorder()
    r.gate.clear()
    r.many_error = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    b = Batcher(r.one, r.many, slots=1)
    first = asyncio.create_task(b.run(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.run(n)) for n in (2, -3, 4)]
    await asyncio.sleep(0)
    r.gate.set()
    assert await first == 1
    assert await rest[0] == 4
    with pytest.raises(ValueError, match="negative: -3"):
        await rest[1]
    assert await rest[2] == 16
    assert r.calls == [[1], [2, -3, 4], [2], [-3], [4]]


async def test_an_unavailable_store_fails_every_item_of_the_batch() -> None:
    r = Recorder()
    r.gate.clear()
    r.many_error = StoreUnavailable("connection refused")
    b = Batcher(r.one, r.many, slots=1)
    first = asyncio.create_task(b.run(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(b.run(n)) for n in (2, 3)]
    await asyncio.sleep(0)
    r.gate.set()
    assert await first == 1
    for task in rest:
        with pytest.raises(StoreUnavailable):
            await task
    assert r.calls == [[1], [2, 3]]


async def test_a_caller_that_stops_waiting_is_left_out_of_the_next_batch() -> None:
    r = Recorder()
    r.gate.clear()
    b = Batcher(r.one, r.many, slots=1)
    first = asyncio.create_task(b.run(1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(b.run(2))
    kept = asyncio.create_task(b.run(3))
    await asyncio.sleep(0)
    gone.cancel()
    r.gate.set()
    assert await first == 1
    assert await kept == 9
    assert gone.cancelled()
    assert r.calls == [[1], [3]]


async def test_the_slots_are_free_again_after_failures() -> None:
    r = Recorder()
    b = Batcher(r.one, r.many, slots=1)
    with pytest.raises(ValueError):
        await b.run(-1)
    assert await b.run(2) == 4


def test_a_batcher_needs_a_slot() -> None:
    r = Recorder()
    with pytest.raises(ValueError, match="at least one slot"):
        Batcher(r.one, r.many, slots=0)
