"""``dialguard scrub FILE`` and ``dialguard complaints add|import``, as a person runs them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from pathlib import Path

import asyncpg

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore


async def dialguard(db_dsn: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {
        "DIALGUARD_DATA_DIR": str(tmp_path),
        "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
        "PATH": "/usr/bin:/bin",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dialguard.cli",
        "--database",
        db_dsn,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_scrub_file_writes_verdicts_in_order_with_progress(
    db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await BlacklistStore(pool).add_number("+12122641234")
    leads = tmp_path / "leads.csv"
    leads.write_text("name,destination\na,+12122641234\nb,(212) 264-1235\nc,garbage\n")
    code, out, err = await dialguard(db_dsn, tmp_path, "scrub", str(leads))
    assert code == 0, err
    # The columns of POST /v1/scrub's CSV answer.
    assert out.splitlines()[0] == "destination,callable,rule,callable_at"
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["destination"], r["callable"], r["rule"]) for r in rows] == [
        ("+12122641234", "false", "blacklisted"),
        ("+12122641235", "true", ""),
        ("garbage", "false", "invalid_number"),
    ]
    assert "scrubbed 3 numbers" in err


async def test_scrub_of_a_missing_file_is_a_usage_error(db_dsn: str, tmp_path: Path) -> None:
    code, _, err = await dialguard(db_dsn, tmp_path, "scrub", str(tmp_path / "none.csv"))
    assert code == 2 and "cannot read" in err


async def test_complaints_add_and_import(db_dsn: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    code, out, err = await dialguard(
        db_dsn,
        tmp_path,
        "complaints",
        "add",
        "+12122641234",
        "--source",
        "carrier",
        "--caller-id",
        "+12125550100",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["effects"]["blacklisted"] is True
    complaints = tmp_path / "complaints.csv"
    complaints.write_text("destination,source\n+12122641235,crm\nnope,crm\n+12122641236,\n")
    code, out, err = await dialguard(
        db_dsn, tmp_path, "complaints", "import", str(complaints), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["imported"], summary["bad_rows"]) == (1, 2)
    assert "3:" in err and "4:" in err
    code, _, err = await dialguard(db_dsn, tmp_path, "complaints", "add", "+12122641237")
    assert code == 2 and "--source" in err
