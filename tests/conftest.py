"""Shared fixtures: a real PostgreSQL for the whole run and a fresh database for each test.

The server is the embedded one in a temporary directory, or the one named by
``DIALGUARD_TEST_DSN``. Each test gets a database copied from a migrated template, which takes
milliseconds and keeps tests independent.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from dialguard.store.connection import create_pool
from dialguard.store.embedded import EmbeddedPostgres, temporary_data_dir
from dialguard.store.migrate import migrate

TEMPLATE = "dg_template"
_counter = itertools.count()


def dsn_with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if os.environ.get("DIALGUARD_TEST_DSN"):
        yield os.environ["DIALGUARD_TEST_DSN"]
        return
    with temporary_data_dir(prefix="dialguard-test-pg-") as tmp:
        server = EmbeddedPostgres(tmp / "pgdata")
        dsn = server.start()
        try:
            yield dsn
        finally:
            server.stop()


@pytest.fixture(scope="session")
def template_dsn(pg_admin_dsn: str) -> str:
    async def build() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await admin.close()
        pool = await create_pool(dsn_with_database(pg_admin_dsn, TEMPLATE), min_size=1, max_size=2)
        try:
            await migrate(pool)
        finally:
            await pool.close()

    asyncio.run(build())
    return dsn_with_database(pg_admin_dsn, TEMPLATE)


@asynccontextmanager
async def fresh_database(admin_dsn: str, name: str) -> AsyncIterator[str]:
    """A database copied from the migrated template; dropped on exit."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    try:
        yield dsn_with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def db_dsn(pg_admin_dsn: str, template_dsn: str) -> AsyncIterator[str]:
    async with fresh_database(pg_admin_dsn, f"dg_test_{os.getpid()}_{next(_counter)}") as dsn:
        yield dsn


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, min_size=1, max_size=10)
    yield p
    await p.close()
