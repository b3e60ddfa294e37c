"""Owners for background work.

:class:`TaskSet` keeps fire-and-forget tasks referenced, waits for them and cancels them.
:class:`Supervisor` keeps long-running loops alive: a loop that dies (or returns) is logged,
counted and started again after a jittered, growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

OnError = Callable[[str], None]


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, within: float) -> bool:
        """Wait for every task (new ones spawned meanwhile included); False at the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def restart_delay(failures: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Full jitter: uniform(0, min(cap, base * 2**failures)), so restarts of a loop that keeps
    failing slow down, and instances that failed together do not retry in step."""
    return random.uniform(0.0, min(cap, base * 2.0 ** min(failures, 32)))


class Supervisor:
    """Owns named long-running loops; :meth:`stop` cancels and awaits them all.

    A loop is restarted whenever it ends other than by cancellation; ``on_error(name)`` counts
    each such end. A loop that ran for ``healthy_after`` seconds before dying starts over from
    the shortest pause.
    """

    def __init__(
        self,
        on_error: OnError | None = None,
        *,
        delay: Callable[[int], float] = restart_delay,
        healthy_after: float = 60.0,
    ) -> None:
        self._on_error = on_error
        self._delay = delay
        self._healthy_after = healthy_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks:
            raise RuntimeError(f"{name} is already supervised")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                await run()
                log.error("background task %s ended by itself; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s died; restarting it", name)
            if self._on_error is not None:
                self._on_error(name)
            if loop.time() - started >= self._healthy_after:
                failures = 0
            pause = self._delay(failures)
            failures += 1
            self.restarts[name] += 1
            await asyncio.sleep(pause)
