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
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from dialguard import __version__
from dialguard.app import Stores, build_decider, open_stores
from dialguard.blacklist_csv import PrefixRow, StageRow, read_rows
from dialguard.config import ConfigError, Settings, find_config_file, load_settings
from dialguard.numbers import InvalidNumber, is_e164_prefix, normalise
from dialguard.policy.codes import CallerIdState
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.policy.outcome import classify
from dialguard.policy.profile import ProfileError, build_profile, parse_override_assignment
from dialguard.policy.values import ValueSyntaxError
from dialguard.policy.values import parse_instant as parse_time
from dialguard.replay import ReplayInputError, read_call_log, replay
from dialguard.store.errors import Conflict, NotFound, StoreUnavailable

log = logging.getLogger("dialguard")
CLI_DEADLINE = 30.0
IMPORT_CHUNK = 200_000


class UsageError(Exception):
    """Bad input from the person at the keyboard: exit 2 with this one line."""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="path to dialguard.toml")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    common.add_argument(
        "--database", default=argparse.SUPPRESS, help="PostgreSQL URL (overrides database.url)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="dialguard", description="A compliance gate for outbound calls.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"dialguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    s = cmd("serve", "run the gate, the admin API and the metrics endpoint")
    s.add_argument("--log-level", default="INFO")
    s = cmd("demo", "embedded PostgreSQL + fake Asterisk + a simulated dialer")
    s.add_argument("--duration", type=float, default=None, help="seconds to run (default: forever)")
    s.add_argument("--rate", type=float, default=10.0, help="calls per second")
    cmd("migrate", "apply database migrations")
    for name, what in (
        ("check", "decide without recording (dry run)"),
        ("decide", "decide and record"),
    ):
        s = cmd(name, what)
        s.add_argument("caller_id")
        s.add_argument("destination")
        s.add_argument("--campaign")
        s.add_argument("--at", help="decision time, ISO 8601 with offset")
    s = cmd("outcome", "record what became of an allowed call")
    s.add_argument("decision_id", type=int)
    group = s.add_mutually_exclusive_group(required=True)
    group.add_argument("--answered-seconds", type=int)
    group.add_argument("--cause", type=int, help="Q.850 cause")
    s.add_argument("--sip-code", type=int)
    s.add_argument("--at", help="when the call ended, ISO 8601 with offset")
    s = cmd("replay", "compliance audit of a call log CSV")
    s.add_argument("file")
    s.add_argument("--out", help="write the decided rows here (default: stdout)")
    s.add_argument("--keep", action="store_true", help="keep what the replay recorded")
    s = cmd("callerid", "register and manage caller IDs")
    s.add_argument("action", choices=["add", "rest", "release", "retire", "list"])
    s.add_argument("number", nargs="?")
    s.add_argument("--campaign")
    s.add_argument("--reason")
    s.add_argument("--state", choices=[st.value for st in CallerIdState])
    s = cmd("campaign", "campaign profile, overrides, pause and resume")
    s.add_argument("action", choices=["set", "pause", "resume", "show", "list"])
    s.add_argument("name", nargs="?")
    s.add_argument("--profile")
    s.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--reason")
    s = cmd("blacklist", "blacklisted numbers and prefixes")
    s.add_argument("action", choices=["add", "remove", "import", "export"])
    s.add_argument("value", nargs="?", help="number, prefix (+1718264) or CSV file")
    s.add_argument("--prefix", action="store_true")
    s.add_argument("--campaign", default="")
    s.add_argument("--expires")
    s.add_argument("--source", default=None)
    s.add_argument("--reason")
    s.add_argument(
        "--bulk",
        action="store_true",
        help="import: first load of an empty number blacklist, locked until done (fastest)",
    )
    s = cmd("complaints", "record complaints: blacklist, rest caller IDs, pause campaigns")
    s.add_argument("action", choices=["add", "import"])
    s.add_argument("value", help="destination number, or CSV file to import")
    s.add_argument("--source", help="carrier, 12321, regulator, crm, internal, ...")
    s.add_argument("--caller-id")
    s.add_argument("--campaign")
    s.add_argument("--at", help="when the complaint was made, ISO 8601 with offset")
    s.add_argument("--text")
    s = cmd("scrub", "which numbers of a list are callable now, and why not")
    s.add_argument("file", help="CSV with a destination column, or one number a line")
    s.add_argument("--caller-id")
    s.add_argument("--campaign")
    s.add_argument("--out", help="write the verdicts here (default: stdout)")
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = load_settings(find_config_file(getattr(args, "config", None), dict(os.environ)))
        if getattr(args, "database", None):
            settings = replace(settings, database=replace(settings.database, url=args.database))
        handler = COMMANDS[args.command]
        code = _run(handler(settings, args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"dialguard: config: {problem}", file=sys.stderr)
        code = 2
    except (UsageError, ReplayInputError) as exc:
        print(f"dialguard: {exc}", file=sys.stderr)
        code = 2
    except StoreUnavailable as exc:
        print(f"dialguard: database unavailable: {exc}", file=sys.stderr)
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
    async with open_stores(settings, run_migrations=False) as stores:
        from dialguard.store.migrate import migrate

        applied = await migrate(stores.pool)
    _emit(args, {"applied": applied}, "\n".join(applied) or "database is up to date")
    return 0


async def cmd_decide(settings: Settings, args: argparse.Namespace) -> int:
    at = _time(args.at)
    async with open_stores(settings) as stores:
        decider = build_decider(settings, stores, deadline=CLI_DEADLINE)
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


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    try:
        with open(args.file, newline="", encoding="utf-8") as handle:
            rows = read_call_log(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    from dialguard.store.connection import OneConnection

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
    with contextlib.ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(args.out, "w", newline="", encoding="utf-8"))
            if args.out
            else sys.stdout
        )
        writer = csv.writer(out)
        writer.writerow(
            ["at", "caller_id", "destination", "campaign", "verdict", "rule", "evidence"]
        )
        for row, decision in results:
            rule = decision.rule.value if decision.rule else ""
            summary[rule or "allowed"] = summary.get(rule or "allowed", 0) + 1
            writer.writerow(
                [
                    row.at.isoformat(),
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
    async with open_stores(settings) as stores:
        if args.action == "list":
            rows = await stores.callerids.list(args.state)
            text = "\n".join(f"{r['number']}  {r['state']:8} {r['reason'] or ''}" for r in rows)
            _emit(args, rows, text or "no caller IDs")
            return 0
        if not args.number:
            raise UsageError(f"callerid {args.action} needs a NUMBER")
        number = _number(args.number, settings, "caller ID")
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
        if not args.name:
            raise UsageError(f"campaign {args.action} needs a NAME")
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
    _emit(args, row, json.dumps(row, default=str, indent=2))
    return 0


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
    async with open_stores(settings) as stores:
        if args.action == "export":
            writer = csv.writer(sys.stdout)
            writer.writerow(["value", "campaign", "source", "reason", "expires_at", "kind"])
            async for row in stores.blacklist.export():
                expires = row["expires_at"].isoformat() if row["expires_at"] else ""
                reason = row["reason"] or ""
                writer.writerow(
                    [row["value"], row["campaign"], row["source"], reason, expires, row["kind"]]
                )
            return 0
        if not args.value:
            raise UsageError(f"blacklist {args.action} needs a VALUE")
        if args.action == "import":
            return await _blacklist_import(settings, stores, args)
        value = args.value.strip()
        if args.prefix:
            if not is_e164_prefix(value):
                raise UsageError(f"prefix {value!r} must be E.164 like +1718264")
        else:
            value = _number(value, settings, "number")
        if args.action == "remove":
            remove = (
                stores.blacklist.remove_prefix if args.prefix else stores.blacklist.remove_number
            )
            if not await remove(value, args.campaign):
                raise UsageError(f"{value} is not on that blacklist")
            _emit(args, {"removed": value}, f"removed {value}")
            return 0
        add = stores.blacklist.add_prefix if args.prefix else stores.blacklist.add_number
        row = await add(
            value,
            campaign=args.campaign,
            source=args.source or "manual",
            reason=args.reason,
            expires_at=_time(args.expires),
        )
    _emit(args, row, f"blacklisted {value}")
    return 0


async def _blacklist_import(settings: Settings, stores: Stores, args: argparse.Namespace) -> int:
    path = Path(args.value)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
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

    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
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
    return 0


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

    async with open_stores(settings) as stores:
        feedback = _feedback(settings, stores)
        if args.action == "add":
            if not args.source:
                raise UsageError("complaints add needs --source")
            try:
                recorded = await feedback.complain(
                    ComplaintRequest(
                        destination=args.value,
                        source=args.source,
                        caller_id=args.caller_id,
                        campaign=args.campaign,
                        at=_time(args.at),
                        text=args.text,
                    )
                )
            except ComplaintError as exc:
                raise UsageError(str(exc)) from None
            done = [k for k, v in recorded.effects.as_json().items() if v]
            text = f"complaint {recorded.id}" + (" (duplicate)" if recorded.duplicate else "")
            _emit(args, recorded.as_json(), f"{text}: {', '.join(done) or 'no effect'}")
            return 0
        summary = ImportSummary()
        await _complaints_import(feedback, Path(args.value), args.source, summary)
    for error in summary.errors:
        print(f"{args.value}: {error.line}: {error.message}", file=sys.stderr)
    result = summary.as_json()
    _emit(
        args,
        result,
        f"imported {summary.imported} complaints ({summary.duplicates} duplicates), "
        f"{summary.bad_rows} bad rows; effects: {result['effects']}",
    )
    return 0


async def _complaints_import(feedback: Any, path: Path, source: str | None, summary: Any) -> None:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        header = [c.strip().lower() for c in next(reader, [])]
        if "destination" not in header and "number" not in header:
            raise UsageError(f"{path}: line 1: the header needs a destination column")
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


async def cmd_scrub(settings: Settings, args: argparse.Namespace) -> int:
    from dialguard.bulk_numbers import BulkNumbers
    from dialguard.policy.scrub import ScrubRequest
    from dialguard.scrub import Scrubber
    from dialguard.store.scrub import ScrubStore

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file")
    numbers = settings.numbers
    started = time.perf_counter()
    counts: dict[str, int] = {}
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
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(path.open(newline="", encoding="utf-8", errors="replace"))
            out: TextIO = (
                stack.enter_context(open(args.out, "w", newline="", encoding="utf-8"))
                if args.out
                else sys.stdout
            )
            writer = csv.writer(out)
            writer.writerow(["destination", "verdict", "rule", "callable_at"])
            async for batch in scrubber.scrub(_number_chunks(handle), request):
                for row in batch:
                    rule = row.rule.value if row.rule else ""
                    counts[rule or "callable"] = counts.get(rule or "callable", 0) + 1
                    at = row.callable_at.isoformat() if row.callable_at else ""
                    writer.writerow(
                        [row.destination, "allow" if row.callable else "deny", rule, at]
                    )
                done = sum(counts.values())
                rate = done / max(time.perf_counter() - started, 1e-9)
                print(f"\rscrubbed {done:,} numbers ({rate:,.0f}/s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    for rule, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {rule:22} {count}", file=sys.stderr)
    return 0


async def _number_chunks(handle: TextIO, size: int = 5000) -> AsyncIterator[list[str]]:
    """The numbers of a lead list: a destination column (or number, phone), else the first."""
    reader = csv.reader(handle)
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
