"""Gathering concurrent decisions into batches: one round trip and one commit for many.

A decision waits only while every batch slot is busy: with a slot free it leaves at once, alone,
so a quiet system pays nothing. Under load the decisions that arrive while the slots are busy go
together in the next batch, which is where a database on a small machine spends its time (the
commit's flush and the round trip are paid once a batch instead of once a decision). A slot that
carried a batch is freed one turn of the event loop after its answers went out, so the callers
just answered, who come straight back under load, go together too; each batch takes an even
share of the work, so the slots carry batches of like size.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from dialguard.store.errors import StoreConflict

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass(slots=True)
class _Waiting(Generic[P, R]):
    item: P
    answer: asyncio.Future[R]


class Batcher(Generic[P, R]):
    """Runs items through ``one`` (a batch of one) or ``many`` (several, answers in order).

    At most ``slots`` calls are in flight at once, each with at most ``max_items`` items and an
    even share of the items waiting or in flight (so no slot turns over single items while
    another carries the rest). When
    ``many`` fails with a database error (a deadlock, or one item the database rejects), each
    of its items is run again on its own through ``one``, so an error reaches only the item
    that caused it. A caller that stops waiting (a deadline) before its batch leaves is dropped
    from it; after that, its item is decided and recorded but nobody reads the answer.
    """

    def __init__(
        self,
        one: Callable[[P], Awaitable[R]],
        many: Callable[[Sequence[P]], Awaitable[list[R]]],
        *,
        slots: int,
        max_items: int = 64,
    ) -> None:
        if slots < 1 or max_items < 1:
            raise ValueError("a batcher needs at least one slot and one item a batch")
        self._one = one
        self._many = many
        self._slots = slots
        self._max_items = max_items
        self._queue: deque[_Waiting[P, R]] = deque()
        self._busy = 0
        self._carrying = 0  # items in the calls in flight
        self._running: set[asyncio.Task[None]] = set()
        # How many calls went out at each size (1 = alone), and who else wants to know.
        self.sizes: Counter[int] = Counter()
        self.on_send: Callable[[int], None] | None = None

    async def run(self, item: P) -> R:
        if self._busy < self._slots and not self._queue:
            # A free slot and nobody waiting: go alone, from the caller's own task.
            self._busy += 1
            self._carrying += 1
            self._sent(1)
            try:
                return await self._one(item)
            finally:
                # It found the system idle: nobody else was answered with it to wait for.
                self._release(1)
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(item, answer))
        self._dispatch()
        return await answer

    def _sent(self, size: int) -> None:
        self.sizes[size] += 1
        if self.on_send is not None:
            self.on_send(size)

    def _dispatch(self) -> None:
        while self._queue and self._busy < self._slots:
            # An even share of all the items waiting or in flight: the slots then carry batches
            # of like size, instead of one large batch beside a slot turning over single items.
            share = -(-(len(self._queue) + self._carrying) // self._slots)
            limit = min(self._max_items, share)
            batch: list[_Waiting[P, R]] = []
            while self._queue and len(batch) < limit:
                waiting = self._queue.popleft()
                if not waiting.answer.done():
                    batch.append(waiting)
            if not batch:
                continue
            self._busy += 1
            self._carrying += len(batch)
            self._sent(len(batch))
            task = asyncio.create_task(self._send(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _send(self, batch: list[_Waiting[P, R]]) -> None:
        try:
            if len(batch) == 1:
                await self._answer_alone(batch[0])
            else:
                try:
                    answers = await self._many([w.item for w in batch])
                except (asyncpg.PostgresError, StoreConflict) as exc:
                    # A deadlock, or one item the database rejects: each alone, so an error
                    # reaches only the item that caused it.
                    log.warning("a batch of %d failed (%s); sending each alone", len(batch), exc)
                    for waiting in batch:
                        await self._answer_alone(waiting)
                except Exception as exc:
                    for waiting in batch:
                        _fail(waiting, exc)
                else:
                    for waiting, answer in zip(batch, answers, strict=True):
                        if not waiting.answer.done():
                            waiting.answer.set_result(answer)
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.answer.cancel()
            raise
        finally:
            self._release_soon(len(batch))

    def _release_soon(self, items: int) -> None:
        """Free a slot once the callbacks already queued have run.

        Those callbacks are the callers just answered: under load they come straight back with
        their next items, which then find the slot still taken, queue, and leave together in
        one batch. Freed at once, the slot would carry the first of them alone and leave the
        rest waiting for the next free slot, so batches would stay small.
        """
        asyncio.get_running_loop().call_soon(self._release, items)

    def _release(self, items: int) -> None:
        self._busy -= 1
        self._carrying -= items
        self._dispatch()

    async def _answer_alone(self, waiting: _Waiting[P, R]) -> None:
        if waiting.answer.done():
            return
        try:
            answer = await self._one(waiting.item)
        except Exception as exc:
            _fail(waiting, exc)
        else:
            if not waiting.answer.done():
                waiting.answer.set_result(answer)


def _fail(waiting: _Waiting[P, R], exc: Exception) -> None:
    if not waiting.answer.done():
        waiting.answer.set_exception(exc)
