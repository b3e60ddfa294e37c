"""The fail-open spool: allowed decisions made while the database was away, kept on local disk
and written back when it returns, so that no allowed call is ever missing from the counts.

One JSON line per decision in ``spool_dir/pending.jsonl``, with the call's channel id. The
outcomes the database could not take go there too (``"kind": "outcome"``): a fail-open call's,
keyed by its channel, and any other after its retries ran out. Write-back renames the file to
``replaying.jsonl`` first, so new lines go on into a fresh file; it writes the decisions back,
then the outcomes (a fail-open call's once its decision is in the database, found by channel).
An outcome whose decision is not there yet goes back into the spool for the next round, for up
to ``outcome_max_age``. A replay that fails keeps its file and is tried again; spool ids make a
repeated replay count each call once, and a decision takes one outcome.

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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dialguard.outcomes import CallOutcome
from dialguard.policy.codes import Outcome
from dialguard.policy.model import Decision
from dialguard.store.decisions import SpooledDecision
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

WriteBack = Callable[[list[SpooledDecision]], Awaitable[None]]
# Records outcomes; returns those whose decision is not in the database yet.
OutcomeWriteBack = Callable[[list[CallOutcome]], Awaitable[list[CallOutcome]]]
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
        write_back_outcomes: OutcomeWriteBack | None = None,
        outcome_max_age: float = 86400.0,
    ) -> None:
        self._dir = directory
        self._pending = directory / "pending.jsonl"
        self._replaying = directory / "replaying.jsonl"
        self._write_back = write_back
        self._interval = interval
        self._on_error = on_error
        self._write_back_outcomes = write_back_outcomes
        self._outcome_max_age = outcome_max_age
        self._queue: deque[str] = deque()
        self._queued = 0  # lines ever queued
        self._synced = 0  # lines ever made durable (they are on disk, in order)
        self._writer: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._files = asyncio.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def append(
        self,
        decision: Decision,
        source: str,
        channel_id: str | None,
        spool_id: str | None = None,
        origin: str | None = None,
    ) -> None:
        """Queue one decision for the disk; :meth:`durable` tells when it got there.

        ``spool_id``: the id the decision was sent to the database under, if it was (its answer
        came too late); the write-back then counts the two as one call."""
        record = {
            "spool_id": spool_id or str(uuid.uuid4()),
            "at": decision.at.isoformat(),
            "caller_id": decision.caller_id,
            "destination": decision.destination,
            "campaign": decision.campaign,
            "source": source,
            "channel_id": channel_id,
            "origin": origin,
        }
        self._enqueue(json.dumps(record) + "\n")

    def append_outcome(self, outcome: CallOutcome) -> None:
        """Queue an outcome the database could not take, for the write-back to record."""
        self._enqueue(_outcome_line(outcome, str(uuid.uuid4()), datetime.now(UTC)))

    def _enqueue(self, line: str) -> None:
        self._queue.append(line)
        self._queued += 1
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._queue and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(
                self._write_queued(), name="spool-writer"
            )

    async def durable(self, within: float | None = None) -> bool:
        """Wait until every line queued so far is fsynced; False if ``within`` ran out first."""
        target = self._queued
        if self._synced >= target:
            return True
        self._ensure_writer()  # after stop() cancelled it with lines still queued
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
        """Write back everything spooled; returns how many decisions and outcomes were written."""
        await self.durable()
        async with self._files:
            taken = await asyncio.to_thread(self._take_replaying)
        if taken is None:
            return 0
        rows, outcomes = taken
        if rows:
            await self._write_back(rows)
        waiting = [o for o, _, _ in outcomes]
        if outcomes and self._write_back_outcomes is not None:
            waiting = await self._write_back_outcomes(waiting)
        kept = self._requeue(outcomes, waiting)
        # What goes back into the spool is on disk before the file it came from is gone.
        await self.durable()
        await asyncio.to_thread(self._replaying.unlink)
        written = len(rows) + len(outcomes) - len(waiting)
        if written or len(waiting) != kept:
            log.info(
                "wrote back %d fail-open decisions and %d outcomes; %d outcomes wait for their"
                " decision",
                len(rows),
                len(outcomes) - len(waiting),
                kept,
            )
        return written

    def _requeue(
        self, outcomes: list[tuple[CallOutcome, str, datetime]], waiting: list[CallOutcome]
    ) -> int:
        """Put the outcomes still waiting back into the spool (as they were); returns how many.
        One older than ``outcome_max_age`` is given up with an error line."""
        left = {id(o) for o in waiting}
        now = datetime.now(UTC)
        kept = 0
        for outcome, spool_id, spooled_at in outcomes:
            if id(outcome) not in left:
                continue
            if (now - spooled_at).total_seconds() > self._outcome_max_age:
                log.error(
                    "outcome of channel %s given up: no decision for it reached the database"
                    " since %s",
                    outcome.channel_id,
                    spooled_at.isoformat(),
                )
                self._count("spool_replay")
                continue
            self._enqueue(_outcome_line(outcome, spool_id, spooled_at))
            kept += 1
        return kept

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

    def _take_replaying(
        self,
    ) -> tuple[list[SpooledDecision], list[tuple[CallOutcome, str, datetime]]] | None:
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


def _read(
    path: Path,
) -> tuple[list[SpooledDecision], list[tuple[CallOutcome, str, datetime]]]:
    """The decisions and the outcomes (each with its spool id and spool time) in a file."""
    rows: list[SpooledDecision] = []
    outcomes: list[tuple[CallOutcome, str, datetime]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                r = json.loads(line)
                if r.get("kind") == "outcome":
                    outcomes.append(_outcome(r))
                    continue
                rows.append(
                    SpooledDecision(
                        spool_id=r["spool_id"],
                        at=datetime.fromisoformat(r["at"]),
                        caller_id=r["caller_id"],
                        destination=r["destination"],
                        campaign=r["campaign"],
                        source=r["source"],
                        channel_id=r.get("channel_id"),
                        origin=r.get("origin"),
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                # A torn last line after a crash: keep going, the rest is good.
                log.error("spool %s line %d is unreadable and is skipped", path, number)
    return rows, outcomes


def _outcome_line(outcome: CallOutcome, spool_id: str, spooled_at: datetime) -> str:
    record: dict[str, Any] = {
        "kind": "outcome",
        "spool_id": spool_id,
        "spooled_at": spooled_at.isoformat(),
        "decision_id": outcome.decision_id,
        "channel_id": outcome.channel_id,
        "outcome": outcome.outcome.value,
        "answered_seconds": outcome.answered_seconds,
        "cause": outcome.cause,
        "sip_code": outcome.sip_code,
        "at": outcome.at.isoformat(),
        "campaign": outcome.campaign,
        "caller_id": outcome.caller_id,
    }
    return json.dumps(record) + "\n"


def _outcome(r: dict[str, Any]) -> tuple[CallOutcome, str, datetime]:
    outcome = CallOutcome(
        decision_id=None if r["decision_id"] is None else int(r["decision_id"]),
        outcome=Outcome(r["outcome"]),
        answered_seconds=r["answered_seconds"],
        cause=r["cause"],
        sip_code=r["sip_code"],
        at=datetime.fromisoformat(r["at"]),
        campaign=r["campaign"],
        caller_id=r["caller_id"],
        channel_id=r["channel_id"],
    )
    return outcome, str(r["spool_id"]), datetime.fromisoformat(r["spooled_at"])


def _count_lines(path: Path) -> int:
    try:
        with path.open(encoding="utf-8") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0
