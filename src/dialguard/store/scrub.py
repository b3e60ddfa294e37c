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

    async def prefix_count(self, campaign: str) -> int:
        async with connection(self._pool) as conn:
            count: int = await conn.fetchval(q("scrub_prefix_count"), campaign)
        return count

    async def prefixes(self, campaign: str, at: datetime) -> dict[str, dict[str, Any]]:
        """The live prefix entries for ``campaign`` (its own, else global), keyed by prefix."""
        async with connection(self._pool) as conn, conn.transaction():
            return {
                row["prefix"]: _blacklist("prefix", row["prefix"], row)
                async for row in conn.cursor(q("scrub_prefixes"), campaign, at, prefetch=5000)
            }

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
                _FACTS, ",".join(destinations), campaign, at, lookback_s, list(prefix_lengths)
            )
        return {row["dest"]: _known(row) for row in rows}


def _blacklist(match: str, value: str, row: Any, column: str = "") -> dict[str, Any]:
    """The facts of a blacklist match, as ``dg_decide`` states them."""
    return {
        "match": match,
        "value": value,
        "scope": "campaign" if row[column + "campaign"] else "global",
        "source": row[column + "source"],
        "expires_at": row[column + "expires_at"],
    }


def _known(row: Any) -> KnownDestination:
    if row["number_source"] is not None:
        return KnownDestination(_blacklist("number", row["dest"], row, "number_"), ())
    if row["prefix"] is not None:
        return KnownDestination(_blacklist("prefix", row["prefix"], row, "prefix_"), ())
    return KnownDestination(
        None, tuple(zip(row["ats"], row["callers"], row["answered"], strict=True))
    )
