"""``dialguard replay`` on a scripted month of calls with known violations.

The month is April 2026 (New York on EDT, UTC-4: 14:00Z is 10:00 local). Each scenario uses its
own destination, so the rule each row must get follows from the issue's semantics alone; a steady
background of allowed calls runs beside them. The rows are shuffled before they are written: the
replay must decide them in time order.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore

DIALGUARD = Path(sys.executable).parent / "dialguard"

C1, C2, C3, C4, C5 = (f"+1212555010{n}" for n in range(1, 6))
RESTED = "+12125550106"
UNREGISTERED = "+12125550199"
BLACKLISTED = "+12122649999"
SPRING_ONLY_BLACKLISTED = "+12122640108"


@dataclass(frozen=True)
class Call:
    at: str
    caller_id: str
    destination: str
    campaign: str
    expected: str  # the rule, or "" when allowed
    answered_seconds: int | None = None

    @property
    def key(self) -> tuple[datetime, str, str, str]:
        at = datetime.fromisoformat(self.at.replace("Z", "+00:00"))
        return at, self.caller_id, self.destination, self.campaign


def scripted_violations() -> list[Call]:
    return [
        # A repeat within 4 h; exactly 4 h later is fine.
        Call("2026-04-02T14:00:00Z", C1, "+12122640101", "spring", ""),
        Call("2026-04-02T17:59:59Z", C1, "+12122640101", "spring", "destination_interval"),
        Call("2026-04-02T18:00:00Z", C1, "+12122640101", "spring", ""),
        # The 4th call in 24 h, counted across campaigns; 24 h after the first it is fine again.
        Call("2026-04-03T12:00:00Z", C1, "+12122640102", "spring", ""),
        Call("2026-04-03T16:00:00Z", C1, "+12122640102", "summer", ""),
        Call("2026-04-03T20:00:00Z", C1, "+12122640102", "", ""),
        Call("2026-04-04T00:00:00Z", C1, "+12122640102", "spring", "destination_cap"),
        Call("2026-04-04T12:00:00Z", C1, "+12122640102", "spring", ""),
        # The 8th call in 7 days (one a day for a week, then a second on the seventh day).
        *[Call(f"2026-04-{day:02d}T14:00:00Z", C2, "+12122640103", "", "") for day in range(6, 13)],
        Call("2026-04-12T19:00:00Z", C2, "+12122640103", "", "destination_cap"),
        Call("2026-04-13T14:00:00Z", C2, "+12122640103", "", ""),
        # A call within 7 days of a 60 s conversation; the cooldown ends 7 days after it ended.
        Call("2026-04-14T14:00:00Z", C2, "+12122640104", "spring", "", answered_seconds=60),
        Call("2026-04-18T14:00:00Z", C2, "+12122640104", "spring", "destination_cooldown"),
        Call("2026-04-21T14:01:00Z", C2, "+12122640104", "spring", ""),
        # A 29 s answer is shorter than conversation_min_seconds: no cooldown.
        Call("2026-04-14T14:00:00Z", C3, "+12122640105", "summer", "", answered_seconds=29),
        Call("2026-04-14T18:00:00Z", C3, "+12122640105", "summer", ""),
        # Night calls: 22:00 and 07:59:59 are closed; 08:00:00 and 20:59:59 open; 21:00 closed.
        Call("2026-04-15T02:00:00Z", C3, "+12122640106", "summer", "calling_hours"),
        Call("2026-04-15T11:59:59Z", C3, "+12122640106", "summer", "calling_hours"),
        Call("2026-04-15T12:00:00Z", C3, "+12122640106", "summer", ""),
        Call("2026-04-16T00:59:59Z", C3, "+12122640106", "summer", ""),
        Call("2026-04-16T01:00:00Z", C3, "+12122640107", "summer", "calling_hours"),
        # Blacklisted numbers: global (even at night), and one listed for spring only.
        Call("2026-04-20T14:00:00Z", C4, BLACKLISTED, "summer", "blacklisted"),
        Call("2026-04-21T03:00:00Z", C4, BLACKLISTED, "", "blacklisted"),
        Call("2026-04-20T14:10:00Z", C4, SPRING_ONLY_BLACKLISTED, "spring", "blacklisted"),
        Call("2026-04-20T14:20:00Z", C4, SPRING_ONLY_BLACKLISTED, "summer", ""),
        # An unregistered caller ID, a rested one, and a destination that is no number.
        Call("2026-04-22T14:00:00Z", UNREGISTERED, "+12122640109", "spring", "callerid_unknown"),
        Call("2026-04-28T15:00:00Z", RESTED, "+12122640113", "summer", "callerid_rested"),
        Call("2026-04-29T14:00:00Z", C4, "garbage", "summer", "invalid_number"),
        # A third caller ID for one destination within 30 days.
        Call("2026-04-23T14:00:00Z", C1, "+12122640110", "spring", ""),
        Call("2026-04-23T18:00:00Z", C2, "+12122640110", "spring", ""),
        Call("2026-04-24T14:00:00Z", C3, "+12122640110", "spring", "callerid_rotation"),
        # A sixth call from one caller ID within a minute.
        *[
            Call(f"2026-04-25T14:00:{10 * n:02d}Z", C5, f"+121226403{n:02d}", "spring", "")
            for n in range(5)
        ],
        Call("2026-04-25T14:00:50Z", C5, "+12122640305", "spring", "callerid_rate"),
        # A paused campaign, and a b2b campaign's office hours (09:00-18:00).
        Call("2026-04-26T14:00:00Z", C4, "+12122640111", "autumn", "campaign_paused"),
        Call("2026-04-27T22:30:00Z", C4, "+12122640112", "office", "calling_hours"),
        Call("2026-04-28T14:00:00Z", C4, "+12122640112", "office", ""),
    ]


def background() -> list[Call]:
    """Five destinations called every other day by one caller ID: always allowed."""
    return [
        Call(f"2026-04-{day:02d}T13:{2 * n:02d}:00Z", C4, f"+121226402{n:02d}", "summer", "")
        for day in range(1, 30, 2)
        for n in range(5)
    ]


def month() -> list[Call]:
    calls = scripted_violations() + background()
    random.Random(20260401).shuffle(calls)
    return calls


def write_log(path: Path, calls: list[Call]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["at", "caller_id", "destination", "campaign", "answered_seconds"])
        for c in calls:
            answered = "" if c.answered_seconds is None else str(c.answered_seconds)
            writer.writerow([c.at, c.caller_id, c.destination, c.campaign, answered])


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


async def dialguard(cwd: Path, *args: str) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    proc = await asyncio.create_subprocess_exec(
        str(DIALGUARD),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def summary_of(stderr: str) -> tuple[str, dict[str, int]]:
    lines = stderr.strip().splitlines()
    by_rule = {}
    for line in lines[1:]:
        rule, count = line.split()
        by_rule[rule] = int(count)
    return lines[0], by_rule


async def table_count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


@pytest.fixture
async def configured(pool: asyncpg.Pool) -> None:
    """The database's caller IDs, blacklist and campaigns that the replay must use."""
    callerids = CallerIdStore(pool)
    for number in (C1, C2, C3, C4, C5, RESTED):
        await callerids.add(number, None)
    await callerids.set_state(RESTED, "rested", "complaints")
    campaigns = CampaignStore(pool)
    await campaigns.set_paused("autumn", True, "complaint review")
    await campaigns.set("office", "b2b", {})
    blacklist = BlacklistStore(pool)
    await blacklist.add_number(BLACKLISTED, source="dnc")
    await blacklist.add_number(SPRING_ONLY_BLACKLISTED, campaign="spring", source="crm")


@pytest.mark.usefixtures("configured")
async def test_a_replayed_month_names_exactly_the_known_violations(
    db_dsn: str, tmp_path: Path
) -> None:
    calls = month()
    log = tmp_path / "calls.csv"
    write_log(log, calls)

    run = await dialguard(tmp_path, "replay", str(log), "--database", db_dsn)
    assert run.code == 0, run.err

    rows = list(csv.DictReader(io.StringIO(run.out)))
    assert len(rows) == len(calls)
    # Written in time order, whatever the order of the log.
    times = [datetime.fromisoformat(r["at"]) for r in rows]
    assert times == sorted(times)
    expected = {c.key: c.expected for c in calls}
    assert len(expected) == len(calls)
    got = {
        (datetime.fromisoformat(r["at"]), r["caller_id"], r["destination"], r["campaign"]): r
        for r in rows
    }
    mismatches = {
        key: (rule, got[key]["rule"], got[key]["evidence"])
        for key, rule in expected.items()
        if got[key]["rule"] != rule
    }
    assert mismatches == {}
    for row in rows:
        assert row["verdict"] == ("deny" if row["rule"] else "allow")
        assert row["evidence"]

    headline, by_rule = summary_of(run.err)
    assert headline == f"replayed {len(calls)} calls (rolled back)"
    wanted = Counter(c.expected or "allowed" for c in calls)
    assert by_rule == dict(wanted)
    assert by_rule["destination_cap"] == 2 and by_rule["calling_hours"] == 4

    # Nothing the replay recorded stays behind.
    assert await table_count(db_dsn, "decisions") == 0
    assert await table_count(db_dsn, "campaign_callerids") == 0


@pytest.mark.usefixtures("configured")
async def test_replay_with_keep_leaves_the_decisions_in_the_database(
    db_dsn: str, tmp_path: Path
) -> None:
    calls = month()
    log = tmp_path / "calls.csv"
    write_log(log, calls)
    out = tmp_path / "decided.csv"

    run = await dialguard(
        tmp_path, "replay", str(log), "--keep", "--out", str(out), "--database", db_dsn
    )
    assert run.code == 0, run.err
    assert run.out == ""
    assert run.err.splitlines()[0] == f"replayed {len(calls)} calls"
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == len(calls)

    conn = await asyncpg.connect(db_dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM decisions")
        allowed = await conn.fetchval("SELECT count(*) FROM decisions WHERE allowed")
        answered = await conn.fetchval(
            "SELECT answered_seconds FROM decisions WHERE destination = '+12122640104' AND allowed"
            " ORDER BY at LIMIT 1"
        )
        up = await conn.fetchval(
            "SELECT count(*) FROM decisions WHERE allowed AND outcome_at IS NULL"
        )
    finally:
        await conn.close()
    assert total == len(calls)
    assert allowed == sum(1 for c in calls if not c.expected)
    assert answered == 60
    assert up == 0, "every replayed call ends when it is logged"

    # What was kept counts for live decisions: the destination of the last rotation row is
    # still inside its 4 h interval.
    check = await dialguard(
        tmp_path,
        "check",
        C4,
        "+12122640112",
        "--campaign",
        "office",
        "--at",
        "2026-04-28T15:00:00Z",
        "--json",
        "--database",
        db_dsn,
    )
    assert check.code == 0, check.err
    assert '"rule": "destination_interval"' in check.out


async def test_a_log_without_the_required_columns_is_an_input_error(
    db_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "calls.csv"
    log.write_text("at,caller_id,destination\n2026-04-02T14:00:00Z,+12125550101,+12122640101\n")
    run = await dialguard(tmp_path, "replay", str(log), "--database", db_dsn)
    assert run.code == 2
    assert run.err.strip() == "dialguard: line 1: missing columns campaign"


async def test_a_bad_row_is_an_input_error_naming_its_line(db_dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "calls.csv"
    log.write_text(
        "at,caller_id,destination,campaign\n"
        "2026-04-02T14:00:00Z,+12125550101,+12122640101,spring\n"
        "2026-04-02T18:00:00,+12125550101,+12122640101,spring\n"
    )
    run = await dialguard(tmp_path, "replay", str(log), "--database", db_dsn)
    assert run.code == 2
    assert run.err.strip() == (
        "dialguard: line 3: time '2026-04-02T18:00:00' has no offset; add Z or +HH:MM"
    )
    assert await table_count(db_dsn, "decisions") == 0


def test_the_scripted_month_has_every_violation_the_issue_lists() -> None:
    rules = Counter(c.expected for c in month())
    for rule in (
        "destination_interval",
        "destination_cap",
        "destination_cooldown",
        "calling_hours",
        "blacklisted",
        "callerid_unknown",
    ):
        assert rules[rule] >= 1, rule
    assert rules[""] > 100
    starts = {c.key[0] for c in month()}
    assert max(starts) - min(starts) > timedelta(days=27)
