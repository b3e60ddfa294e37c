"""Supervised background loops: a loop that dies is counted and started again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dialguard.tasks import Supervisor, restart_delay


async def test_a_loop_that_dies_is_restarted_and_each_death_counted() -> None:
    counted: list[str] = []
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"death {runs}")
        healthy.set()
        await asyncio.Event().wait()  # then runs for good

    supervisor = Supervisor(counted.append, delay=lambda failures: 0.01 * failures)
    supervisor.start("housekeeping", flaky)
    async with asyncio.timeout(2.0):
        await healthy.wait()
    assert runs == 4
    assert counted == ["housekeeping"] * 3
    assert supervisor.restarts["housekeeping"] == 3
    assert supervisor.running("housekeeping")
    await supervisor.stop()
    assert not supervisor.running("housekeeping")


async def test_a_loop_that_returns_is_started_again() -> None:
    counted: list[str] = []
    runs = 0
    third = asyncio.Event()

    async def returns() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()
            await asyncio.Event().wait()

    supervisor = Supervisor(counted.append, delay=lambda failures: 0.0)
    supervisor.start("spool_replay", returns)
    async with asyncio.timeout(2.0):
        await third.wait()
    await supervisor.stop()
    assert counted == ["spool_replay", "spool_replay"]


async def test_stop_cancels_and_awaits_every_loop() -> None:
    cancelled: list[str] = []

    def forever(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return run

    supervisor = Supervisor()
    supervisor.start("housekeeping", forever("housekeeping"))
    supervisor.start("spool_replay", forever("spool_replay"))
    await asyncio.sleep(0)
    await supervisor.stop()
    assert sorted(cancelled) == ["housekeeping", "spool_replay"]


def test_restart_pauses_grow_with_failures_up_to_the_cap() -> None:
    for failures in range(40):
        assert 0.0 <= restart_delay(failures, base=0.5, cap=30.0) <= min(30.0, 0.5 * 2**failures)
    assert max(restart_delay(20, base=0.5, cap=30.0) for _ in range(200)) > 1.0
