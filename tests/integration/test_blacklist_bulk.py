"""The bulk first load of a national registry: COPY into an empty table, the key built once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import asyncpg
import pytest

from dialguard.blacklist_csv import StageRow
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.errors import Conflict


async def chunks(*parts: Sequence[StageRow]) -> AsyncIterator[Sequence[StageRow]]:
    for part in parts:
        yield part


async def test_bulk_load_keeps_the_last_row_of_a_key_and_rebuilds_the_key(
    pool: asyncpg.Pool,
) -> None:
    store = BlacklistStore(pool)
    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    loaded = await store.bulk_load(
        chunks(
            [(12122641234, "", "dnc", "first", None), (12122641235, "", "dnc", None, None)],
            [
                (12122641234, "", "dnc", "second", expiry),
                (12122641234, "spring", "crm", None, None),
            ],
        )
    )
    assert loaded == 4
    row = await store.get_number("+12122641234")
    assert row is not None and row["reason"] == "second" and row["expires_at"] == expiry
    assert await store.get_number("+12122641234", "spring") is not None
    # The primary key is back: a normal upsert works on the loaded table.
    await store.add_number("+12122641235", reason="again")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM blacklist_numbers") == 3
        key = await conn.fetchval(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'blacklist_numbers'::regclass"
            " AND contype = 'p'"
        )
    assert key == "blacklist_numbers_pkey"


async def test_bulk_load_refuses_a_table_that_has_numbers(pool: asyncpg.Pool) -> None:
    store = BlacklistStore(pool)
    await store.add_number("+12122641234")
    with pytest.raises(Conflict):
        await store.bulk_load(chunks([(12122641235, "", "dnc", None, None)]))
    assert await store.get_number("+12122641235") is None
    assert await store.get_number("+12122641234") is not None
