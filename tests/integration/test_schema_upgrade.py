"""The schema across releases: the live functions re-applied when they change, never over a
newer release's; the previous release's decide statement still running after this release's
migration; commands other than migrate and serve refusing an older schema."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from dialguard.store.callerids import CallerIdStore
from dialguard.store.migrate import SchemaOutdated, check_schema, function_files, migrate
from tests.support import NOON_NY

# The previous release's decide statement and its arguments, verbatim (queries.sql at 009):
# an instance still running it must keep deciding through a rolling upgrade.
PREVIOUS_DECIDE = """
SELECT decision_id, rule, nullif(facts, '{}') AS facts, stale
  FROM dg_decide_batch($1::dg_decide_attempt[], $2::text::dg_decide_rules[], $3)
"""
PREVIOUS_RULES = '{"(f,,,14400,\\"{}\\",\\"{}\\",,,,\\"{}\\",\\"{}\\",,7200,14400,)"}'


async def test_the_previous_releases_decide_statement_still_runs(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    attempt = (NOON_NY, "+12125550100", "+12122641234", "default", 0, "old", None, None, None,
               None, 1)  # fmt: skip
    first = await pool.fetch(PREVIOUS_DECIDE, [attempt], PREVIOUS_RULES, True)
    again = await pool.fetch(PREVIOUS_DECIDE, [attempt], PREVIOUS_RULES, True)
    assert [(r["rule"], r["stale"]) for r in first] == [(None, False)]
    assert [r["rule"] for r in again] == ["destination_interval"]


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
