"""Caller-ID health, computed on read from the decision log.

The log already holds every outcome, whichever door it came through; reading a caller ID's last
calls through the ``(caller_id, at)`` index costs a few milliseconds when an operator asks, and
leaves no counters to drift from the log or to repair after a replay.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from dialguard.policy.feedback import CallerIdHealth
from dialguard.store.connection import connection
from dialguard.store.queries import q


class HealthStore:
    """Reads health figures through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def callerid(
        self, number: str, *, at: datetime, window: int, short_call_seconds: int
    ) -> CallerIdHealth:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("callerid_health"), number, window, at, short_call_seconds)
        return CallerIdHealth(
            calls=row["calls"],
            answered=row["answered"],
            short_calls=row["short_calls"],
            carrier_rejections=row["carrier_rejections"],
            complaints_24h=row["complaints_24h"],
            window=window,
        )
