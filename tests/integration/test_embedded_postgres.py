"""The embedded PostgreSQL: created by ``dialguard migrate`` in an empty data directory, then
shared by several ``dialguard`` processes started at the same moment.

No database URL is given anywhere: ``DIALGUARD_DATA_DIR`` alone selects the embedded server.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dialguard.store.embedded import (
    ROOT_DATA_DIR,
    SETTINGS_FILE,
    SYSTEM_USER,
    EmbeddedError,
    EmbeddedPostgres,
    ServerUser,
    install_dir,
    private_dir,
    server_settings,
    temporary_data_dir,
)
from dialguard.store.migrate import migration_files

DIALGUARD = Path(sys.executable).parent / "dialguard"
CID = "+12125550100"
DEST = "+12122641234"
PROCESSES = 4


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    # Decisions are live (now), whatever the hour in New York.
    all_day = {"DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00"}
    return {**env, **all_day, "DIALGUARD_DATA_DIR": str(data_dir)}


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
def data_dir() -> Iterator[Path]:
    with temporary_data_dir(prefix="dialguard-embedded-") as tmp:
        path = tmp / "dialguard-data"
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
    applied = json.loads(first.stdout)["applied"]
    migrations = [name for _, name, _ in migration_files()]
    assert applied[: len(migrations)] == migrations
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

    argv = [str(DIALGUARD), "decide", CID, DEST, "--json"]
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


def modes_above(path: Path) -> dict[Path, tuple[int, int, int]]:
    """Mode, owner and group of every directory from ``/`` down to ``path``'s parent."""
    return {p: (p.stat().st_mode, p.stat().st_uid, p.stat().st_gid) for p in path.parents}


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the behaviour as root")


@pytest.mark.slow
@as_root
def test_as_root_the_server_runs_as_the_system_user_and_nothing_above_changes_mode(
    data_dir: Path,
) -> None:
    # A closed directory on the way to the package's binaries (as /root would be) is fine: the
    # server user never reads them there.
    deep = data_dir / "a" / "b"
    deep.mkdir(parents=True)
    deep.parent.chmod(0o751)
    pgdata = deep / "pgdata"
    before = modes_above(pgdata)
    binaries_before = modes_above(install_dir() / "bin" / "postgres")
    users_before = {entry.pw_name for entry in pwd.getpwall()}

    handle = EmbeddedPostgres(pgdata)
    handle.start()
    try:
        account = pwd.getpwnam(SYSTEM_USER)
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        assert process_uid(pid) == account.pw_uid
        assert account.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
        assert account.pw_uid < 1000  # a system account
        st = pgdata.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, 0o700)
        # The binaries it runs are in the data directory, not the virtualenv.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        assert Path(cmdline).is_relative_to(deep)
    finally:
        handle.stop()
    assert modes_above(pgdata) == before
    assert modes_above(install_dir() / "bin" / "postgres") == binaries_before
    # No other account is made (the old package's launcher added a login user, pgserver).
    assert {entry.pw_name for entry in pwd.getpwall()} - users_before <= {SYSTEM_USER}


@pytest.mark.slow
@as_root
def test_as_root_a_data_directory_the_system_user_cannot_reach_is_refused_by_name(
    data_dir: Path,
) -> None:
    closed = data_dir / "closed"
    closed.mkdir(parents=True)
    closed.chmod(0o700)
    with pytest.raises(EmbeddedError) as caught:
        EmbeddedPostgres(closed / "pgdata").start()
    assert f"{closed} is mode 0700" in str(caught.value)
    assert str(ROOT_DATA_DIR) in str(caught.value)
    assert stat.S_IMODE(closed.stat().st_mode) == 0o700
    assert not (closed / "pgdata" / "PG_VERSION").exists()


def test_a_runtime_directory_made_by_someone_else_is_refused(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid())
    user = ServerUser(me.pw_name, me.pw_uid, me.pw_gid)
    mine = private_dir(tmp_path / "mine", user)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert private_dir(tmp_path / "mine", user) == mine  # found as made: reused

    open_to_others = tmp_path / "open"
    open_to_others.mkdir()
    open_to_others.chmod(0o777)
    with pytest.raises(EmbeddedError, match="mode 0777"):
        private_dir(open_to_others, user)

    (tmp_path / "target").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(EmbeddedError, match="not a directory"):
        private_dir(tmp_path / "link", user)

    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(EmbeddedError, match="belongs to uid 65534"):
            private_dir(theirs, user)


@pytest.mark.slow
def test_a_data_directory_too_long_for_a_socket_gets_a_private_socket_directory(
    data_dir: Path,
) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    handle = EmbeddedPostgres(deep / "pgdata")
    url = handle.start()
    try:
        socket_dir = Path(url.split("host=")[1].split("&")[0])
        assert socket_dir.parent.name.startswith("dialguard-runtime-")
        st = socket_dir.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        owner = pwd.getpwnam(SYSTEM_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
        assert st.st_uid == owner
        assert fetch(url, "SELECT 1 AS one") == [{"one": 1}]
    finally:
        handle.stop()
