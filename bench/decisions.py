"""Decisions per second through the real Decider, and pgbench of the same SQL (the ceiling).

    .venv/bin/python bench/dataset.py      # once: builds the data set
    .venv/bin/python bench/decisions.py    # about 5 minutes with the defaults

For each ``synchronous_commit`` setting asked for, and each client count (1, 16, 64):

* the decider: ``clients`` coroutines in one process (uvloop), each deciding one call after
  another through :class:`dialguard.decider.Decider` on a pool of ``clients`` connections (the
  production path: normalisation, pure checks, the ``dg_decide`` round trip as a
  prepared statement, evidence, metrics), for ``--seconds`` after a warm-up; once per
  ``--batches`` value: the decisions that arrive together go in one round trip, with at most
  that many batches in flight (0: every decision in its own round trip, a batch of one);
* pgbench: ``clients`` connections running ``SELECT * FROM dg_decide(...)`` of one
  decision with the same parameters (read from the decider's own first call) and the same
  destination mix, ``-M prepared``, for the same time.

Destinations: 75 % fresh numbers, 20 % with history, 5 % blacklisted; caller IDs and campaigns at
random among the registered ones. After each measurement the calls it allowed are ended (an
outcome is recorded) so that "up" calls do not pile up from one measurement to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import uvloop
from prometheus_client import CollectorRegistry

from common import (
    BENCH_DB,
    BLACKLIST_BASE,
    BLACKLIST_COUNT,
    CALLER_BASE,
    CALLER_COUNT,
    CALLERS_PER_CAMPAIGN,
    CAMPAIGN_COUNT,
    FRESH_AREAS,
    FRESH_SPAN,
    HISTORY_BASE,
    HISTORY_COUNT,
    MIX_BLACKLISTED,
    MIX_HISTORY,
    BenchProfiles,
    LibpqTarget,
    add_server_arguments,
    admin_connection,
    caller_number,
    campaign_of,
    die,
    load_average,
    machine,
    machine_cpu,
    pg_bin,
    pick,
    server,
    with_database,
)
from dialguard.decider import Decider, NumberPolicy
from dialguard.gc_pauses import freeze_startup_objects
from dialguard.metrics import Metrics
from dialguard.policy.model import DecisionRequest
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DEFAULT_BATCHES, DecideParams, DecideResult, DecisionStore


@dataclass
class Measurement:
    driver: str  # "decider" or "pgbench"
    synchronous_commit: str
    batches: str  # the decider's DecisionStore batches (0: each decision alone), "-" for pgbench
    clients: int
    seconds: float
    decisions: int
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    mix: dict[str, int]
    load_before: str
    load_after: str
    machine_cpu_pct: float
    steal_pct: float  # of the machine's CPU time, taken by the hypervisor for other guests
    client_cpu_us: float | None = None  # CPU of this process per decision (decider only)
    per_round_trip: float | None = None  # recorded decisions per round trip (decider only)
    errors: int = 0
    notes: list[str] = field(default_factory=list)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class CapturingStore(DecisionStore):
    """A real DecisionStore that keeps the first parameters it sends (for the pgbench script)."""

    first: DecideParams | None = None

    async def decide(self, params: DecideParams) -> DecideResult:
        if self.first is None:
            self.first = params
        return await super().decide(params)


# -- the decider -----------------------------------------------------------------------------


async def warm_profiles(decider: Decider, clients: int) -> None:
    """Load every campaign's profile once, as a long-running process has them cached."""
    names = [f"c{i}" for i in range(CAMPAIGN_COUNT)]
    for start in range(0, len(names), clients * 8):
        batch = names[start : start + clients * 8]
        await asyncio.gather(*(decider.profile_for(n) for n in batch))


async def drive(
    decider: Decider, clients: int, seconds: float, rng: random.Random
) -> tuple[list[int], Counter[str], float]:
    """Run ``clients`` callers for ``seconds``; (latencies in ns, rule mix, elapsed seconds)."""
    latencies: list[int] = []
    mix: Counter[str] = Counter()
    started = time.perf_counter()
    stop = started + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            p = pick(rng)
            request = DecisionRequest(
                caller_id=caller_number(p.caller_index),
                destination=p.destination,
                campaign=campaign_of(p.caller_index),
                source="bench",
            )
            t0 = time.perf_counter_ns()
            decision = await decider.decide(request)
            latencies.append(time.perf_counter_ns() - t0)
            mix[decision.rule.value if decision.rule else "allow"] += 1

    await asyncio.gather(*(caller() for _ in range(clients)))
    return latencies, mix, time.perf_counter() - started


async def run_decider(
    dsn: str,
    clients: int,
    seconds: float,
    warmup: float,
    sync: str,
    batches: int,
    rng: random.Random,
) -> tuple[Measurement, DecideParams | None]:
    pool = await create_pool(dsn, min_size=clients, max_size=clients)
    try:
        store = CapturingStore(pool, batches=batches)
        decider = Decider(
            decisions=store,
            campaigns=CampaignStore(pool),
            profiles=BenchProfiles(),
            numbers=NumberPolicy("US", "America/New_York"),
            metrics=Metrics(CollectorRegistry(), build_version="bench"),
            deadline=5.0,
        )
        await warm_profiles(decider, clients)
        await drive(decider, clients, warmup, rng)
        # As `dialguard serve` does once it is up: what start-up made is frozen out of the
        # garbage collector, so its full collections do not walk it again and again.
        freeze_startup_objects()
        first = await end_calls(pool, None)
        load_before = load_average()
        machine0 = machine_cpu()
        cpu0 = time.process_time()
        sizes0 = store.batch_sizes.copy()
        latencies, mix, elapsed = await drive(decider, clients, seconds, rng)
        cpu = time.process_time() - cpu0
        sizes = store.batch_sizes - sizes0
        busy_pct, steal_pct = machine_cpu().shares_since(machine0)
        load_after = load_average()
        await end_calls(pool, first)
    finally:
        await pool.close()
    ms = sorted(x / 1e6 for x in latencies)
    return (
        Measurement(
            driver="decider",
            synchronous_commit=sync,
            batches=str(batches),
            clients=clients,
            seconds=round(elapsed, 2),
            decisions=len(ms),
            per_second=round(len(ms) / elapsed, 1),
            p50_ms=round(percentile(ms, 0.50), 3),
            p99_ms=round(percentile(ms, 0.99), 3),
            max_ms=round(ms[-1], 3) if ms else float("nan"),
            mix=dict(mix.most_common()),
            load_before=load_before,
            load_after=load_after,
            machine_cpu_pct=busy_pct,
            steal_pct=steal_pct,
            client_cpu_us=round(1e6 * cpu / max(len(ms), 1), 1),
            per_round_trip=round(
                sum(n * k for n, k in sizes.items()) / max(sum(sizes.values()), 1), 2
            )
            if sizes
            else None,
            errors=mix.get("store_unavailable", 0),
        ),
        store.first,
    )


async def end_calls(pool: asyncpg.Pool, after_id: int | None) -> int:
    """End the calls allowed since ``after_id`` (all bench calls when None); the last id."""
    async with pool.acquire() as conn:
        last: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM decisions")
        await conn.execute(
            "UPDATE decisions SET outcome = 'no_answer', outcome_at = now(), cause = 19"
            " WHERE id > $1 AND allowed AND outcome_at IS NULL",
            after_id if after_id is not None else 0,
        )
    return last


# -- pgbench ---------------------------------------------------------------------------------


def sql_literal(value: Any, sql_type: str) -> str:
    if value is None:
        return f"NULL::{sql_type}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "'{" + ",".join(str(int(v)) for v in value) + "}'::" + sql_type
    if isinstance(value, dict):
        return "'" + json.dumps(value).replace("'", "''") + "'::jsonb"
    return "'" + str(value).replace("'", "''") + "'::" + sql_type


# The SQL types of a dg_attempt's fields (DecideParams.attempt()), in order, and of a
# dg_decide_rules' (DecideRules.row()).
ATTEMPT_TYPES = [
    "timestamptz", "boolean", "integer", "text", "text", "text", "integer", "text", "text",
    "text", "text", "text", "uuid", "text", "integer",
]  # fmt: skip
RULES_TYPES = [
    "boolean", "integer", "integer", "integer", "integer[]", "integer[]", "integer", "integer",
    "integer", "integer[]", "integer[]", "integer", "integer", "integer", "integer",
]  # fmt: skip


def pgbench_script(params: DecideParams, campaign_version: int, batch: int = 1) -> str:
    """The decision SQL with the decider's own constant parameters and the same random mix.

    Each transaction is one ``dg_decide`` of ``batch`` decisions, each drawn as a single
    one is.
    """
    lines: list[str] = []
    calls: list[list[str]] = []
    fresh_first = 12010000000 + 2_000_000
    for n in range(batch):
        v = "" if batch == 1 else str(n)
        attempt = params.attempt(1)
        item = [sql_literal(x, t) for x, t in zip(attempt, ATTEMPT_TYPES, strict=True)]
        item[0] = "now()"
        item[1] = "true"  # live
        item[2] = "NULL::timestamptz"  # no deadline
        item[3] = f"'+' || :cid{v}"
        item[4] = f"'+' || :dest{v}"
        item[5] = f"'c' || :camp{v}"
        item[6] = str(campaign_version)
        item[7] = "'pgbench'"
        calls.append(item)
        lines += [
            f"\\set c{v} random(0, {CALLER_COUNT - 1})",
            f"\\set cid{v} {CALLER_BASE} + :c{v}",
            f"\\set camp{v} :c{v} / {CALLERS_PER_CAMPAIGN}",
            f"\\set r{v} random(1, 100)",
            f"\\if :r{v} <= {MIX_BLACKLISTED}",
            f"\\set dest{v} {BLACKLIST_BASE} + random(0, {BLACKLIST_COUNT - 1})",
            f"\\elif :r{v} <= {MIX_BLACKLISTED + MIX_HISTORY}",
            f"\\set dest{v} {HISTORY_BASE} + random(0, {HISTORY_COUNT - 1})",
            "\\else",
            f"\\set f{v} random(0, {FRESH_AREAS * FRESH_SPAN - 1})",
            f"\\set dest{v} {fresh_first} + (:f{v} / {FRESH_SPAN}) * 10000000"
            f" + :f{v} % {FRESH_SPAN}",
            "\\endif",
        ]
    items = ["ROW(" + ", ".join(item) + ")::dg_attempt" for item in calls]
    rules = [sql_literal(x, t) for x, t in zip(params.rules.row(), RULES_TYPES, strict=True)]
    lines.append(
        "SELECT * FROM dg_decide(ARRAY["
        + ", ".join(items)
        + "], ARRAY[ROW("
        + ", ".join(rules)
        + ")::dg_decide_rules], true);"
    )
    return "\n".join([*lines, ""])


def read_pgbench_logs(folder: Path) -> list[float]:
    """Per-transaction latencies (ms) from pgbench -l logs: the third field is microseconds."""
    out: list[float] = []
    for path in folder.iterdir():
        with path.open() as handle:
            for line in handle:
                parts = line.split()
                if len(parts) >= 3:
                    out.append(int(parts[2]) / 1000)
    return out


async def run_pgbench(
    admin_url: str,
    dsn: str,
    script: str,
    clients: int,
    seconds: float,
    sync: str,
    batch: int = 1,
) -> Measurement:
    """pgbench of ``script``; a transaction of it is ``batch`` decisions."""
    target = LibpqTarget.from_url(admin_url)
    async with admin_connection(dsn) as conn:
        first: int = await conn.fetchval("SELECT coalesce(max(id), 0) FROM decisions")
    with tempfile.TemporaryDirectory(prefix="dialguard-pgbench-") as tmp:
        script_path = Path(tmp) / "decide.sql"
        script_path.write_text(script)
        logs = Path(tmp) / "logs"
        logs.mkdir()
        cmd = [
            pg_bin("pgbench"),
            *target.args(),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 2)),
            "-T",
            str(round(seconds)),
            "-f",
            str(script_path),
            "-l",
            "--log-prefix",
            str(logs / "pgbench"),
            BENCH_DB,
        ]
        load_before = load_average()
        machine0 = machine_cpu()
        proc = await asyncio.to_thread(
            subprocess.run, cmd, text=True, capture_output=True, check=False
        )
        busy_pct, steal_pct = machine_cpu().shares_since(machine0)
        load_after = load_average()
        if proc.returncode != 0:
            die(f"pgbench failed: {proc.stderr.strip() or proc.stdout.strip()}")
        ms = sorted(read_pgbench_logs(logs))
    found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    tps = float(found.group(1)) if found else len(ms) / seconds
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)
    async with admin_connection(dsn) as conn:
        rows = await conn.fetch(
            "SELECT coalesce(rule, 'allow') AS rule, count(*) AS n FROM decisions"
            " WHERE id > $1 GROUP BY 1 ORDER BY 2 DESC",
            first,
        )
        await conn.execute(
            "UPDATE decisions SET outcome = 'no_answer', outcome_at = now(), cause = 19"
            " WHERE id > $1 AND allowed AND outcome_at IS NULL",
            first,
        )
    return Measurement(
        driver="pgbench",
        synchronous_commit=sync,
        batches="-" if batch == 1 else f"x{batch}",
        clients=clients,
        seconds=seconds,
        decisions=len(ms) * batch,
        per_second=round(tps * batch, 1),
        p50_ms=round(percentile(ms, 0.50), 3),
        p99_ms=round(percentile(ms, 0.99), 3),
        max_ms=round(ms[-1], 3) if ms else float("nan"),
        mix={r["rule"]: r["n"] for r in rows},
        load_before=load_before,
        load_after=load_after,
        machine_cpu_pct=busy_pct,
        steal_pct=steal_pct,
        errors=int(failed.group(1)) if failed else 0,
    )


# -- the run ---------------------------------------------------------------------------------


async def server_settings(dsn: str) -> dict[str, str]:
    names = ["server_version", "shared_buffers", "max_connections", "fsync", "wal_sync_method"]
    async with admin_connection(dsn) as conn:
        rows = await conn.fetch(
            "SELECT name, current_setting(name) AS value FROM pg_settings"
            " WHERE name = any($1::text[])",
            names,
        )
    return {r["name"]: r["value"] for r in rows}


async def bench(args: argparse.Namespace, admin_url: str) -> list[Measurement]:
    dsn = with_database(admin_url, BENCH_DB)
    try:
        async with admin_connection(dsn) as conn:
            version = await conn.fetchval("SELECT version FROM campaigns WHERE name = 'c0'")
            # The data set has every caller ID used by its campaign in the last day, so that the
            # campaign-rotation rule takes its no-lock path as in a running system. A data set
            # built more than a day ago has aged out of that: each decision would then lock its
            # campaign and count its caller IDs. Bring the uses that are ageing back into the day.
            aged = await conn.execute(
                "UPDATE campaign_callerids SET last_used_at = now() - random() * interval '20h'"
                " WHERE last_used_at < now() - interval '20h'"
            )
            print(
                f"# caller-ID uses brought back into the day: {aged.split()[-1]}", file=sys.stderr
            )
    except asyncpg.InvalidCatalogNameError:
        die(f"no database {BENCH_DB}: run bench/dataset.py first")
    settings = await server_settings(dsn)
    print(f"# machine: {machine()}", file=sys.stderr)
    print(f"# server: {json.dumps(settings)}", file=sys.stderr)
    rng = random.Random(args.seed)
    results: list[Measurement] = []
    for sync in args.synchronous_commit:
        async with admin_connection(admin_url) as admin:
            # A database default, so the decider's pool and pgbench's connections both get it.
            await admin.execute(f"ALTER DATABASE {BENCH_DB} SET synchronous_commit = {sync}")
        try:
            for clients in args.clients:
                params: DecideParams | None = None
                for batches in args.batches:
                    decider, params = await run_decider(
                        dsn, clients, args.seconds, args.warmup, sync, batches, rng
                    )
                    report(decider)
                    results.append(decider)
                if args.no_pgbench or params is None:
                    continue
                script = pgbench_script(params, int(version))
                ceiling = await run_pgbench(admin_url, dsn, script, clients, args.seconds, sync)
                report(ceiling)
                results.append(ceiling)
                # The batch SQL's own ceiling, at the batch size the decider reached.
                sizes = {
                    round(m.per_round_trip)
                    for m in results
                    if m.driver == "decider" and m.clients == clients and m.per_round_trip
                }
                for size in sorted(n for n in sizes if n > 1):
                    script = pgbench_script(params, int(version), size)
                    batched = await run_pgbench(
                        admin_url, dsn, script, clients, args.seconds, sync, size
                    )
                    report(batched)
                    results.append(batched)
        finally:
            async with admin_connection(admin_url) as admin:
                await admin.execute(f"ALTER DATABASE {BENCH_DB} RESET synchronous_commit")
    return results


def report(m: Measurement) -> None:
    mix = ", ".join(f"{k} {100 * v / max(m.decisions, 1):.1f}%" for k, v in m.mix.items())
    print(
        f"{m.driver:8} sync={m.synchronous_commit:3} batches={m.batches:2} "
        f"clients={m.clients:2}: "
        f"{m.per_second:8.0f}/s p50 {m.p50_ms:.2f} ms p99 {m.p99_ms:.2f} ms "
        f"max {m.max_ms:.1f} ms cpu {m.machine_cpu_pct}% (stolen {m.steal_pct}%) "
        f"load {m.load_before} -> {m.load_after}"
        + (f" py {m.client_cpu_us} us/decision" if m.client_cpu_us else "")
        + (f" {m.per_round_trip} a round trip" if m.per_round_trip else "")
        + f"\n         mix: {mix}",
        file=sys.stderr,
        flush=True,
    )


def table(results: list[Measurement]) -> str:
    lines = [
        "| sync commit | batches | clients | decider /s | per round trip | p50 ms | p99 ms "
        "| max ms | pgbench /s | pgbench p99 ms | decider / pgbench | pgbench of its batches /s "
        "| decider / that | stolen % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ceilings = {
        (m.synchronous_commit, m.clients): m
        for m in results
        if m.driver == "pgbench" and m.batches == "-"
    }
    batch_ceilings = {
        (m.synchronous_commit, m.clients, m.batches): m
        for m in results
        if m.driver == "pgbench" and m.batches != "-"
    }
    for m in results:
        if m.driver != "decider":
            continue
        ceiling = ceilings.get((m.synchronous_commit, m.clients))
        ratio = f"{100 * m.per_second / ceiling.per_second:.0f} %" if ceiling else "-"
        size = round(m.per_round_trip) if m.per_round_trip else 1
        batched = batch_ceilings.get((m.synchronous_commit, m.clients, f"x{size}"))
        batched_cell = f"{batched.per_second:,.0f} (x{size})" if batched else "-"
        batched_ratio = f"{100 * m.per_second / batched.per_second:.0f} %" if batched else "-"
        lines.append(
            f"| {m.synchronous_commit} | {m.batches} | {m.clients} | {m.per_second:,.0f} "
            f"| {m.per_round_trip or 1} | {m.p50_ms:.2f} | {m.p99_ms:.2f} "
            f"| {m.max_ms:.1f} | {ceiling.per_second if ceiling else 0:,.0f} "
            f"| {ceiling.p99_ms if ceiling else 0:.2f} | {ratio} | {batched_cell} "
            f"| {batched_ratio} | {m.steal_pct:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--seconds", type=float, default=20.0, help="each measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="decider warm-up")
    parser.add_argument(
        "--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    parser.add_argument(
        "--synchronous-commit",
        type=lambda s: s.split(","),
        default=["on", "off"],
        help="comma-separated settings to measure (on = the embedded server's default)",
    )
    parser.add_argument(
        "--batches",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[DEFAULT_BATCHES, 0],
        help="decider variants: how many batches of decisions may be in flight at once "
        f"({DEFAULT_BATCHES} = dialguard as shipped; 0 = every decision in its own round trip)",
    )
    parser.add_argument("--no-pgbench", action="store_true")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed; the default is a fresh one, so that a run does not redraw the "
        "destinations an earlier run just decided (they would be denied for their interval)",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    for sync in args.synchronous_commit:
        if sync not in ("on", "off", "local", "remote_write", "remote_apply"):
            die(f"not a synchronous_commit value: {sync}")
    with server(args) as url:
        results = uvloop.run(bench(args, url))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2) + "\n")
    if results:
        med = statistics.median(m.machine_cpu_pct for m in results)
        stolen = statistics.median(m.steal_pct for m in results)
        print(
            f"\nmedian machine CPU during measurements: {med} % (stolen: {stolen} %)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
