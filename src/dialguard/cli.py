"""The ``dialguard`` command.

Exit codes: 0 when the command did its work (a deny is a result, not an error), 2 for a usage,
input or configuration error (one line each), 1 for any other failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

from dialguard import __version__
from dialguard.app import Stores, build_decider, open_stores
from dialguard.blacklist_csv import PrefixRow, StageRow, read_rows
from dialguard.config import (
    ConfigError,
    Settings,
    database_url_problem,
    find_config_file,
    load_settings,
)
from dialguard.csv_input import CsvInputError, CsvRecords
from dialguard.decider import TimeRefused
from dialguard.numbers import InvalidNumber, is_e164_prefix, normalise
from dialguard.policy.codes import CallerIdState
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.policy.outcome import classify
from dialguard.policy.profile import ProfileError, build_profile, parse_override_assignment
from dialguard.policy.values import ValueSyntaxError
from dialguard.policy.values import parse_instant as parse_time
from dialguard.replay import ReplayInputError, read_call_log, replay
from dialguard.store.errors import Conflict, NotFound, StoreUnavailable
from dialguard.store.migrate import SchemaOutdated

log = logging.getLogger("dialguard")
CLI_DEADLINE = 30.0
IMPORT_CHUNK = 200_000


class UsageError(Exception):
    """Bad input from the person at the keyboard: exit 2 with this one line."""


BLACKLIST_CSV = """\
CSV columns (the header is optional; a file without one is one number a line, optionally
followed by the other columns in this order):
  number       the number or prefix; the header may also call it value or destination
  campaign     empty: the global blacklist
  source       default: import (or --source)
  reason       free text
  expires_at   ISO 8601 with an offset; empty: never
  kind         number (default) or prefix; what blacklist export writes
example:
  number,campaign,source,reason,expires_at,kind
  +12122641234,,dnc,asked not to be called,,number
  +1718264,spring,manual,,2026-12-31T00:00:00Z,prefix"""

COMPLAINTS_CSV = """\
CSV columns (a header is required; only destination is):
  destination  the number complained about; the header may also call it number
  source       carrier, 12321, regulator, crm, internal, ... (or give --source)
  caller_id    the caller ID complained about; empty: the last call to the destination
  campaign     the campaign; empty: the last call's
  at           when the complaint was made, ISO 8601 with an offset; empty: now
  text         the complaint's words
example:
  destination,source,caller_id,at,text
  +12122641234,carrier,+12125550100,2026-03-10T15:00:00Z,said never again"""

REPLAY_CSV = """\
CSV columns of the call log (a header is required; the order is free):
  at                when the call was placed, ISO 8601 with an offset
  caller_id         the caller ID it went out with
  destination       the number called
  campaign          may be empty
  answered_seconds  optional: how long it was answered (the outcome of an allowed call)
example:
  at,caller_id,destination,campaign,answered_seconds
  2026-03-10T15:00:00Z,+12125550100,+12122641234,spring,95
output columns: at, caller_id, destination, campaign, verdict (allow or deny), rule, evidence
(with --json, one JSON object a line with these keys)"""

SCRUB_CSV = """\
input: a CSV with a column named destination (or number, phone, value), or a file of one
number a line without a header. Example:
  destination,name
  +12122641234,Ann
output columns, as POST /v1/scrub answers: destination (E.164, or the input when it is no
valid number), callable (true or false), rule (empty when callable), callable_at (when the
rule lets go, where known). With --json, one JSON object a line with these keys."""

EXPORT_CSV = """\
output columns: value, campaign, source, reason, expires_at, kind (number or prefix); blacklist
import reads them back. With --json, one JSON object a line with these keys."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their lines (the CSV formats are laid out by hand)."""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, metavar="FILE", help="path to dialguard.toml"
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output (JSON; one object a line for row-by-row output)",
    )
    common.add_argument(
        "--database",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="PostgreSQL URL, postgresql://user:password@host:port/db (overrides database.url)",
    )
    return common


def _ranged(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low} to {high}, got {value}")
        return value

    return parse


# Commands whose output has no machine-readable form: --json is refused there.
NO_JSON = frozenset({"serve", "demo"})


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="dialguard",
        description="A compliance gate for outbound calls.",
        epilog="exit codes: 0 the command did its work (a deny is a result), 1 a runtime "
        "failure, 2 a usage, input or configuration error. `dialguard COMMAND --help` for more.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"dialguard {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help)"
    )

    def cmd(
        where: Any, name: str, help_text: str, epilog: str | None = None, *, json: bool = True
    ) -> argparse.ArgumentParser:
        return cast(
            argparse.ArgumentParser,
            where.add_parser(
                name,
                help=help_text,
                description=help_text,
                epilog=epilog,
                formatter_class=_Formatter,
                parents=[common] if json else [_common_without_json()],
            ),
        )

    def group(name: str, help_text: str) -> Any:
        g = cmd(sub, name, help_text)
        return g.add_subparsers(
            dest="action", required=True, metavar="ACTION", help="what to do (ACTION --help)"
        )

    s = cmd(sub, "serve", "run the gate, the admin API and the metrics endpoint", json=False)
    s.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log lines at this level and above go to stderr (default: INFO; DEBUG shows raw "
        "ARI events)",
    )
    s = cmd(sub, "demo", "embedded PostgreSQL + fake Asterisk + a simulated dialer", json=False)
    s.add_argument("--duration", type=float, default=None, help="seconds to run (default: forever)")
    s.add_argument("--rate", type=float, default=10.0, help="calls per second (default: 10)")
    cmd(sub, "migrate", "apply database migrations (every command also does this first)")
    for name, what in (
        ("check", "decide without recording (dry run)"),
        ("decide", "decide and record"),
    ):
        s = cmd(sub, name, what)
        s.add_argument(
            "caller_id", metavar="CALLER_ID", help="the caller ID the call goes out with"
        )
        s.add_argument("destination", metavar="DESTINATION", help="the number to call")
        s.add_argument(
            "--campaign",
            help="the campaign (its profile and overrides); a name not in the database is "
            "refused, except default (the default profile)",
        )
        s.add_argument("--at", help="decision time, ISO 8601 with offset (default: now)")
    s = cmd(sub, "outcome", "record what became of an allowed call")
    s.add_argument("decision_id", type=int, metavar="DECISION_ID", help="from decide's answer")
    outcome = s.add_mutually_exclusive_group(required=True)
    outcome.add_argument(
        "--answered-seconds", type=int, metavar="N", help="the call was answered for N seconds"
    )
    outcome.add_argument(
        "--cause", type=_ranged(1, 127, "--cause"), help="Q.850 hang-up cause (1-127)"
    )
    s.add_argument(
        "--sip-code", type=_ranged(100, 699, "--sip-code"), help="SIP final response (100-699)"
    )
    s.add_argument("--at", help="when the call ended, ISO 8601 with offset (default: now)")
    s = cmd(sub, "replay", "compliance audit of a call log CSV", REPLAY_CSV)
    s.add_argument("file", metavar="FILE", help="the call log (CSV, columns below)")
    s.add_argument("--out", metavar="FILE", help="write the decided rows here (default: stdout)")
    s.add_argument("--keep", action="store_true", help="keep what the replay recorded")

    g = group("callerid", "register and manage caller IDs")
    s = cmd(g, "add", "register a caller ID")
    s.add_argument("number", metavar="NUMBER", help="the caller ID")
    s.add_argument("--campaign", help="register it for this campaign only")
    for name, what in (
        ("rest", "rest a caller ID: every call from it is denied until released"),
        ("release", "put a rested caller ID back to work"),
        ("retire", "retire a caller ID for good"),
    ):
        s = cmd(g, name, what)
        s.add_argument("number", metavar="NUMBER", help="the caller ID")
        s.add_argument("--reason", help="why (shown in callerid list; rest default: manual)")
    s = cmd(g, "list", "list caller IDs")
    s.add_argument(
        "--state", choices=[st.value for st in CallerIdState], help="only those in this state"
    )

    g = group("campaign", "campaign profile, overrides, pause and resume")
    s = cmd(g, "set", "select a campaign's profile and override its keys")
    s.add_argument("name", metavar="NAME", help="the campaign")
    s.add_argument("--profile", help="default, b2c, b2b, finance or one of dialguard.toml's")
    s.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile key, e.g. destination_caps=2/24h,5/7d (repeatable)",
    )
    for name, what in (("pause", "pause a campaign"), ("resume", "resume a paused campaign")):
        s = cmd(g, name, what)
        s.add_argument("name", metavar="NAME", help="the campaign")
        s.add_argument("--reason", help="why (kept with the campaign)")
    s = cmd(g, "show", "show a campaign's profile, overrides and state")
    s.add_argument("name", metavar="NAME", help="the campaign")
    cmd(g, "list", "list campaigns")

    g = group("blacklist", "blacklisted numbers and prefixes")
    for name, what in (
        ("add", "blacklist a number or a prefix"),
        ("remove", "take a number or a prefix off a blacklist"),
    ):
        s = cmd(g, name, what)
        s.add_argument(
            "value", metavar="VALUE", help="a number, or with --prefix a prefix (+1718264)"
        )
        s.add_argument("--prefix", action="store_true", help="VALUE is an E.164 prefix")
        s.add_argument(
            "--campaign", default="", help="that campaign's blacklist (default: the global one)"
        )
        if name == "add":
            s.add_argument(
                "--expires", metavar="TIME", help="ISO 8601 with offset (default: never)"
            )
            s.add_argument("--reason", help="why (kept with the entry)")
            s.add_argument("--source", help="where the entry comes from (default: manual)")
            s.add_argument(
                "--replace",
                action="store_true",
                help="take --expires as given even where it is earlier (without it, an entry "
                "already there keeps the later expiry; none is the latest)",
            )
    s = cmd(
        g, "import", "import a blacklist CSV (streamed; bad rows reported by line)", BLACKLIST_CSV
    )
    s.add_argument("file", metavar="FILE", help="the CSV file (columns below)")
    s.add_argument("--source", help="source of rows without one (default: import)")
    s.add_argument(
        "--bulk",
        action="store_true",
        help="first load of an empty number blacklist, locked until done (fastest)",
    )
    cmd(g, "export", "write the whole blacklist as CSV to stdout", EXPORT_CSV)

    g = group("complaints", "record complaints: blacklist, rest caller IDs, pause campaigns")
    s = cmd(g, "add", "record one complaint")
    s.add_argument("destination", metavar="DESTINATION", help="the number complained about")
    s.add_argument("--source", required=True, help="carrier, 12321, regulator, crm, internal, ...")
    s.add_argument("--caller-id", help="the caller ID complained about (default: the last call's)")
    s.add_argument("--campaign", help="the campaign (default: the last call's)")
    s.add_argument("--at", help="when the complaint was made, ISO 8601 with offset (default: now)")
    s.add_argument("--text", help="the complaint's words")
    s = cmd(g, "import", "import complaints from a CSV", COMPLAINTS_CSV)
    s.add_argument("file", metavar="FILE", help="the CSV file (columns below)")
    s.add_argument("--source", help="source of rows without one")

    s = cmd(sub, "scrub", "which numbers of a list are callable now, and why not", SCRUB_CSV)
    s.add_argument("file", metavar="FILE", help="the lead list (format below)")
    s.add_argument(
        "--caller-id", help="judge the caller ID's rules too (default: the destination's only)"
    )
    s.add_argument("--campaign", help="the campaign whose profile applies")
    s.add_argument("--out", metavar="FILE", help="write the verdicts here (default: stdout)")
    return parser


def _common_without_json() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for action in _common()._actions:
        if action.dest in ("config", "database"):
            common._add_action(action)
    return common


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in NO_JSON and _wants_json(args):
        parser.error(f"{args.command} has no machine-readable output: --json is not taken")
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(find_config_file(getattr(args, "config", None), dict(os.environ)))
        if getattr(args, "database", None):
            problem = database_url_problem(args.database)
            if problem:
                raise UsageError(f"--database: {problem}")
            settings = replace(settings, database=replace(settings.database, url=args.database))
        handler = COMMANDS[args.command]
        code = _run(handler(settings, args))
        sys.stdout.flush()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"dialguard: config: {problem}", file=sys.stderr)
        code = 2
    except (UsageError, ReplayInputError, TimeRefused, CsvInputError, SchemaOutdated) as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        code = 2
    except StoreUnavailable as exc:
        print(f"dialguard: database unavailable: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:
        # The reader left (``| head``): stop quietly. Python would complain again when it
        # flushes stdout at exit, so stdout now points nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"dialguard: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)


def _wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    if _wants_json(args):
        print(json.dumps(payload, default=str))
    else:
        print(text)


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _number(text: str, settings: Settings, what: str) -> str:
    try:
        return normalise(text, settings.numbers.default_region)
    except InvalidNumber:
        raise UsageError(f"{what} {text!r} is not a valid phone number") from None


def _decision_text(d: Decision) -> str:
    head = d.verdict.value.upper() + (f" {d.rule.value}" if d.rule else "")
    lines = [f"{head}: {d.evidence}"]
    if d.decision_id is not None:
        lines.append(f"decision_id: {d.decision_id}")
    if d.callable_at:
        lines.append(f"callable_at: {d.callable_at.isoformat()}")
    return "\n".join(lines)


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async with open_stores(settings, schema="as_is") as stores:
        from dialguard.store.migrate import migrate

        applied = await migrate(stores.pool)
    _emit(args, {"applied": applied}, "\n".join(applied) or "database is up to date")
    return 0


async def cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    at = _time(args.at)
    async with open_stores(settings) as stores:
        await _known_campaign(stores, args.campaign)
        decider = build_decider(settings, stores, deadline=CLI_DEADLINE)
        if at is None:
            # A live decision's calling hours are judged on the database's clock.
            await decider.sync_clock()
        decision = await decider.decide(
            DecisionRequest(
                caller_id=args.caller_id,
                destination=args.destination,
                campaign=args.campaign,
                at=at,
                record=args.command == "decide",
                source="cli",
            )
        )
    _emit(args, decision.as_json(), _decision_text(decision))
    return 0


async def cmd_outcome(settings: Settings, args: argparse.Namespace) -> int:
    at = _time(args.at) or datetime.now().astimezone()
    answered = args.answered_seconds
    if answered is not None and answered < 0:
        raise UsageError("--answered-seconds cannot be negative")
    cause = args.cause if args.cause is not None else 16
    outcome = classify(answered, cause, args.sip_code)
    async with open_stores(settings) as stores:
        recorded = await stores.decisions.record_outcome(
            args.decision_id,
            outcome=outcome.value,
            answered_seconds=answered,
            cause=cause,
            sip_code=args.sip_code,
            at=at,
        )
    if not recorded.recorded:
        raise UsageError(f"decision {args.decision_id} is not an allowed call awaiting its outcome")
    _emit(args, {"decision_id": args.decision_id, "outcome": outcome.value}, outcome.value)
    return 0


async def _known_campaign(stores: Stores, name: str | None) -> None:
    """A campaign name the database does not know is refused: a typo would otherwise be judged
    by the default profile. ``default`` asks for that profile by name."""
    if not name or name == "default" or await stores.campaigns.get(name) is not None:
        return
    known = sorted(row["name"] for row in await stores.campaigns.list())
    raise UsageError(
        f"unknown campaign {name!r} (known: {', '.join(known) or 'none'}; create it with "
        f"`dialguard campaign set {name}`, or --campaign default for the default profile)"
    )


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    """stdout, or the file at ``path``, opened before any work so a bad path costs nothing."""
    if path is None:
        yield sys.stdout
        return
    try:
        handle = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle


def _input(path: str) -> TextIO:
    try:
        return open(path, newline="", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


class _Rows:
    """Rows out as CSV (with a header), or with ``--json`` as one JSON object a line."""

    def __init__(self, out: TextIO, columns: Sequence[str], as_json: bool) -> None:
        self._out = out
        self._columns = tuple(columns)
        self._json = as_json
        self._csv = csv.writer(out)
        if not as_json:
            self._csv.writerow(self._columns)

    def write(self, values: Sequence[Any]) -> None:
        if self._json:
            record = {
                column: value.isoformat() if isinstance(value, datetime) else value
                for column, value in zip(self._columns, values, strict=True)
            }
            self._out.write(json.dumps(record, default=str) + "\n")
        else:
            self._csv.writerow([_cell(v) for v in values])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    with _input(args.file) as handle:
        try:
            rows = read_call_log(handle)
        except UnicodeDecodeError as exc:
            raise UsageError(f"{args.file}: not UTF-8 text ({exc.reason})") from None
    from dialguard.store.connection import OneConnection

    with _output(args.out) as out:
        async with open_stores(settings) as stores, stores.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                local = Stores.on(OneConnection(conn), settings.feedback)
                decider = build_decider(settings, local, deadline=CLI_DEADLINE)
                results = await replay(rows, decider, local.decisions)
            except BaseException:
                await tx.rollback()
                raise
            if args.keep:
                await tx.commit()
            else:
                await tx.rollback()
        summary: dict[str, int] = {}
        writer = _Rows(
            out,
            ["at", "caller_id", "destination", "campaign", "verdict", "rule", "evidence"],
            _wants_json(args),
        )
        for row, decision in results:
            rule = decision.rule.value if decision.rule else ""
            summary[rule or "allowed"] = summary.get(rule or "allowed", 0) + 1
            writer.write(
                [
                    row.at,
                    row.caller_id,
                    row.destination,
                    row.campaign,
                    decision.verdict.value,
                    rule,
                    decision.evidence,
                ]
            )
    print(
        f"replayed {len(results)} calls" + ("" if args.keep else " (rolled back)"), file=sys.stderr
    )
    for rule, count in sorted(summary.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:22} {count}", file=sys.stderr)
    return 0


async def cmd_callerid(settings: Settings, args: argparse.Namespace) -> int:
    number = None if args.action == "list" else _number(args.number, settings, "caller ID")
    async with open_stores(settings) as stores:
        if number is None:
            rows = await stores.callerids.list(args.state)
            text = "\n".join(f"{r['number']}  {r['state']:8} {r['reason'] or ''}" for r in rows)
            _emit(args, rows, text or "no caller IDs")
            return 0
        try:
            if args.action == "add":
                row = await stores.callerids.add(number, args.campaign)
            else:
                state = {"rest": "rested", "release": "active", "retire": "retired"}[args.action]
                reason = args.reason or ("manual" if state == "rested" else None)
                row = await stores.callerids.set_state(number, state, reason)
        except (NotFound, Conflict) as exc:
            raise UsageError(str(exc)) from None
    _emit(args, row, f"{row['number']}: {row['state']}")
    return 0


async def cmd_campaign(settings: Settings, args: argparse.Namespace) -> int:
    async with open_stores(settings) as stores:
        if args.action == "list":
            rows = await stores.campaigns.list()
            _emit(args, rows, "\n".join(f"{r['name']}  {r['profile']}" for r in rows) or "none")
            return 0
        if args.action == "set":
            row = await _campaign_set(settings, stores, args)
        elif args.action in ("pause", "resume"):
            row = await stores.campaigns.set_paused(args.name, args.action == "pause", args.reason)
        else:
            found = await stores.campaigns.get(args.name)
            row = found or {
                "name": args.name,
                "profile": "default",
                "overrides": {},
                "paused": False,
            }
    _emit(args, row, _campaign_text(row))
    return 0


def _campaign_text(row: Any) -> str:
    """``key: value`` lines; the overrides as the KEY=VALUE that ``campaign set --set`` takes."""
    lines = []
    for key, value in dict(row).items():
        if key == "overrides":
            text = " ".join(f"{k}={_override_text(v)}" for k, v in sorted(value.items()))
            lines.append(f"overrides: {text or 'none'}")
        elif isinstance(value, bool):
            lines.append(f"{key}: {'yes' if value else 'no'}")
        else:
            lines.append(f"{key}: {_cell(value)}")
    return "\n".join(lines)


def _override_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


async def _campaign_set(settings: Settings, stores: Stores, args: argparse.Namespace) -> Any:
    current = await stores.campaigns.get(args.name)
    profile = args.profile or (current["profile"] if current else "default")
    if profile not in settings.profiles:
        raise UsageError(
            f"unknown profile {profile!r} (known: {', '.join(sorted(settings.profiles))})"
        )
    overrides: dict[str, Any] = dict(current["overrides"]) if current else {}
    problems: list[str] = []
    for assignment in args.assignments:
        try:
            key, value = parse_override_assignment(assignment)
        except ValueSyntaxError as exc:
            problems.append(str(exc))
            continue
        overrides[key] = value
    from dialguard.config import profile_raw

    try:
        build_profile(profile_raw(settings, profile), overrides, where=f"campaign {args.name}")
    except ProfileError as exc:
        problems.extend(exc.problems)
    if problems:
        raise UsageError("; ".join(problems))
    return await stores.campaigns.set(args.name, profile, overrides)


async def cmd_blacklist(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "export":
        return await _blacklist_export(settings, args)
    if args.action == "import":
        return await _blacklist_import(settings, args)
    value = args.value.strip()
    if args.prefix:
        if not is_e164_prefix(value):
            raise UsageError(f"prefix {value!r} must be E.164 like +1718264")
    else:
        value = _number(value, settings, "number")
    async with open_stores(settings) as stores:
        if args.action == "remove":
            remove = (
                stores.blacklist.remove_prefix if args.prefix else stores.blacklist.remove_number
            )
            if not await remove(value, args.campaign):
                raise UsageError(f"{value} is not on that blacklist")
            _emit(args, {"removed": value}, f"removed {value}")
            return 0
        add = stores.blacklist.add_prefix if args.prefix else stores.blacklist.add_number
        try:
            row = await add(
                value,
                campaign=args.campaign,
                source=args.source or "manual",
                reason=args.reason,
                expires_at=_time(args.expires),
                replace=args.replace,
            )
        except ValueError as exc:  # e.g. an expiry in the past
            raise UsageError(str(exc)) from None
    _emit(args, row, f"blacklisted {value}")
    return 0


async def _blacklist_export(settings: Settings, args: argparse.Namespace) -> int:
    async with open_stores(settings) as stores:
        writer = _Rows(
            sys.stdout,
            ["value", "campaign", "source", "reason", "expires_at", "kind"],
            _wants_json(args),
        )
        async for row in stores.blacklist.export():
            writer.write(
                [
                    row["value"],
                    row["campaign"],
                    row["source"],
                    row["reason"] or "",
                    row["expires_at"],
                    row["kind"],
                ]
            )
    return 0


async def _blacklist_import(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.file)
    started = time.perf_counter()
    counts = {"imported": 0, "bad": 0}
    prefixes: list[PrefixRow] = []

    def progress(done: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        print(
            f"\rimported {done:,} rows ({rate:,.0f}/s), {counts['bad']} bad",
            end="",
            file=sys.stderr,
        )

    with _input(args.file) as handle:
        chunks = read_rows(
            handle,
            region=settings.numbers.default_region,
            default_source=args.source or "import",
            chunk_size=IMPORT_CHUNK,
            prefixes=prefixes,
        )

        async def parsed() -> AsyncIterator[list[StageRow]]:
            """Chunks parsed in a thread while PostgreSQL takes the previous one: the two run
            on different cores instead of taking turns. Bad rows are reported as they come."""
            parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            while (item := await parsing) is not None:
                parsing = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                rows, errors = item
                for error in errors:
                    print(f"{path}: {error}", file=sys.stderr)
                counts["bad"] += len(errors)
                yield rows
                counts["imported"] += len(rows)
                progress(counts["imported"])

        async with open_stores(settings) as stores:
            if args.bulk:
                try:
                    await stores.blacklist.bulk_load(parsed())
                except Conflict as exc:
                    raise UsageError(f"{exc} (import without --bulk to merge)") from None
            else:
                async for rows in parsed():
                    if rows:
                        await stores.blacklist.import_chunk(rows)
                    if prefixes:
                        batch = prefixes[:]
                        prefixes.clear()
                        counts["imported"] += await stores.blacklist.import_prefixes(batch)
            if prefixes:
                counts["imported"] += await stores.blacklist.import_prefixes(prefixes)
    print(file=sys.stderr)
    seconds = time.perf_counter() - started
    imported, bad = counts["imported"], counts["bad"]
    _emit(
        args,
        {"imported": imported, "bad_rows": bad, "seconds": round(seconds, 3)},
        f"imported {imported} rows, {bad} bad rows, in {seconds:.1f} s",
    )
    return _import_code(imported, bad)


def _import_code(good: int, bad: int) -> int:
    """2 when every row was bad (the file is the problem), else 0: good rows are kept."""
    return 2 if bad and not good else 0


def _feedback(settings: Settings, stores: Stores) -> Any:
    from dialguard.feedback import Feedback
    from dialguard.store.complaints import ComplaintStore

    return Feedback(
        complaints=ComplaintStore(stores.pool),
        policy=settings.feedback,
        default_region=settings.numbers.default_region,
    )


async def cmd_complaints(settings: Settings, args: argparse.Namespace) -> int:
    from dialguard.policy.feedback import ComplaintError, ComplaintRequest, ImportSummary

    if args.action == "import":
        summary = ImportSummary()
        with _input(args.file) as handle:
            async with open_stores(settings) as stores:
                feedback = _feedback(settings, stores)
                await _complaints_import(feedback, handle, args.file, args.source, summary)
        for error in summary.errors:
            print(f"{args.file}: line {error.line}: {error.message}", file=sys.stderr)
        result = summary.as_json()
        _emit(
            args,
            result,
            f"imported {summary.imported} complaints ({summary.duplicates} duplicates), "
            f"{summary.bad_rows} bad rows; effects: {result['effects']}",
        )
        return _import_code(summary.imported + summary.duplicates, summary.bad_rows)
    at = _time(args.at)
    async with open_stores(settings) as stores:
        feedback = _feedback(settings, stores)
        try:
            recorded = await feedback.complain(
                ComplaintRequest(
                    destination=args.destination,
                    source=args.source,
                    caller_id=args.caller_id,
                    campaign=args.campaign,
                    at=at,
                    text=args.text,
                )
            )
        except ComplaintError as exc:
            raise UsageError(str(exc)) from None
    done = [k for k, v in recorded.effects.as_json().items() if v]
    text = f"complaint {recorded.id}" + (" (duplicate)" if recorded.duplicate else "")
    _emit(args, recorded.as_json(), f"{text}: {', '.join(done) or 'no effect'}")
    return 0


async def _complaints_import(
    feedback: Any, handle: TextIO, name: str, source: str | None, summary: Any
) -> None:
    reader = CsvRecords(handle)
    header = [c.strip().lower() for c in next(reader, [])]
    if "destination" not in header and "number" not in header:
        raise UsageError(f"{name}: line 1: the header needs a destination column")
    batch: list[tuple[int, dict[str, str]]] = []
    for fields in reader:
        if any(f.strip() for f in fields):
            batch.append((reader.line_num, dict(zip(header, fields, strict=False))))
        if len(batch) >= 1000:
            await feedback.import_records(batch, summary, default_source=source)
            batch = []
            print(f"\rimported {summary.imported:,}", end="", file=sys.stderr)
    if batch:
        await feedback.import_records(batch, summary, default_source=source)
    print(file=sys.stderr)


SCRUB_COLUMNS = ("destination", "callable", "rule", "callable_at")


async def cmd_scrub(settings: Settings, args: argparse.Namespace) -> int:
    from dialguard.bulk_numbers import BulkNumbers
    from dialguard.policy.scrub import ScrubRequest
    from dialguard.scrub import Scrubber
    from dialguard.store.scrub import ScrubStore

    numbers = settings.numbers
    started = time.perf_counter()
    counts: dict[str, int] = {}
    with _input(args.file) as handle, _output(args.out) as out:
        async with open_stores(settings) as stores:
            scrubber = Scrubber(
                store=ScrubStore(stores.pool),
                profiles=build_decider(settings, stores, deadline=CLI_DEADLINE),
                callerids=stores.callerids,
                campaigns=stores.campaigns,
                numbers=BulkNumbers(numbers.default_region, numbers.fallback_timezone),
                default_region=numbers.default_region,
            )
            request = ScrubRequest(caller_id=args.caller_id, campaign=args.campaign)
            writer = _Rows(out, SCRUB_COLUMNS, _wants_json(args))
            async for batch in scrubber.scrub(_number_chunks(handle), request):
                for row in batch:
                    rule = row.rule.value if row.rule else ""
                    counts[rule or "callable"] = counts.get(rule or "callable", 0) + 1
                    writer.write([row.destination, row.callable, rule, row.callable_at])
                done = sum(counts.values())
                rate = done / max(time.perf_counter() - started, 1e-9)
                print(f"\rscrubbed {done:,} numbers ({rate:,.0f}/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    for rule, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:22} {count}", file=sys.stderr)
    return 0


async def _number_chunks(handle: TextIO, size: int = 5000) -> AsyncIterator[list[str]]:
    """The numbers of a lead list: a destination column (or number, phone), else the first."""
    reader = CsvRecords(handle)
    column: int | None = None
    chunk: list[str] = []
    for fields in reader:
        if not fields or not any(f.strip() for f in fields):
            continue
        if column is None:
            header = [f.strip().lower() for f in fields]
            names = ("destination", "number", "phone", "value")
            column = next((header.index(n) for n in names if n in header), -1)
            if column >= 0:
                continue
            column = 0
        chunk.append(fields[column] if column < len(fields) else "")
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from dialguard.app import StartupError, serve

    config_path = find_config_file(getattr(args, "config", None), dict(os.environ))
    try:
        return int(await serve(settings, config_path=config_path))
    except StartupError as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        return 1


async def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from dialguard.demo import run_demo

    return int(await run_demo(settings, duration=args.duration, rate=args.rate))


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "serve": cmd_serve,
    "demo": cmd_demo,
    "migrate": cmd_migrate,
    "check": cmd_decide,
    "decide": cmd_decide,
    "outcome": cmd_outcome,
    "replay": cmd_replay,
    "callerid": cmd_callerid,
    "campaign": cmd_campaign,
    "blacklist": cmd_blacklist,
    "complaints": cmd_complaints,
    "scrub": cmd_scrub,
}

if __name__ == "__main__":
    main()
