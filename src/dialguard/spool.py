"""The fail-open spool: allowed decisions made while the database was away, kept on local disk
and written back when it returns, so that no allowed call is ever missing from the counts.

One JSON line per decision in ``spool_dir/pending.jsonl``, with the call's channel id, so that
its outcome can be matched to it. Write-back renames the file to ``replaying.jsonl`` first, so
new decisions go on into a fresh file; a replay that fails keeps its file and is tried again,
and spool ids make a repeated replay count each call once.

Disk work never runs on the event loop: :meth:`Spool.append` queues the line and returns, and
one writer task hands everything queued to a worker thread, which appends and fsyncs it as one
group (lines keep the order of ``append``). :meth:`Spool.durable` waits until every line queued
so far is on disk: the gate awaits it before it lets a fail-open call go, as the synchronous
fsync used to guarantee. The writer and the replay take turns on the files under one lock, so
a rename never splits a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from dialguard.policy.model import Decision
from dialguard.store.decisions import SpooledDecision
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

WriteBack = Callable[[list[SpooledDecision]], Awaitable[None]]
OnError = Callable[[str], None]

# A write that fails (disk full, say) is retried after this long, doubling up to the cap.
WRITE_RETRY = 0.05
WRITE_RETRY_CAP = 2.0


class Spool:
    """Owns the spool files in ``directory`` and the writer task; :meth:`stop` waits for the
    writer (bounded). The write-back loop, :meth:`write_back_forever`, is its caller's to run.

    ``on_error(task)`` is told of every failed write (``spool_write``) and every failed
    write-back attempt (``spool_replay``).
    """

    def __init__(
        self,
        directory: Path,
        write_back: WriteBack,
        *,
        interval: float = 1.0,
        on_error: OnError | None = None,
    ) -> None:
        self._dir = directory
        self._pending = directory / "pending.jsonl"
        self._replaying = directory / "replaying.jsonl"
        self._write_back = write_back
        self._interval = interval
        self._on_error = on_error
        self._queue: deque[str] = deque()
        self._queued = 0  # lines ever queued
        self._synced = 0  # lines ever made durable (they are on disk, in order)
        self._writer: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._files = asyncio.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, decision: Decision, source: str, channel_id: str | None) -> None:
        """Queue one decision for the disk; :meth:`durable` tells when it got there."""
        record = {
            "spool_id": str(uuid.uuid4()),
            "at": decision.at.isoformat(),
            "caller_id": decision.caller_id,
            "destination": decision.destination,
            "campaign": decision.campaign,
            "source": source,
            "channel_id": channel_id,
        }
        self._queue.append(json.dumps(record) + "\n")
        self._queued += 1
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queued(), name="spool-writer"
            )

    async def durable(self, within: float | None = None) -> bool:
        """Wait until every line queued so far is fsynced; False if ``within`` ran out first."""
        target = self._queued
        if self._synced >= target:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, waiter))
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(waiter)
        except TimeoutError:
            return False
        return True

    def pending(self) -> int:
        """Decisions not yet written back: queued for the disk, or in the spool files."""
        unsynced = self._queued - self._synced
        return unsynced + sum(_count_lines(p) for p in (self._pending, self._replaying))

    async def stop(self, within: float = 5.0) -> None:
        """Wait (up to ``within``) for queued lines to reach the disk, then end the writer."""
        if not await self.durable(within):
            log.error(
                "stopping with %d fail-open decisions not yet on disk", self._queued - self._synced
            )
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def flush(self) -> int:
        """Write back everything spooled; returns how many decisions were written."""
        await self.durable()
        async with self._files:
            rows = await asyncio.to_thread(self._take_replaying)
        if rows is None:
            return 0
        if rows:
            await self._write_back(rows)
        await asyncio.to_thread(self._replaying.unlink)
        log.info("wrote back %d fail-open decisions", len(rows))
        return len(rows)

    # -- the writer ---------------------------------------------------------------------------

    async def _write_queued(self) -> None:
        failures = 0
        while self._queue:
            lines = list(self._queue)
            try:
                async with self._files:
                    await asyncio.to_thread(self._write_lines, lines)
            except OSError as exc:
                # The lines stay queued: nothing is dropped while memory holds them.
                log.error("spool: cannot write %d decisions (%s); retrying", len(lines), exc)
                if self._on_error is not None:
                    self._on_error("spool_write")
                await asyncio.sleep(min(WRITE_RETRY_CAP, WRITE_RETRY * 2**failures))
                failures += 1
                continue
            failures = 0
            for _ in lines:
                self._queue.popleft()
            self._synced += len(lines)
            self._wake_waiters()

    def _write_lines(self, lines: list[str]) -> None:
        data = "".join(lines).encode("utf-8")
        with self._pending.open("ab+") as handle:
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    # A line torn by a crash: end it, or the next record would join it.
                    data = b"\n" + data
            start = handle.tell()
            try:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                # Take the group back out, so the retry does not write it twice.
                with contextlib.suppress(OSError):
                    handle.truncate(start)
                raise

    def _wake_waiters(self) -> None:
        waiting = []
        for target, waiter in self._waiters:
            if target <= self._synced:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    # -- the write-back -----------------------------------------------------------------------

    def _take_replaying(self) -> list[SpooledDecision] | None:
        """The rows to write back (renaming pending first if no replay is under way)."""
        if not self._replaying.exists():
            if not self._pending.exists():
                return None
            self._pending.rename(self._replaying)
        return _read(self._replaying)

    async def write_back_forever(self) -> None:
        """Write back every ``interval`` seconds until cancelled; the caller owns this loop."""
        failing = False
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
                failing = False
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                # Expected while the database is away: one line when it starts, then quiet.
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "spool write-back waits for the database: %s", exc)
                failing = True
                self._count("spool_replay")
            except Exception:
                log.exception("spool write-back failed; will retry")
                failing = True
                self._count("spool_replay")

    def _count(self, task: str) -> None:
        if self._on_error is not None:
            self._on_error(task)


def _read(path: Path) -> list[SpooledDecision]:
    rows: list[SpooledDecision] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                r = json.loads(line)
                rows.append(
                    SpooledDecision(
                        spool_id=r["spool_id"],
                        at=datetime.fromisoformat(r["at"]),
                        caller_id=r["caller_id"],
                        destination=r["destination"],
                        campaign=r["campaign"],
                        source=r["source"],
                        channel_id=r.get("channel_id"),
                    )
                )
            except (ValueError, KeyError, TypeError):
                # A torn last line after a crash: keep going, the rest is good.
                log.error("spool %s line %d is unreadable and is skipped", path, number)
    return rows


def _count_lines(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0
