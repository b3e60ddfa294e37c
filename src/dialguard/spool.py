"""The fail-open spool: allowed decisions made while the database was away, kept on local disk
and written back when it returns, so that no allowed call is ever missing from the counts.

One JSON line per decision in ``spool_dir/pending.jsonl``. Write-back renames the file to
``replaying.jsonl`` first, so new decisions go on into a fresh file; a replay that fails keeps
its file and is tried again, and spool ids make a repeated replay count each call once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from dialguard.policy.model import Decision
from dialguard.store.decisions import SpooledDecision
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

WriteBack = Callable[[list[SpooledDecision]], Awaitable[None]]


class Spool:
    """Owns the spool files in ``directory`` and, once started, the task that writes back."""

    def __init__(self, directory: Path, write_back: WriteBack, *, interval: float = 1.0) -> None:
        self._dir = directory
        self._pending = directory / "pending.jsonl"
        self._replaying = directory / "replaying.jsonl"
        self._write_back = write_back
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, decision: Decision, source: str, channel_id: str | None) -> None:
        record = {
            "spool_id": str(uuid.uuid4()),
            "at": decision.at.isoformat(),
            "caller_id": decision.caller_id,
            "destination": decision.destination,
            "campaign": decision.campaign,
            "source": source,
            "channel_id": channel_id,
        }
        # A small synchronous append with fsync: the call is already allowed, and this line is
        # the only trace of it until the database returns.
        with self._pending.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def pending(self) -> int:
        return sum(_count_lines(p) for p in (self._pending, self._replaying))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spool-write-back")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def flush(self) -> int:
        """Write back everything spooled; returns how many decisions were written."""
        if not self._replaying.exists():
            if not self._pending.exists():
                return 0
            self._pending.rename(self._replaying)
        rows = _read(self._replaying)
        if rows:
            await self._write_back(rows)
        self._replaying.unlink()
        log.info("wrote back %d fail-open decisions", len(rows))
        return len(rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                log.debug("spool write-back waits for the database: %s", exc)
            except Exception:
                log.exception("spool write-back failed; will retry")


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
