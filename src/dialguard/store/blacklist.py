"""Blacklists: exact numbers (bigint E.164 digits) and prefixes, global ('') or per campaign."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dialguard.policy.model import BlacklistNumberRow, BlacklistPrefixRow
from dialguard.store.connection import connection
from dialguard.store.errors import Conflict, InvalidValue
from dialguard.store.queries import q

GLOBAL = ""
StageRow = BlacklistNumberRow
PrefixStageRow = BlacklistPrefixRow


def number_key(e164: str) -> int:
    return int(e164.lstrip("+"))


def _number_row(row: Any) -> dict[str, Any]:
    out = dict(row.items())
    out["number"] = f"+{out['number']}"
    return out


def _refuse_past(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidValue(
            f"the expiry {expires_at.isoformat()} is already past: the entry would not block"
            " anything (leave the expiry out for an entry that never expires)"
        )


class BlacklistStore:
    """Reads and writes the blacklists through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add_number(
        self,
        e164: str,
        *,
        campaign: str = GLOBAL,
        source: str = "manual",
        reason: str | None = None,
        expires_at: datetime | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Add the entry, or update it: an entry already there keeps the later of its expiry
        and ``expires_at`` (none outlives any), unless ``replace``. An expiry already past is
        refused (:class:`InvalidValue`): it would silently lift the entry."""
        _refuse_past(expires_at)
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(
                q("blacklist_add_number"),
                number_key(e164),
                campaign,
                source,
                reason,
                expires_at,
                replace,
            )
        return _number_row(row)

    async def get_number(self, e164: str, campaign: str = GLOBAL) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("blacklist_get_number"), number_key(e164), campaign)
        return _number_row(row) if row else None

    async def remove_number(self, e164: str, campaign: str = GLOBAL) -> bool:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("blacklist_remove_number"), number_key(e164), campaign)
        return row is not None

    async def add_prefix(
        self,
        prefix: str,
        *,
        campaign: str = GLOBAL,
        source: str = "manual",
        reason: str | None = None,
        expires_at: datetime | None = None,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Add the entry, or update it: an entry already there keeps the later of its expiry
        and ``expires_at`` (none outlives any), unless ``replace``. An expiry already past is
        refused (:class:`InvalidValue`): it would silently lift the entry."""
        _refuse_past(expires_at)
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(
                q("blacklist_add_prefix"), prefix, campaign, source, reason, expires_at, replace
            )
        return dict(row.items())

    async def get_prefix(self, prefix: str, campaign: str = GLOBAL) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("blacklist_get_prefix"), prefix, campaign)
        return dict(row.items()) if row else None

    async def remove_prefix(self, prefix: str, campaign: str = GLOBAL) -> bool:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("blacklist_remove_prefix"), prefix, campaign)
        return row is not None

    async def import_chunk(self, rows: Sequence[StageRow]) -> int:
        """COPY one chunk into a staging table and merge it, in one transaction."""
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute(q("import_without_flush_wait"))
            await conn.execute(q("blacklist_stage"))
            await conn.copy_records_to_table(
                "blacklist_stage",
                records=[(*row, i) for i, row in enumerate(rows)],
                columns=["number", "campaign", "source", "reason", "expires_at", "ord"],
            )
            await conn.execute(q("blacklist_merge_stage"))
        return len(rows)

    async def bulk_load(self, chunks: AsyncIterator[Sequence[StageRow]]) -> int:
        """Load an empty number blacklist in one transaction: COPY, then build the key once.

        The table is locked for the whole load, so decisions wait: this is for the first load
        of a national registry, before going live or in a quiet window. Raises
        :class:`Conflict` when the table already has numbers.
        """
        loaded = 0
        async with connection(self._pool) as conn, conn.transaction():
            await conn.execute(q("import_without_flush_wait"))
            await conn.execute(q("blacklist_bulk_lock"))
            if not await conn.fetchval(q("blacklist_is_empty")):
                raise Conflict("the number blacklist is not empty; a bulk load starts from empty")
            await conn.execute(q("blacklist_bulk_prepare"))
            async for rows in chunks:
                await conn.copy_records_to_table(
                    "blacklist_numbers",
                    records=rows,
                    columns=["number", "campaign", "source", "reason", "expires_at"],
                )
                loaded += len(rows)
            try:
                # Registries rarely repeat a number: build the key straight away, and only
                # when that finds duplicates remove them (a self-join over every row) first.
                async with conn.transaction():
                    await conn.execute(q("blacklist_bulk_key"))
            except asyncpg.UniqueViolationError:
                await conn.execute(q("blacklist_bulk_dedupe"))
                await conn.execute(q("blacklist_bulk_key"))
        return loaded

    async def import_prefixes(self, rows: Sequence[PrefixStageRow]) -> int:
        """Upsert prefix rows (a few thousand at most), in one transaction."""
        async with connection(self._pool) as conn, conn.transaction():
            await conn.executemany(q("blacklist_add_prefix"), [(*r, False) for r in rows])
        return len(rows)

    async def export(self) -> AsyncIterator[dict[str, Any]]:
        """Every entry, numbers then prefixes, streamed with a server-side cursor."""
        async with connection(self._pool) as conn, conn.transaction():
            for name in ("blacklist_export_numbers", "blacklist_export_prefixes"):
                async for row in conn.cursor(q(name), prefetch=5000):
                    yield dict(row.items())
