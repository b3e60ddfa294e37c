"""The schema: numbered migrations, applied once each, then the live functions.

``sql/migrations/NNN_*.sql`` hold schema changes, applied once each in order.
``sql/functions/*.sql`` hold the functions as they run now (every statement ``CREATE OR
REPLACE``), re-applied whenever a file's text changes, as Flyway's repeatable migrations are.
A release never re-applies its functions over a database that a newer release migrated: the
newer functions stay.

Only ``dialguard migrate`` and ``dialguard serve`` change the schema; every other command checks
it with :func:`check_schema` and refuses to run on an older one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

from dialguard.store.connection import connection

log = logging.getLogger(__name__)

# Any fixed key: every dialguard process that migrates takes the same lock and waits its turn.
_MIGRATION_LOCK = 0x6469616C67756172

_TABLES = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS schema_functions (
    name text PRIMARY KEY, checksum text NOT NULL, release_version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());
"""


class SchemaOutdated(Exception):
    """The database's schema is older than this release needs; ``dialguard migrate`` updates it."""


@dataclass(frozen=True, slots=True)
class SqlFile:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each migration, in order."""
    found = []
    for f in _files("migrations"):
        found.append((int(f.name.split("_", 1)[0]), f.name, f.sql))
    return sorted(found)


def function_files() -> list[SqlFile]:
    """The live functions' files, in name order (the order they are applied in)."""
    return _files("functions")


def _files(folder: str) -> list[SqlFile]:
    root = resources.files("dialguard.store") / "sql" / folder
    return sorted(
        (
            SqlFile(entry.name, entry.read_text(encoding="utf-8"))
            for entry in root.iterdir()
            if entry.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )


def release_version() -> int:
    """The newest migration this release knows."""
    return migration_files()[-1][0]


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply every migration not yet applied, then every changed function file; returns the
    names applied now."""
    applied_now: list[str] = []
    async with connection(pool) as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(_TABLES)
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("applied migration %s", name)
                applied_now.append(name)
                done.add(version)
            ours = release_version()
            if max(done) > ours:
                log.warning(
                    "the database was migrated by a newer release (%d > %d); its functions stay",
                    max(done),
                    ours,
                )
                return applied_now
            stored = await _function_checksums(conn)
            for f in function_files():
                if stored.get(f.name) == f.checksum:
                    continue
                async with conn.transaction():
                    await conn.execute(f.sql)
                    await conn.execute(
                        "INSERT INTO schema_functions (name, checksum, release_version)"
                        " VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE"
                        " SET checksum = excluded.checksum,"
                        " release_version = excluded.release_version, applied_at = now()",
                        f.name,
                        f.checksum,
                        ours,
                    )
                log.info("applied functions %s", f.name)
                applied_now.append(f.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def check_schema(pool: asyncpg.Pool) -> None:
    """Raise :class:`SchemaOutdated` unless every migration and function file of this release
    is in the database (a newer release's schema is fine: it keeps the older signatures)."""
    async with connection(pool) as conn:
        has_tables = await conn.fetchval(
            "SELECT to_regclass('schema_migrations') IS NOT NULL"
            " AND to_regclass('schema_functions') IS NOT NULL"
        )
        done: set[int] = set()
        stored: dict[str, str] = {}
        if has_tables:
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            stored = await _function_checksums(conn)
    missing = [name for version, name, _ in migration_files() if version not in done]
    if not missing and max(done) == release_version():
        missing = [f.name for f in function_files() if stored.get(f.name) != f.checksum]
    if missing:
        raise SchemaOutdated(
            "the database schema is older than this release needs (missing: "
            + ", ".join(missing)
            + "); run `dialguard migrate` (or start `dialguard serve`) first"
        )


async def _function_checksums(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT name, checksum FROM schema_functions")
    return {r["name"]: r["checksum"] for r in rows}
