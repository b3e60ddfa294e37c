"""Deadlines on shared timers: late by at most a grain, never early, and only their own."""

from __future__ import annotations

import asyncio

import pytest

from dialguard.deadlines import Deadlines


async def test_a_block_that_ends_in_time_is_left_alone() -> None:
    deadlines = Deadlines(0.05, grain=0.01)
    with deadlines():
        await asyncio.sleep(0.01)
    # The shared timer fires later and finds nobody to cancel.
    await asyncio.sleep(0.08)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    assert deadlines._ticks == {}


async def test_a_block_that_overruns_raises_timeout_between_its_deadline_and_a_grain_later() -> (
    None
):
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05, grain=0.02)
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines():
        await asyncio.sleep(1)
    elapsed = loop.time() - started
    assert 0.05 <= elapsed < 0.05 + 0.02 + 0.02  # its deadline, a grain, and the loop's slack


async def test_blocks_ending_in_one_grain_share_a_timer_and_each_times_out() -> None:
    deadlines = Deadlines(0.03, grain=0.05)
    outcomes: list[str] = []

    async def overrun() -> None:
        try:
            with deadlines():
                await asyncio.sleep(1)
        except TimeoutError:
            outcomes.append("timeout")

    async def in_time() -> None:
        with deadlines():
            await asyncio.sleep(0.001)
        outcomes.append("done")

    await asyncio.gather(overrun(), in_time(), overrun())
    assert sorted(outcomes) == ["done", "timeout", "timeout"]
    assert len(deadlines._ticks) == 0  # every tick that fired is gone


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(5.0)
    entered = asyncio.Event()

    async def worker() -> None:
        with deadlines():
            entered.set()
            await asyncio.sleep(1)

    task = asyncio.create_task(worker())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_deadline_outside_a_task_or_not_positive_is_refused() -> None:
    with pytest.raises(ValueError):
        Deadlines(0)
    with pytest.raises(ValueError):
        Deadlines(1.0, grain=0)

    def outside_a_task() -> None:
        Deadlines(1.0)()

    with pytest.raises(RuntimeError):
        await asyncio.get_running_loop().run_in_executor(None, outside_a_task)


def test_a_deadline_still_fires_in_the_next_event_loop() -> None:
    """A tick registered in a loop that closed before its timer fired is not reused."""
    deadlines = Deadlines(0.05, grain=0.5)

    async def in_time() -> None:
        with deadlines():
            await asyncio.sleep(0)

    async def overrun() -> str:
        try:
            with deadlines():
                await asyncio.sleep(2)
        except TimeoutError:
            return "timeout"
        return "no timeout"

    asyncio.run(in_time())  # leaves its tick's timer behind in a closed loop
    assert asyncio.run(overrun()) == "timeout"
