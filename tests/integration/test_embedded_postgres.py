"""The embedded PostgreSQL: created by ``dialguard migrate`` in an empty data directory, then
shared by several ``dialguard`` processes started at the same moment.

No database URL is given anywhere: ``DIALGUARD_DATA_DIR`` alone selects the embedded server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialguard.store.embedded import SETTINGS_FILE, EmbeddedPostgres, server_settings
from dialguard.store.migrate import migration_files

DIALGUARD = Path(sys.executable).parent / "dialguard"
CID = "+12125550100"
DEST = "+12122641234"
AT = "2026-03-10T15:00:00Z"  # 11:00 in New York
PROCESSES = 4


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    return {**env, "DIALGUARD_DATA_DIR": str(data_dir)}


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DIALGUARD), *args],
        env=env_for(data_dir),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def fetch(url: str, query: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(url)
        try:
            return [dict(r.items()) for r in await conn.fetch(query)]
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "dialguard-data"
    assert not path.exists()
    yield path
    # Never leave a server behind, whatever the test did.
    if (path / "pgdata" / "postmaster.pid").exists():
        handle = EmbeddedPostgres(path / "pgdata")
        handle.start()
        handle.stop()


@pytest.mark.slow
def test_migrate_creates_the_embedded_database_in_an_empty_data_directory(data_dir: Path) -> None:
    first = run(data_dir, "migrate", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"applied": [name for _, name, _ in migration_files()]}
    assert (data_dir / "pgdata" / "PG_VERSION").is_file()
    # The server stops with its last user.
    wait_until(
        lambda: not (data_dir / "pgdata" / "postmaster.pid").exists(), 30, "the server to stop"
    )
    again = run(data_dir, "migrate")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"


@pytest.mark.slow
def test_parallel_processes_share_the_embedded_database_and_its_limits(data_dir: Path) -> None:
    assert run(data_dir, "migrate").returncode == 0
    added = run(data_dir, "callerid", "add", CID)
    assert added.returncode == 0, added.stderr

    argv = [str(DIALGUARD), "decide", CID, DEST, "--at", AT, "--json"]
    procs = [
        subprocess.Popen(
            argv,
            env=env_for(data_dir),
            cwd=data_dir.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    decisions = [json.loads(out) for out, _ in results]

    rules = sorted((d["rule"] or "") for d in decisions)
    assert rules == [""] + ["destination_interval"] * (PROCESSES - 1)
    ids = {d["decision_id"] for d in decisions}
    assert len(ids) == PROCESSES and None not in ids

    # Join the same server to read what the processes recorded.
    handle = EmbeddedPostgres(data_dir / "pgdata")
    url = handle.start()
    try:
        rows = fetch(url, "SELECT id, allowed, rule, source FROM decisions ORDER BY id")
    finally:
        handle.stop()
    assert {r["id"] for r in rows} == ids
    assert sum(r["allowed"] for r in rows) == 1
    assert {r["source"] for r in rows} == {"cli"}
    wait_until(
        lambda: not (data_dir / "pgdata" / "postmaster.pid").exists(), 30, "the server to stop"
    )


def settings_at_start(pgdata: Path) -> dict[str, Any]:
    """Start the server (alone), read the settings dialguard chooses, and stop it again."""
    handle = EmbeddedPostgres(pgdata)
    url = handle.start()
    try:
        rows = fetch(
            url,
            "SELECT pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers,"
            " current_setting('checkpoint_timeout') AS checkpoint_timeout,"
            " current_setting('max_wal_size') AS max_wal_size",
        )
    finally:
        handle.stop()
    wait_until(lambda: not (pgdata / "postmaster.pid").exists(), 30, "the server to stop")
    return rows[0]


@pytest.mark.slow
def test_the_embedded_server_runs_with_dialguards_settings_and_keeps_an_operators_edits(
    data_dir: Path,
) -> None:
    pgdata = data_dir / "pgdata"
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    wanted = server_settings(memory)
    first = settings_at_start(pgdata)
    assert first == {
        "shared_buffers": int(wanted["shared_buffers"].removesuffix("MB")) * 1024 * 1024,
        "checkpoint_timeout": wanted["checkpoint_timeout"],
        "max_wal_size": wanted["max_wal_size"],
    }

    # An operator's edit survives the next start, and the file is included once.
    conf = pgdata / SETTINGS_FILE
    conf.write_text(conf.read_text().replace("'15min'", "'20min'"))
    assert settings_at_start(pgdata) == {**first, "checkpoint_timeout": "20min"}
    includes = [
        line
        for line in (pgdata / "postgresql.conf").read_text().splitlines()
        if SETTINGS_FILE in line
    ]
    assert includes == [f"include_if_exists = '{SETTINGS_FILE}'"]
