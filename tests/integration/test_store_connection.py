"""The pooled connection helper: driver failures become StoreUnavailable, and a connection the
driver lost track of is replaced, not handed out again."""

from __future__ import annotations

import asyncpg
import pytest

from dialguard.store.connection import connection, create_pool
from dialguard.store.errors import StoreUnavailable


async def test_a_connection_the_driver_lost_track_of_is_closed_and_replaced(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    try:
        async with connection(pool) as conn:
            before = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(StoreUnavailable, match="cannot switch to state"):
            async with connection(pool) as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == before
                # What asyncpg raises when the server goes away in the middle of a prepare.
                raise asyncpg.exceptions.InternalClientError(
                    "cannot switch to state 11; another operation (2) is in progress"
                )
        async with connection(pool) as conn:
            after = await conn.fetchval("SELECT pg_backend_pid()")
        assert after != before
    finally:
        await pool.close()


async def test_a_query_error_is_not_taken_for_an_outage(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    try:
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            async with connection(pool) as conn:
                await conn.fetchval("SELECT 1 FROM no_such_table")
        async with connection(pool) as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
