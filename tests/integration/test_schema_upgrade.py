"""The schema across releases: the live functions re-applied when they change, never over a
newer release's; nothing older left beside them; commands other than migrate and serve refusing
an older schema."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import asyncpg
import pytest

from dialguard.store.migrate import SchemaOutdated, check_schema, function_files, migrate

# The functions the tables' triggers run (migration 007): the only ones not in sql/functions/.
TRIGGER_FUNCTIONS = {"dg_prefix_lengths_grow", "dg_prefix_lengths_recount"}


async def test_the_database_holds_the_live_functions_and_nothing_older(pool: asyncpg.Pool) -> None:
    live = {
        name.lower()
        for f in function_files()
        for name in re.findall(r"CREATE OR REPLACE FUNCTION (\w+)\(", f.sql)
    }
    rows = await pool.fetch(
        """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema() AND p.proname LIKE 'dg\\_%'
        """
    )
    found = sorted(r["proname"] for r in rows)
    # One signature each: a changed signature in a function file leaves no older overload.
    assert len(found) == len(set(found)), found
    assert set(found) == live | TRIGGER_FUNCTIONS
    # The release before last's dg_decide_batch, its helpers and its types are gone (012).
    assert "dg_decide_batch" not in found
    types = await pool.fetch(
        "SELECT typname FROM pg_type WHERE typname IN ('dg_decide_attempt', 'dg_new_decision')"
    )
    assert types == []


async def test_a_changed_function_file_is_applied_again(pool: asyncpg.Pool) -> None:
    assert await migrate(pool) == [], "the template is up to date"
    await pool.execute("UPDATE schema_functions SET checksum = 'older' WHERE name = 'feedback.sql'")
    with pytest.raises(SchemaOutdated, match=r"feedback\.sql.*dialguard migrate"):
        await check_schema(pool)
    assert await migrate(pool) == ["feedback.sql"]
    await check_schema(pool)


async def test_an_older_release_never_applies_its_functions_over_a_newer_schema(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (999, '999_from_the_future.sql')"
    )
    await pool.execute(
        "UPDATE schema_functions SET checksum = 'newer' WHERE name = 'decisions.sql'"
    )
    assert await migrate(pool) == []
    assert (
        await pool.fetchval("SELECT checksum FROM schema_functions WHERE name = 'decisions.sql'")
        == "newer"
    )
    # Its own migrations are all there: it may run against the newer schema.
    await check_schema(pool)


async def test_every_function_file_is_recorded_with_its_checksum(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT name, checksum FROM schema_functions ORDER BY name")
    assert [(r["name"], r["checksum"]) for r in rows] == [
        (f.name, f.checksum) for f in function_files()
    ]


async def test_a_command_on_an_older_schema_refuses_and_migrate_mends_it(
    pool: asyncpg.Pool, db_dsn: str, tmp_path: Path
) -> None:
    # As if this release's functions had never been applied: the database is one release old.
    await pool.execute("DELETE FROM schema_functions WHERE name = 'decisions.sql'")
    env = {**os.environ, "DIALGUARD_DATABASE_URL": db_dsn}
    env.pop("DIALGUARD_CONFIG", None)

    async def dialguard(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dialguard.cli", *args,
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        return proc.returncode or 0, (out + err).decode()

    code, text = await dialguard("callerid", "list")
    assert code == 2
    assert "decisions.sql" in text and "dialguard migrate" in text
    assert "Traceback" not in text
    # Nothing was changed by the refused command.
    assert not await pool.fetchval(
        "SELECT count(*) FROM schema_functions WHERE name = 'decisions.sql'"
    )
    code, text = await dialguard("migrate")
    assert code == 0, text
    code, text = await dialguard("callerid", "list")
    assert code == 0, text
