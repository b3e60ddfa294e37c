"""Registered caller IDs and their states."""

from __future__ import annotations

from typing import Any

import asyncpg

from dialguard.store.connection import connection
from dialguard.store.errors import Conflict, NotFound
from dialguard.store.queries import q


class CallerIdStore:
    """Reads and writes caller IDs through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, number: str, campaign: str | None) -> dict[str, Any]:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("add_callerid"), number, campaign)
        return dict(row.items())

    async def get(self, number: str) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("get_callerid"), number)
        return dict(row.items()) if row else None

    async def list(self, state: str | None = None) -> list[dict[str, Any]]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(q("list_callerids"), state)
        return [dict(r.items()) for r in rows]

    async def set_state(self, number: str, state: str, reason: str | None) -> dict[str, Any]:
        """Move a caller ID to ``state``; a retired one never leaves retirement."""
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("set_callerid_state"), number, state, reason)
            if row is None:
                exists = await conn.fetchrow(q("get_callerid"), number)
        if row is not None:
            return dict(row.items())
        if exists is None:
            raise NotFound(f"caller ID {number} is not registered")
        raise Conflict(f"caller ID {number} is retired; retirement is final")

    async def state_counts(self) -> dict[str, int]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(q("callerid_state_counts"))
        return {r["state"]: r["n"] for r in rows}
