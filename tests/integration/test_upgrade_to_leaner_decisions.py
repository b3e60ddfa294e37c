"""Upgrading a database that already holds data through migrations 007 (leaner decisions), 008
(set-based decisions) and 009 (rules sent once a batch)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from dialguard.policy.codes import Rule
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore
from dialguard.store.migrate import function_files, migrate, migration_files
from tests.conftest import dsn_with_database
from tests.support import NOON_NY, BuiltinProfiles, make_decider

CID = "+12125550100"
PROFILE = BuiltinProfiles(callerid_max_concurrent=1, callerid_caps=[])


@pytest.fixture
async def pool_at_006(pg_admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A database migrated up to 006 only, as a running system before the upgrade."""
    name = f"dg_upgrade_{os.getpid()}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    pool = await create_pool(dsn_with_database(pg_admin_dsn, name), min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, file_name, sql in migration_files():
                if version > 6:
                    break
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    file_name,
                )
        yield pool
    finally:
        await pool.close()
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


async def decide(pool: asyncpg.Pool, destination: str, seconds: int = 0) -> Decision:
    return await make_decider(pool, PROFILE).decide(
        DecisionRequest(
            caller_id=CID,
            destination=destination,
            at=NOON_NY + timedelta(seconds=seconds),
            as_of=True,
        )
    )


async def test_the_upgrade_keeps_listed_prefixes_and_calls_still_up(
    pool_at_006: asyncpg.Pool,
) -> None:
    pool = pool_at_006
    await CallerIdStore(pool).add(CID, None)
    await BlacklistStore(pool).add_prefix("+1718264")
    # A call allowed before the upgrade, still up: the row the 006 schema's dg_decide left.
    up_id = await pool.fetchval(
        "INSERT INTO decisions (at, caller_id, destination, campaign, allowed, source)"
        " VALUES ($1, $2, '+12122640001', 'default', true, 'test') RETURNING id",
        NOON_NY,
        CID,
    )

    applied = await migrate(pool)
    assert applied[:3] == [
        "007_leaner_decision.sql",
        "008_set_based_decisions.sql",
        "009_rules_once_a_batch.sql",
    ]
    # Then every later migration, and the live functions.
    assert applied[3:] == [name for v, name, _ in migration_files() if v > 9] + [
        f.name for f in function_files()
    ]

    # The prefixes listed before the upgrade are known by their length.
    assert list(await pool.fetchval("SELECT lengths FROM dg_prefix_lengths")) == [8]
    assert (await decide(pool, "+17182641234", 1)).rule is Rule.BLACKLISTED
    # The call placed before the upgrade is still up, and counts.
    assert (await decide(pool, "+12122640002", 2)).rule is Rule.CALLERID_CONCURRENCY
    recorded = await DecisionStore(pool).record_outcome(
        up_id, outcome="busy", answered_seconds=None, cause=17, sip_code=486, at=NOON_NY
    )
    assert recorded.recorded
    assert (await decide(pool, "+12122640002", 3)).allowed
    # The destination's history crossed the upgrade too.
    assert (await decide(pool, "+12122640001", 4)).rule is Rule.DESTINATION_INTERVAL
