"""The ``dialguard`` command end to end: real processes against a real PostgreSQL.

Each test runs the commands it is about as processes; set-up and the decisions that only show a
command's effect run in the test's own process on the same database, which keeps the tests fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from dialguard.cli import build_parser
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.store.callerids import CallerIdStore
from tests.conftest import fresh_database
from tests.support import make_decider

DIALGUARD = Path(sys.executable).parent / "dialguard"
FIXTURES = Path(__file__).parent.parent / "fixtures"
CID = "+12125550100"
DEST = "+12122641234"
T0 = "2026-03-10T15:00:00Z"  # 11:00 in New York
ALL_DAY = {"DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00"}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any DIALGUARD_* setting of the machine running it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    return {**env, **(extra or {})}


@dataclass
class Cli:
    dsn: str
    cwd: Path

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None, database: bool = True
    ) -> Run:
        argv = [str(DIALGUARD), *args, *(["--database", self.dsn] if database else [])]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=clean_env(env),
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(), err.decode())

    async def ok(self, *args: str) -> Run:
        run = await self(*args)
        assert run.code == 0, run.err
        return run

    async def decide(self, at: str, caller: str = CID, dest: str = DEST, *extra: str) -> Any:
        """A dry run as of ``at`` (a recorded decision is about a call placed now)."""
        return (await self.ok("check", caller, dest, "--at", at, "--json", *extra)).json()

    async def decide_now(self, caller: str = CID, dest: str = DEST, *extra: str) -> Any:
        """A recorded, live decision, at any hour of the day in New York."""
        run = await self("decide", caller, dest, "--json", *extra, env=ALL_DAY)
        assert run.code == 0, run.err
        return run.json()


@pytest.fixture
def cli(db_dsn: str, tmp_path: Path) -> Cli:
    return Cli(db_dsn, tmp_path)


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)


async def decide_here(
    pool: asyncpg.Pool,
    at: str,
    dest: str = DEST,
    campaign: str | None = None,
    caller: str = CID,
) -> Decision:
    """A decision made in the test's process, as the CLI's default configuration makes it."""
    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    return await make_decider(pool).decide(
        DecisionRequest(caller_id=caller, destination=dest, campaign=campaign, at=when, as_of=True)
    )


@pytest.fixture
async def other_db(pg_admin_dsn: str, template_dsn: str, db_dsn: str) -> AsyncIterator[str]:
    """A second fresh database, for round trips between two installations."""
    name = urlsplit(db_dsn).path.lstrip("/") + "_other"
    async with fresh_database(pg_admin_dsn, name) as dsn:
        yield dsn


async def count_decisions(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM decisions"))
    finally:
        await conn.close()


# ---- check and decide ----------------------------------------------------------------------


@pytest.mark.usefixtures("registered")
async def test_check_answers_in_json_and_records_nothing(cli: Cli, db_dsn: str) -> None:
    run = await cli.ok("check", CID, "(212) 264-1234", "--at", T0, "--json")
    payload = run.json()
    assert {"verdict", "rule", "evidence", "decision_id"} <= set(payload)
    assert payload["verdict"] == "allow" and payload["rule"] is None
    assert payload["evidence"] == "every rule passed"
    assert payload["decision_id"] is None
    assert payload["destination"] == DEST
    assert await count_decisions(db_dsn) == 0


@pytest.mark.usefixtures("registered")
async def test_decide_records_and_a_deny_exits_zero_with_its_rule(cli: Cli, db_dsn: str) -> None:
    first = await cli.decide_now()
    assert first["verdict"] == "allow" and isinstance(first["decision_id"], int)
    second = await cli.decide_now(CID, "+1 212 264 1234")
    assert second["verdict"] == "deny"
    assert second["rule"] == "destination_interval"
    last = re.fullmatch(r"last attempt at (\S+), minimum interval 4h", second["evidence"])
    assert last is not None
    assert datetime.fromisoformat(second["callable_at"]) - datetime.fromisoformat(
        last.group(1)
    ) == timedelta(hours=4)
    assert second["decision_id"] == first["decision_id"] + 1
    assert await count_decisions(db_dsn) == 2


@pytest.mark.usefixtures("registered")
async def test_text_output_names_the_verdict_rule_evidence_and_callable_time(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    assert (await decide_here(pool, T0)).allowed
    run = await cli.ok("check", CID, DEST, "--at", "2026-03-10T16:00:00+01:00")
    assert run.out.splitlines() == [
        "DENY destination_interval: last attempt at 2026-03-10T15:00:00+00:00, minimum interval 4h",
        "callable_at: 2026-03-10T19:00:00+00:00",
    ]


async def test_invalid_numbers_are_results_not_errors(cli: Cli) -> None:
    bad_dest, bad_caller = await asyncio.gather(
        cli.decide_now(CID, "not a number"), cli.decide_now("12", DEST)
    )
    assert (bad_dest["verdict"], bad_dest["rule"]) == ("deny", "invalid_number")
    assert bad_caller["rule"] == "callerid_unknown"
    assert bad_caller["evidence"] == "caller ID '12' is not a valid phone number"


async def test_a_time_without_an_offset_is_a_one_line_usage_error(cli: Cli) -> None:
    run = await cli("decide", CID, DEST, "--at", "2026-03-10T15:00:00")
    assert run.code == 2
    assert run.err_lines == ["dialguard: time '2026-03-10T15:00:00' has no offset; add Z or +HH:MM"]
    assert run.out == ""


async def test_invalid_config_values_from_the_environment_exit_2_one_line_each(
    cli: Cli, db_dsn: str
) -> None:
    run = await cli(
        "decide",
        CID,
        DEST,
        env={"DIALGUARD_GATE_FAIL_MODE": "maybe", "DIALGUARD_NUMBERS_DEFAULT_REGION": "UK"},
    )
    assert run.code == 2
    assert run.err_lines == [
        "dialguard: config: DIALGUARD_GATE_FAIL_MODE: expected 'closed' or 'open', got 'maybe'",
        "dialguard: config: DIALGUARD_NUMBERS_DEFAULT_REGION: unknown region 'UK'"
        " (use an ISO 3166 code like US or GB)",
    ]
    assert await count_decisions(db_dsn) == 0


@pytest.mark.usefixtures("registered")
async def test_a_config_file_named_by_flag_is_read(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "strict.toml"
    config.write_text("[profiles.default]\ncalling_hours = '12:00-13:00'\n", encoding="utf-8")
    missing_path = tmp_path / "nope.toml"
    run, missing = await asyncio.gather(
        cli.ok("check", CID, DEST, "--at", T0, "--json", "--config", str(config)),
        cli("check", CID, DEST, "--config", str(missing_path)),
    )
    assert run.json()["rule"] == "calling_hours"
    assert missing.code == 2
    assert missing.err_lines == [f"dialguard: config: {missing_path}: config file not found"]


async def test_a_usage_error_exits_2(cli: Cli) -> None:
    run = await cli("decide", CID)
    assert run.code == 2
    assert "usage: dialguard decide" in run.err


async def test_an_unreachable_database_exits_1_with_one_line(cli: Cli) -> None:
    unreachable = Cli("postgresql://dialguard@127.0.0.1:9/nowhere", cli.cwd)
    run = await unreachable("check", CID, DEST)
    assert run.code == 1
    assert len(run.err_lines) == 1
    assert run.err_lines[0].startswith("dialguard: database unavailable: ")


# ---- outcome -------------------------------------------------------------------------------


@pytest.mark.usefixtures("registered")
async def test_an_answered_outcome_starts_the_conversation_cooldown(cli: Cli) -> None:
    first = await cli.decide_now()
    ended = datetime.now(UTC) + timedelta(minutes=1)
    run = await cli.ok(
        "outcome",
        str(first["decision_id"]),
        "--answered-seconds",
        "60",
        "--at",
        ended.isoformat(timespec="seconds"),
        "--json",
    )
    assert run.json() == {"decision_id": first["decision_id"], "outcome": "answered"}
    # A day later the interval and the daily cap are satisfied; the cooldown is not.
    day_later = (ended + timedelta(days=1)).isoformat(timespec="seconds")
    later = (await cli("check", CID, DEST, "--at", day_later, "--json", env=ALL_DAY)).json()
    assert later["rule"] == "destination_cooldown"
    found = re.fullmatch(
        r"a 60 s conversation ended at (\S+); cooldown 7d after conversations of 30 s or more",
        later["evidence"],
    )
    assert found is not None
    end = datetime.fromisoformat(found.group(1))
    assert abs(end - ended) < timedelta(seconds=1)
    assert datetime.fromisoformat(later["callable_at"]) == end + timedelta(days=7)


@pytest.mark.usefixtures("registered")
async def test_an_outcome_is_recorded_once_and_only_for_an_allowed_call(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    allowed = await decide_here(pool, T0)
    denied = await decide_here(pool, "2026-03-10T15:00:01Z")
    assert allowed.decision_id is not None and denied.decision_id is not None
    rejected = await cli.ok(
        "outcome", str(allowed.decision_id), "--cause", "127", "--sip-code", "608", "--json"
    )
    assert rejected.json()["outcome"] == "carrier_rejected"
    again, on_denied, negative = await asyncio.gather(
        cli("outcome", str(allowed.decision_id), "--cause", "17"),
        cli("outcome", str(denied.decision_id), "--cause", "16"),
        cli("outcome", str(allowed.decision_id), "--answered-seconds", "-5"),
    )
    assert again.code == on_denied.code == negative.code == 2
    assert again.err_lines == [
        f"dialguard: decision {allowed.decision_id} is not an allowed call awaiting its outcome"
    ]
    assert on_denied.err_lines == [
        f"dialguard: decision {denied.decision_id} is not an allowed call awaiting its outcome"
    ]
    assert negative.err_lines == ["dialguard: --answered-seconds cannot be negative"]


async def test_an_outcome_needs_answered_seconds_or_a_cause(cli: Cli) -> None:
    neither, both = await asyncio.gather(
        cli("outcome", "1"), cli("outcome", "1", "--cause", "16", "--answered-seconds", "3")
    )
    assert neither.code == both.code == 2


# ---- caller IDs ----------------------------------------------------------------------------


@pytest.mark.usefixtures("registered")
async def test_a_rested_caller_id_is_denied_until_released(cli: Cli, pool: asyncpg.Pool) -> None:
    rested = (await cli.ok("callerid", "rest", CID, "--reason", "complaints", "--json")).json()
    assert (rested["number"], rested["state"], rested["reason"]) == (CID, "rested", "complaints")
    denied = await decide_here(pool, T0)
    assert denied.rule is not None and denied.rule.value == "callerid_rested"
    assert "(complaints)" in denied.evidence
    released = await cli.ok("callerid", "release", CID)
    assert released.out.strip() == f"{CID}: active"
    assert (await decide_here(pool, "2026-03-10T15:00:01Z")).allowed


async def test_releasing_a_retired_caller_id_exits_2(cli: Cli, pool: asyncpg.Pool) -> None:
    added = (await cli.ok("callerid", "add", "(212) 555-0100", "--json")).json()
    assert (added["number"], added["state"]) == (CID, "active")
    retired = await cli.ok("callerid", "retire", CID, "--reason", "number returned")
    assert retired.out.strip() == f"{CID}: retired"
    release, listed = await asyncio.gather(
        cli("callerid", "release", CID), cli.ok("callerid", "list", "--json")
    )
    assert release.code == 2
    assert release.err_lines == [f"dialguard: caller ID {CID} is retired; retirement is final"]
    assert [(r["number"], r["state"], r["reason"]) for r in listed.json()] == [
        (CID, "retired", "number returned")
    ]
    denied = await decide_here(pool, T0)
    assert denied.rule is not None and denied.rule.value == "callerid_rested"


@pytest.mark.usefixtures("registered")
async def test_a_rest_defaults_to_the_manual_reason(cli: Cli) -> None:
    rested = (await cli.ok("callerid", "rest", CID, "--json")).json()
    assert rested["reason"] == "manual"


async def test_caller_id_commands_refuse_unknown_and_invalid_numbers(cli: Cli) -> None:
    unknown, invalid, missing = await asyncio.gather(
        cli("callerid", "rest", "+12125550199"),
        cli("callerid", "add", "12"),
        cli("callerid", "add"),
    )
    assert unknown.code == invalid.code == missing.code == 2
    assert unknown.err_lines == ["dialguard: caller ID +12125550199 is not registered"]
    assert invalid.err_lines == ["dialguard: caller ID '12' is not a valid phone number"]
    assert missing.err_lines[-1].endswith("the following arguments are required: NUMBER")


async def test_caller_ids_are_listed_by_state(cli: Cli, pool: asyncpg.Pool) -> None:
    await cli.ok("callerid", "add", CID, "--campaign", "spring")
    store = CallerIdStore(pool)
    await store.add("+12125550101", None)
    await store.set_state("+12125550101", "rested", "manual")
    rested, everything = await asyncio.gather(
        cli.ok("callerid", "list", "--state", "rested", "--json"), cli.ok("callerid", "list")
    )
    assert [r["number"] for r in rested.json()] == ["+12125550101"]
    lines = everything.out.splitlines()
    assert len(lines) == 2
    assert lines[0].split() == [CID, "active"]
    assert lines[1].split() == ["+12125550101", "rested", "manual"]


# ---- campaigns -----------------------------------------------------------------------------


async def test_campaign_set_with_a_comma_list_overrides_the_profiles_caps(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    run = await cli.ok(
        "campaign",
        "set",
        "spring",
        "--profile",
        "b2b",
        "--set",
        "destination_caps=3/24h,7/7d",
        "--set",
        "destination_min_interval=off",
        "--set",
        "require_registered_callerid=false",
        "--json",
    )
    row = run.json()
    assert row["profile"] == "b2b"
    assert row["overrides"] == {
        "destination_caps": "3/24h,7/7d",
        "destination_min_interval": "off",
        "require_registered_callerid": "false",
    }
    # b2b alone allows two calls a day; the override allows a third and no fourth.
    for hour in (13, 14):
        assert (await decide_here(pool, f"2026-03-10T{hour}:00:00Z", campaign="spring")).allowed
    third = await cli.decide("2026-03-10T15:00:00Z", CID, DEST, "--campaign", "spring")
    assert third["verdict"] == "allow"
    assert (await decide_here(pool, "2026-03-10T15:00:00Z", campaign="spring")).allowed
    fourth = await cli.decide("2026-03-10T16:00:00Z", CID, DEST, "--campaign", "spring")
    assert fourth["rule"] == "destination_cap"
    assert fourth["evidence"] == "3 attempts in the last 24h, limit 3"


@pytest.mark.usefixtures("registered")
async def test_a_campaign_change_applies_to_the_next_decision(cli: Cli) -> None:
    evening = ("check", CID, DEST, "--campaign", "spring", "--at", "2026-03-10T22:00:00Z")
    await cli.ok("campaign", "set", "spring", "--profile", "b2b")
    # b2b's office hours are 09:00-18:00: 18:00 in New York is closed.
    assert (await cli.ok(*evening, "--json")).json()["rule"] == "calling_hours"
    await cli.ok("campaign", "set", "spring", "--set", "calling_hours=00:00-24:00")
    assert (await cli.ok(*evening, "--json")).json()["verdict"] == "allow"


async def test_every_bad_set_value_is_reported_and_nothing_is_saved(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    run = await cli(
        "campaign",
        "set",
        "spring",
        "--set",
        "destination_caps=3/24h,7/7x",
        "--set",
        "calling_hours=21:00-08:00",
        "--set",
        "colour=red",
        "--set",
        "no-equals-sign",
    )
    assert run.code == 2
    assert len(run.err_lines) == 1
    line = run.err_lines[0]
    assert line.startswith("dialguard: ")
    for part in (
        "expected key=value, got 'no-equals-sign'",
        "campaign spring: unknown key 'colour'",
        "campaign spring.calling_hours: calling hours must start before they end",
        "campaign spring.destination_caps: expected a duration",
    ):
        assert part in line
    rows = await pool.fetch("SELECT name FROM campaigns")
    assert rows == []


async def test_campaign_set_refuses_an_unknown_profile(cli: Cli) -> None:
    run = await cli("campaign", "set", "spring", "--profile", "b2x")
    assert run.code == 2
    assert run.err_lines == ["dialguard: unknown profile 'b2x' (known: b2b, b2c, default, finance)"]


@pytest.mark.usefixtures("registered")
async def test_a_paused_campaign_denies_until_resumed(cli: Cli, pool: asyncpg.Pool) -> None:
    paused = (await cli.ok("campaign", "pause", "spring", "--reason", "review", "--json")).json()
    assert paused["paused"] is True and paused["pause_reason"] == "review"
    shown = (await cli.ok("campaign", "show", "spring", "--json")).json()
    assert shown["paused"] is True and shown["profile"] == "default"
    denied = await decide_here(pool, T0, campaign="spring")
    assert denied.rule is not None and denied.rule.value == "campaign_paused"
    assert denied.evidence == "campaign spring is paused (review)"
    resumed = (await cli.ok("campaign", "resume", "spring", "--json")).json()
    assert resumed["paused"] is False and resumed["pause_reason"] is None
    assert (await decide_here(pool, "2026-03-10T15:00:01Z", campaign="spring")).allowed


async def test_showing_a_campaign_never_set_shows_the_defaults(cli: Cli) -> None:
    shown, missing = await asyncio.gather(
        cli.ok("campaign", "show", "autumn", "--json"), cli("campaign", "pause")
    )
    assert shown.json() == {
        "name": "autumn",
        "profile": "default",
        "overrides": {},
        "paused": False,
    }
    assert missing.code == 2
    assert missing.err_lines[-1].endswith("the following arguments are required: NAME")


# ---- blacklist -----------------------------------------------------------------------------


@pytest.mark.usefixtures("registered")
async def test_a_blacklisted_number_is_denied_until_removed(cli: Cli, pool: asyncpg.Pool) -> None:
    added = await cli.ok("blacklist", "add", "(212) 264-1234", "--reason", "asked", "--json")
    assert added.json()["number"] == DEST and added.json()["source"] == "manual"
    denied = await decide_here(pool, T0)
    assert denied.rule is not None and denied.rule.value == "blacklisted"
    assert denied.evidence == f"number {DEST} is on the global blacklist (source manual)"
    removed = await cli.ok("blacklist", "remove", DEST)
    assert removed.out.strip() == f"removed {DEST}"
    assert (await decide_here(pool, "2026-03-10T15:00:01Z")).allowed
    again = await cli("blacklist", "remove", DEST)
    assert again.code == 2 and again.err_lines == [f"dialguard: {DEST} is not on that blacklist"]


@pytest.mark.usefixtures("registered")
async def test_a_blacklisted_prefix_denies_every_number_under_it(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    added = await cli.ok(
        "blacklist", "add", "+1718264", "--prefix", "--source", "regulator", "--json"
    )
    assert added.json()["prefix"] == "+1718264"
    denied = await decide_here(pool, T0, "+17182641234")
    assert denied.rule is not None and denied.rule.value == "blacklisted"
    assert denied.evidence == "prefix +1718264 is on the global blacklist (source regulator)"
    assert (await decide_here(pool, T0, "+17182651234")).allowed
    await cli.ok("blacklist", "remove", "+1718264", "--prefix")
    assert (await decide_here(pool, "2026-03-10T15:00:01Z", "+17182641234")).allowed


@pytest.mark.usefixtures("registered")
async def test_a_campaign_blacklist_applies_to_that_campaign_only(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    await cli.ok("blacklist", "add", DEST, "--campaign", "spring")
    spring = await decide_here(pool, T0, campaign="spring")
    assert spring.rule is not None and spring.rule.value == "blacklisted"
    assert "campaign blacklist" in spring.evidence
    assert (await decide_here(pool, T0, campaign="summer")).allowed
    global_remove = await cli("blacklist", "remove", DEST)
    assert global_remove.code == 2


async def test_blacklist_values_must_be_numbers_or_e164_prefixes(cli: Cli) -> None:
    bad_prefix, bad_number, missing = await asyncio.gather(
        cli("blacklist", "add", "1718264", "--prefix"),
        cli("blacklist", "add", "garbage"),
        cli("blacklist", "add"),
    )
    assert bad_prefix.code == bad_number.code == missing.code == 2
    assert bad_prefix.err_lines == ["dialguard: prefix '1718264' must be E.164 like +1718264"]
    assert bad_number.err_lines == ["dialguard: number 'garbage' is not a valid phone number"]
    assert missing.err_lines[-1].endswith("the following arguments are required: VALUE")


async def test_expires_must_carry_an_offset_and_nothing_is_added_without_one(
    cli: Cli, pool: asyncpg.Pool
) -> None:
    run = await cli("blacklist", "add", DEST, "--expires", "2026-03-10T16:00:00")
    assert run.code == 2
    assert run.err_lines == ["dialguard: time '2026-03-10T16:00:00' has no offset; add Z or +HH:MM"]
    assert await pool.fetchval("SELECT count(*) FROM blacklist_numbers") == 0


@pytest.mark.usefixtures("registered")
async def test_an_entry_with_an_expiry_holds_until_then(cli: Cli, pool: asyncpg.Pool) -> None:
    added = await cli.ok(
        "blacklist", "add", DEST, "--expires", "2099-03-10T12:00:00-04:00", "--json"
    )
    assert added.json()["expires_at"].startswith("2099-03-10 16:00:00")
    denied = await decide_here(pool, "2099-03-10T15:59:59Z")
    assert denied.rule is not None and denied.rule.value == "blacklisted"
    assert denied.callable_at == datetime.fromisoformat("2099-03-10T16:00:00+00:00")
    assert (await decide_here(pool, "2099-03-10T16:00:00Z")).allowed


async def test_import_reports_bad_rows_by_line_and_keeps_the_good_ones(cli: Cli) -> None:
    source = FIXTURES / "blacklist_with_bad_rows.csv"
    run = await cli.ok("blacklist", "import", str(source), "--json")
    assert {k: run.json()[k] for k in ("imported", "bad_rows")} == {"imported": 4, "bad_rows": 3}
    reported = [line for line in run.err.replace("\r", "\n").splitlines() if ": line " in line]
    assert reported == [
        f"{source}: line 4: not a valid phone number: 'not a number'",
        f"{source}: line 5: time '2027-01-01T00:00:00' has no offset; add Z or +HH:MM",
        f"{source}: line 8: not an ISO 8601 time: 'someday'",
    ]
    assert "imported 4 rows" in run.err  # progress
    export = await cli.ok("blacklist", "export")
    assert export.out.splitlines() == [
        "value,campaign,source,reason,expires_at,kind",
        "+12122641234,,dnc,asked not to be called,,number",
        "+12122641235,spring,crm,,,number",
        "+12122641237,,regulator,,2099-01-01T00:00:00+00:00,number",
        "+12122641239,summer,import,,,number",
    ]


async def test_import_of_a_missing_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    run = await cli("blacklist", "import", str(tmp_path / "missing.csv"))
    assert run.code == 2
    assert run.err_lines == [
        f"dialguard: cannot read {tmp_path / 'missing.csv'}: No such file or directory"
    ]


async def test_export_then_import_into_another_database_round_trips_numbers(
    cli: Cli, other_db: str, tmp_path: Path
) -> None:
    await asyncio.gather(
        cli.ok("blacklist", "import", str(FIXTURES / "blacklist_with_bad_rows.csv")),
        cli.ok("blacklist", "add", "+442079460018", "--campaign", "uk", "--source", "tps"),
    )
    exported = (await cli.ok("blacklist", "export")).out
    assert len(exported.splitlines()) == 6
    dump = tmp_path / "export.csv"
    dump.write_text(exported, encoding="utf-8")
    other = Cli(other_db, tmp_path)
    imported = await other.ok("blacklist", "import", str(dump), "--json")
    assert imported.json()["bad_rows"] == 0
    assert (await other.ok("blacklist", "export")).out == exported


async def test_export_then_import_round_trips_prefixes(
    cli: Cli, other_db: str, tmp_path: Path
) -> None:
    await asyncio.gather(
        cli.ok("blacklist", "add", "+1718264", "--prefix"),
        cli.ok("blacklist", "add", "+44", "--prefix", "--campaign", "uk"),
    )
    exported = (await cli.ok("blacklist", "export")).out
    dump = tmp_path / "export.csv"
    dump.write_text(exported, encoding="utf-8")
    other = Cli(other_db, tmp_path)
    await other("blacklist", "import", str(dump))
    assert (await other.ok("blacklist", "export")).out == exported


# ---- the command line as people type it ----------------------------------------------------


async def test_options_are_taken_before_or_after_the_value(cli: Cli) -> None:
    before, after = await asyncio.gather(
        cli.ok("blacklist", "add", "--prefix", "+44", "--campaign", "uk", "--json"),
        cli.ok("blacklist", "add", "+1718264", "--prefix", "--json", "--campaign", "ny"),
    )
    assert (before.json()["prefix"], before.json()["campaign"]) == ("+44", "uk")
    assert (after.json()["prefix"], after.json()["campaign"]) == ("+1718264", "ny")
    removed = await cli.ok("blacklist", "remove", "--campaign", "uk", "--prefix", "+44")
    assert removed.out.strip() == "removed +44"


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command and action's parser, by its full name."""
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("dialguard", build_parser())
    return found


def test_every_option_and_value_has_a_line_of_help() -> None:
    parsers = every_parser()
    assert {"dialguard blacklist add", "dialguard callerid rest", "dialguard scrub"} <= {
        name for name, _ in parsers
    }
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in parsers
        for action in parser._actions
        if not action.help
    ]
    assert missing == []


async def test_each_action_has_its_own_help(cli: Cli) -> None:
    add, group = await asyncio.gather(
        cli.ok("blacklist", "add", "--help"), cli.ok("blacklist", "--help")
    )
    assert add.out.startswith("usage: dialguard blacklist add ")
    assert "--expires TIME" in add.out and "--bulk" not in add.out
    assert all(action in group.out for action in ("add", "remove", "import", "export"))


@pytest.mark.parametrize(
    ("command", "columns"),
    [
        (("blacklist", "import"), ["number", "campaign", "source", "reason", "expires_at", "kind"]),
        (("blacklist", "export"), ["value", "campaign", "source", "reason", "expires_at", "kind"]),
        (("complaints", "import"), ["destination", "source", "caller_id", "campaign", "at"]),
        (("replay",), ["at", "caller_id", "destination", "campaign", "answered_seconds"]),
        (("scrub",), ["destination", "callable", "rule", "callable_at"]),
    ],
)
async def test_the_help_of_each_csv_command_names_its_columns_with_an_example(
    cli: Cli, command: tuple[str, ...], columns: list[str]
) -> None:
    run = await cli.ok(*command, "--help")
    described = {line.split()[0] for line in run.out.splitlines() if line.startswith("  ")}
    assert set(columns) <= described | set(",".join(run.out.split()).split(","))
    assert "example" in run.out or "output columns" in run.out


async def test_json_is_refused_where_it_means_nothing(cli: Cli) -> None:
    before, after = await asyncio.gather(cli("--json", "serve"), cli("serve", "--json"))
    assert before.code == after.code == 2
    assert before.err_lines[-1] == (
        "dialguard: error: serve has no machine-readable output: --json is not taken"
    )
    assert after.err_lines[-1] == "dialguard: error: unrecognized arguments: --json"


async def test_blacklist_export_in_json_is_one_object_a_line(cli: Cli) -> None:
    await cli.ok("blacklist", "add", DEST, "--reason", "asked")
    await cli.ok(
        "blacklist",
        "add",
        "+1718264",
        "--prefix",
        "--campaign",
        "ny",
        "--expires",
        "2099-01-01T00:00:00Z",
    )
    run = await cli.ok("blacklist", "export", "--json")
    rows = [json.loads(line) for line in run.out.splitlines()]
    assert rows == [
        {
            "value": DEST,
            "campaign": "",
            "source": "manual",
            "reason": "asked",
            "expires_at": None,
            "kind": "number",
        },
        {
            "value": "+1718264",
            "campaign": "ny",
            "source": "manual",
            "reason": "",
            "expires_at": "2099-01-01T00:00:00+00:00",
            "kind": "prefix",
        },
    ]


async def test_campaign_show_is_text_unless_json_is_asked(cli: Cli) -> None:
    await cli.ok(
        "campaign", "set", "spring", "--profile", "b2b", "--set", "calling_hours=09:00-17:00"
    )
    text, as_json = await asyncio.gather(
        cli.ok("campaign", "show", "spring"), cli.ok("campaign", "show", "spring", "--json")
    )
    assert "profile: b2b" in text.out.splitlines()
    assert "overrides: calling_hours=09:00-17:00" in text.out.splitlines()
    assert as_json.json()["overrides"] == {"calling_hours": "09:00-17:00"}


async def test_scrub_in_json_gives_the_apis_keys(cli: Cli, tmp_path: Path) -> None:
    await cli.ok("blacklist", "add", DEST)
    leads = tmp_path / "leads.csv"
    leads.write_text(f"destination\n{DEST}\n+12122641235\n", encoding="utf-8")
    run = await cli(
        "scrub",
        str(leads),
        "--json",
        env={"DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00"},
    )
    assert run.code == 0, run.err
    rows = [json.loads(line) for line in run.out.splitlines()]
    assert [(r["destination"], r["callable"], r["rule"]) for r in rows] == [
        (DEST, False, "blacklisted"),
        ("+12122641235", True, ""),
    ]
    assert set(rows[0]) == {"destination", "callable", "rule", "callable_at"}


@pytest.mark.usefixtures("registered")
async def test_replay_in_json_is_one_object_a_line(cli: Cli, tmp_path: Path) -> None:
    log = tmp_path / "calls.csv"
    log.write_text(
        f"at,caller_id,destination,campaign\n{T0},{CID},{DEST},\n2026-03-10T15:01:00Z,{CID},{DEST},\n",
        encoding="utf-8",
    )
    run = await cli.ok("replay", str(log), "--json")
    rows = [json.loads(line) for line in run.out.splitlines()]
    assert [(r["verdict"], r["rule"]) for r in rows] == [
        ("allow", ""),
        ("deny", "destination_interval"),
    ]


# ---- exit codes and I/O errors -------------------------------------------------------------


@pytest.mark.parametrize("url", ["garbage", "postgresql://u@h:99999/db"])
async def test_a_malformed_database_url_is_a_usage_error(cli: Cli, url: str) -> None:
    run = await Cli(url, cli.cwd)("check", CID, DEST)
    assert run.code == 2
    assert len(run.err_lines) == 1 and run.err_lines[0].startswith("dialguard: --database: ")


async def test_a_malformed_database_url_in_the_environment_is_a_config_error(cli: Cli) -> None:
    run = await cli("check", CID, DEST, env={"DIALGUARD_DATABASE_URL": "garbage"}, database=False)
    assert run.code == 2
    assert run.err_lines[0].startswith("dialguard: config: DIALGUARD_DATABASE_URL: ")


async def test_a_misspelled_variable_stops_the_command(cli: Cli, db_dsn: str) -> None:
    run = await cli("decide", CID, DEST, env={"DIALGUARD_GATE_FAILMODE": "open"})
    assert run.code == 2
    assert run.err_lines == [
        "dialguard: config: DIALGUARD_GATE_FAILMODE: unknown variable"
        " (did you mean DIALGUARD_GATE_FAIL_MODE?)"
    ]
    assert await count_decisions(db_dsn) == 0


async def test_an_import_in_which_every_row_is_bad_exits_2(cli: Cli, tmp_path: Path) -> None:
    numbers = tmp_path / "bad.csv"
    numbers.write_text("number\nnot a number\n12\n", encoding="utf-8")
    complaints = tmp_path / "complaints.csv"
    complaints.write_text("destination,source\nnope,crm\n", encoding="utf-8")
    blacklist, complained = await asyncio.gather(
        cli("blacklist", "import", str(numbers), "--json"),
        cli("complaints", "import", str(complaints), "--json"),
    )
    assert blacklist.code == complained.code == 2
    assert (blacklist.json()["imported"], blacklist.json()["bad_rows"]) == (0, 2)
    assert (complained.json()["imported"], complained.json()["bad_rows"]) == (0, 1)


@pytest.mark.usefixtures("registered")
async def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
    cli: Cli, db_dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "calls.csv"
    log.write_text(f"at,caller_id,destination,campaign\n{T0},{CID},{DEST},\n", encoding="utf-8")
    leads = tmp_path / "leads.csv"
    leads.write_text(f"{DEST}\n", encoding="utf-8")
    bad = tmp_path / "no" / "such" / "dir" / "out.csv"
    replayed, scrubbed = await asyncio.gather(
        cli("replay", str(log), "--keep", "--out", str(bad)),
        cli("scrub", str(leads), "--out", str(bad)),
    )
    for run in (replayed, scrubbed):
        assert run.code == 2
        assert run.err_lines == [f"dialguard: cannot write {bad}: No such file or directory"]
    assert await count_decisions(db_dsn) == 0  # the replay never ran, --keep or not


async def test_a_reader_that_leaves_early_ends_the_export_quietly(cli: Cli, tmp_path: Path) -> None:
    many = tmp_path / "many.csv"
    many.write_text("".join(f"+1212555{n:04d}\n" for n in range(10000)), encoding="utf-8")
    await cli.ok("blacklist", "import", str(many))

    def export_to_a_reader_that_leaves() -> tuple[bytes, bytes, int]:
        # As `dialguard blacklist export | head -1`: read one line, then close the pipe.
        with subprocess.Popen(
            [str(DIALGUARD), "blacklist", "export", "--database", cli.dsn],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            proc.stdout.close()
            err = proc.stderr.read()
            return first, err, proc.wait(timeout=60)

    first, err, code = await asyncio.to_thread(export_to_a_reader_that_leaves)
    assert first == b"value,campaign,source,reason,expires_at,kind\r\n"
    assert err == b""
    assert code == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [("--cause", "0"), ("--cause", "999"), ("--sip-code", "99"), ("--sip-code", "99999")],
)
async def test_causes_and_sip_codes_out_of_range_are_usage_errors(
    cli: Cli, option: str, value: str
) -> None:
    extra = ["--cause", "21"] if option == "--sip-code" else []
    run = await cli("outcome", "1", option, value, *extra)
    assert run.code == 2
    assert run.err_lines[-1].startswith(f"dialguard outcome: error: argument {option}: ")


@pytest.mark.usefixtures("registered")
async def test_an_unknown_campaign_is_refused_with_the_known_names(cli: Cli) -> None:
    await cli.ok("campaign", "set", "spring")
    typo, named_default, known = await asyncio.gather(
        cli("check", CID, DEST, "--at", T0, "--campaign", "sprng"),
        cli.ok("check", CID, DEST, "--at", T0, "--campaign", "default", "--json"),
        cli.ok("check", CID, DEST, "--at", T0, "--campaign", "spring", "--json"),
    )
    assert typo.code == 2
    assert typo.err_lines == [
        "dialguard: unknown campaign 'sprng' (known: spring; create it with "
        "`dialguard campaign set sprng`, or --campaign default for the default profile)"
    ]
    assert named_default.json()["verdict"] == known.json()["verdict"] == "allow"


async def test_adding_again_keeps_the_later_expiry_unless_replace_is_given(cli: Cli) -> None:
    later, earlier = "2099-01-01T00:00:00+00:00", "2098-01-01T00:00:00+00:00"
    await cli.ok("blacklist", "add", DEST, "--expires", later)
    kept = await cli.ok("blacklist", "add", DEST, "--expires", earlier, "--json")
    assert kept.json()["expires_at"].startswith("2099-01-01")
    replaced = await cli.ok("blacklist", "add", "--replace", DEST, "--expires", earlier, "--json")
    assert replaced.json()["expires_at"].startswith("2098-01-01")


async def test_an_expiry_already_past_is_refused(cli: Cli, pool: asyncpg.Pool) -> None:
    run = await cli("blacklist", "add", DEST, "--expires", "2020-01-01T00:00:00Z")
    assert run.code == 2
    assert len(run.err_lines) == 1 and "already past" in run.err_lines[0]
    assert await pool.fetchval("SELECT count(*) FROM blacklist_numbers") == 0
