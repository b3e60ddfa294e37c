"""The instances that gate one Asterisk together: leases, heartbeats and takeovers.

An :class:`InstanceStore` keeps one connection of the pool for itself, the *lease session*: the
session-level advisory lock on the instance's lease lives on it, and so does the takeover lock
of a dead instance while this one decides its calls. The connection is taken on the first call
and given back (its locks released first: the pool does not reset sessions) by :meth:`close`;
a connection that breaks is dropped and the next call takes a fresh one, so the lease is taken
again on the next heartbeat. The SQL is in ``sql/functions/instances.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dialguard.store.connection import UNAVAILABLE_ERRORS, unavailable
from dialguard.store.errors import StoreUnavailable


@dataclass(frozen=True, slots=True)
class InstanceRow:
    instance_id: str
    app: str
    profiles_hash: str
    started_at: datetime
    seen_at: datetime
    alive: bool


class InstanceStore:
    """The lease session of one instance, on a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 2.0) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        # One statement at a time on the lease session.
        self._lock = asyncio.Lock()

    async def beat(self, instance_id: str, app: str, profiles_hash: str) -> int | None:
        """Refresh this instance's row and hold its lease; None when another session holds it."""
        value = await self._call(
            "SELECT dg_instance_beat($1, $2, $3)", instance_id, app, profiles_hash
        )
        return None if value is None else int(value)

    async def seen(self, grace: float) -> list[InstanceRow]:
        """Every instance with a row, oldest first, and whether it is alive."""
        rows = await self._fetch("SELECT * FROM dg_instances_seen($1)", _ms(grace))
        return [InstanceRow(**dict(r.items())) for r in rows]

    async def take_over(self, instance_id: str, grace: float) -> str | None:
        """Hold the takeover of a dead instance; its app name, or None (alive, gone, or taken)."""
        value = await self._call("SELECT dg_instance_takeover($1, $2)", instance_id, _ms(grace))
        return None if value is None else str(value)

    async def taken_over(self, instance_id: str, *, done: bool) -> None:
        """Release a takeover; with ``done`` the dead instance's row goes too."""
        await self._call("SELECT dg_instance_taken_over($1, $2)", instance_id, done)

    async def reclaim(self, instance_id: str) -> int | None:
        """Hold this instance's own takeover lock; the lease locked (0: no row yet, nothing
        locked), or None while a survivor holds it."""
        value = await self._call("SELECT dg_instance_reclaim($1)", instance_id)
        return None if value is None else int(value)

    async def release_reclaim(self, lease: int) -> None:
        if lease:
            await self._call("SELECT pg_advisory_unlock(17018, $1)", lease)

    async def decisions_running(self, since: datetime | None) -> tuple[int, datetime]:
        """Decision statements of other sessions started before ``since`` (now when None) that
        still run, and the time counted from."""
        rows = await self._fetch("SELECT * FROM dg_decisions_running($1)", since)
        return int(rows[0]["running"]), rows[0]["since"]

    async def close(self) -> None:
        """Release the lease and any takeover, and give the connection back to the pool."""
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                with contextlib.suppress(*UNAVAILABLE_ERRORS, asyncpg.PostgresError):
                    async with asyncio.timeout(self._timeout):
                        await conn.execute("SELECT pg_advisory_unlock_all()")
            except TimeoutError:
                conn.terminate()
            await self._pool.release(conn)

    async def _call(self, sql: str, *args: Any) -> Any:
        rows = await self._fetch(sql, *args)
        return rows[0][0] if rows else None

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._lock:
            try:
                if self._conn is None:
                    async with asyncio.timeout(self._timeout):
                        self._conn = await self._pool.acquire()
                async with asyncio.timeout(self._timeout):
                    return list(await self._conn.fetch(sql, *args))
            except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, TimeoutError) as exc:
                await self._drop()
                if isinstance(exc, TimeoutError):
                    raise StoreUnavailable("the lease session did not answer", "stalled") from exc
                translated = unavailable(exc)
                if translated is None:
                    raise
                raise translated from exc

    async def _drop(self) -> None:
        """Forget a broken lease session: its locks die with it (terminated, not reused)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # The pool may have taken a lost connection back already: then both refuse.
            with contextlib.suppress(Exception):
                conn.terminate()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
