"""One deadline length for many concurrent tasks, on shared timers.

``asyncio.timeout`` starts and stops a timer of its own each time it is used: about 8 µs, against
well under 1 µs here (``bench/README.md``), paid by every decision. Here the deadlines that end
within the same ``grain`` share one timer; when it fires it cancels the tasks still inside, and
their ``with`` block turns the cancellation into :class:`TimeoutError`, as ``asyncio.timeout``
does. A deadline thus ends up to one grain late, never early.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class Deadlines:
    """``with deadlines():`` bounds the block to ``seconds`` (plus at most ``grain``).

    Use it only inside a running event loop, from the task the block runs in.
    """

    def __init__(self, seconds: float, *, grain: float = 0.005) -> None:
        if seconds <= 0 or grain <= 0:
            raise ValueError("a deadline and its grain must be positive")
        self.seconds = seconds
        self._grain = grain
        # Per tick (a deadline's end, in grains): the blocks inside that end then. The timers
        # are the loop's: another loop starts afresh, lest it find a tick whose timer died with
        # the loop before it.
        self._ticks: dict[int, set[_Block]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> _Block:
        return _Block(self)

    def _enter(self, block: _Block) -> None:
        loop = block.task.get_loop()
        if loop is not self._loop:
            self._loop, self._ticks = loop, {}
        tick = math.ceil((loop.time() + self.seconds) / self._grain)
        blocks = self._ticks.get(tick)
        if blocks is None:
            blocks = self._ticks[tick] = set()
            loop.call_at(tick * self._grain, self._expire, tick)
        blocks.add(block)
        block.tick = tick

    def _leave(self, block: _Block) -> None:
        blocks = self._ticks.get(block.tick)
        if blocks is not None:
            blocks.discard(block)

    def _expire(self, tick: int) -> None:
        for block in self._ticks.pop(tick, ()):
            block.expired = True
            block.task.cancel()


class _Block:
    __slots__ = ("_owner", "cancelling", "expired", "task", "tick")

    def __init__(self, owner: Deadlines) -> None:
        self._owner = owner
        self.expired = False
        self.tick = 0
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a task to cancel")
        self.task = task
        self.cancelling = 0

    def __enter__(self) -> None:
        self.cancelling = self.task.cancelling()
        self._owner._enter(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._leave(self)
        # Our cancellation, and none of anyone else's since we entered: the deadline passed.
        if (
            self.expired
            and self.task.uncancel() <= self.cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc
