"""The set-based reads of a scrub: one round trip per batch of destinations.

Only destinations the database knows something about come back (a blacklist entry or allowed
calls in the look-back window); every other destination of the batch has nothing against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dialguard.store.connection import connection
from dialguard.store.queries import q

_FACTS = q("scrub_facts")
Call = tuple[datetime, str, int | None]
"""One allowed call to a destination: (at, caller ID, answered seconds or None)."""


@dataclass(frozen=True, slots=True)
class KnownDestination:
    """The blacklist entry that denies a destination (``blacklist``), else its recent calls."""

    blacklist: dict[str, Any] | None
    calls: tuple[Call, ...]


class ScrubStore:
    """Reads scrub facts through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def prefix_lengths(self, campaign: str) -> list[int]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(q("scrub_prefix_lengths"), campaign)
        return [int(r["n"]) for r in rows]

    async def known(
        self,
        destinations: Sequence[str],
        *,
        campaign: str,
        at: datetime,
        lookback_s: int,
        prefix_lengths: Sequence[int],
    ) -> dict[str, KnownDestination]:
        """Facts for the E.164 ``destinations`` the database knows, keyed by destination."""
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                _FACTS, list(destinations), campaign, at, lookback_s, list(prefix_lengths)
            )
        return {row["dest"]: _known(row) for row in rows}


def _known(row: Any) -> KnownDestination:
    if row["number_source"] is not None:
        return KnownDestination(
            {
                "match": "number",
                "value": row["dest"],
                "scope": "campaign" if row["number_campaign"] else "global",
                "source": row["number_source"],
                "expires_at": row["number_expires_at"],
            },
            (),
        )
    if row["prefix"] is not None:
        return KnownDestination(
            {
                "match": "prefix",
                "value": row["prefix"],
                "scope": "campaign" if row["prefix_campaign"] else "global",
                "source": row["prefix_source"],
                "expires_at": row["prefix_expires_at"],
            },
            (),
        )
    return KnownDestination(None, tuple(zip(row["ats"], row["callers"], row["answered"], strict=True)))
