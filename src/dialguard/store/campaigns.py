"""Campaigns: profile, overrides and the paused flag; every change bumps the version."""

from __future__ import annotations

from typing import Any

import asyncpg

from dialguard.store.connection import connection
from dialguard.store.queries import q


class CampaignStore:
    """Reads and writes campaigns through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, name: str) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("get_campaign"), name)
        return dict(row.items()) if row else None

    async def list(self) -> list[dict[str, Any]]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(q("list_campaigns"))
        return [dict(r.items()) for r in rows]

    async def set(self, name: str, profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("set_campaign"), name, profile, overrides)
        return dict(row.items())

    async def set_paused(self, name: str, paused: bool, reason: str | None) -> dict[str, Any]:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("pause_campaign"), name, paused, reason)
        return dict(row.items())
