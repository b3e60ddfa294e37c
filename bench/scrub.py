"""Scrub throughput and complaint ingestion, against the decision core's benchmark data set.

    .venv/bin/python bench/dataset.py                 # once: builds dialguard_bench
    .venv/bin/python bench/scrub.py                   # 1,000,000 numbers, in process and via HTTP
    .venv/bin/python bench/scrub.py --mode usecase --numbers 200000
    .venv/bin/python bench/scrub.py --mode complaints --complaints 20000

``usecase`` feeds the numbers to the scrub use case in chunks, as the API does, and consumes its
rows. ``api`` starts the admin API on 127.0.0.1 (a free port) and POSTs the list as a streamed
``text/csv`` body, reading the CSV answer as it streams; the figure includes HTTP, CSV parsing
and formatting. The numbers follow the decision benchmark's mix (``common.pick``: 5 %
blacklisted, 20 % with call history, the rest fresh), written in E.164.

``complaints`` records complaints through the feedback use case in batches of ``--batch``, as an
import does, into a copy of the data set's database (the data set itself is left untouched), and
reports complaints per second.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import uvloop
from aiohttp import web

from common import (
    BENCH_DB,
    BenchProfiles,
    add_server_arguments,
    admin_connection,
    caller_number,
    load_average,
    machine,
    pick,
    server,
    with_database,
)
from dialguard.admin import Audit, CallerIds, Campaigns
from dialguard.api.routes import ApiDeps, build_api_app
from dialguard.bulk_numbers import BulkNumbers
from dialguard.decider import Decider, NumberPolicy
from dialguard.feedback import Feedback
from dialguard.policy.feedback import FeedbackPolicy, ImportSummary
from dialguard.policy.scrub import ScrubRequest
from dialguard.scrub import Scrubber
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.complaints import ComplaintStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore
from dialguard.store.health import HealthStore
from dialguard.store.migrate import migrate
from dialguard.store.scrub import ScrubStore

CHUNK = 5000
COMPLAINTS_DB = "dialguard_bench_complaints"


def numbers(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [pick(rng).destination for _ in range(count)]


def decider_on(pool: asyncpg.Pool) -> Decider:
    return Decider(
        decisions=DecisionStore(pool),
        campaigns=CampaignStore(pool),
        profiles=BenchProfiles(),
        numbers=NumberPolicy("US", "America/New_York"),
    )


def scrubber(pool: asyncpg.Pool) -> Scrubber:
    return Scrubber(
        store=ScrubStore(pool),
        profiles=decider_on(pool),
        callerids=CallerIdStore(pool),
        campaigns=CampaignStore(pool),
        numbers=BulkNumbers("US", "America/New_York"),
        default_region="US",
    )


async def chunks(values: list[str], size: int) -> AsyncIterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def bench_usecase(url: str, values: list[str]) -> dict[str, float]:
    pool = await create_pool(url, min_size=2, max_size=4)
    try:
        await migrate(pool)
        s = scrubber(pool)
        started = time.perf_counter()
        rows = callable_rows = 0
        by_rule: dict[str, int] = {}
        async for batch in s.scrub(chunks(values, CHUNK), ScrubRequest()):
            rows += len(batch)
            for row in batch:
                if row.callable:
                    callable_rows += 1
                else:
                    key = row.rule.value if row.rule else "?"
                    by_rule[key] = by_rule.get(key, 0) + 1
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
    print(f"  verdicts: callable {callable_rows:,}, denied {by_rule}", file=sys.stderr)
    return {"rows": rows, "seconds": seconds, "per_second": rows / seconds}


async def bench_api(url: str, values: list[str]) -> dict[str, float]:
    pool = await create_pool(url, min_size=2, max_size=6)
    try:
        await migrate(pool)
        complaints = ComplaintStore(pool)
        deps = ApiDeps(
            decider=decider_on(pool),
            audit=Audit(pool, complaints),
            feedback=Feedback(complaints=complaints, policy=FeedbackPolicy(), default_region="US"),
            scrub=scrubber(pool),
            blacklist=BlacklistStore(pool),
            callerids=CallerIds(CallerIdStore(pool), HealthStore(pool), FeedbackPolicy()),
            campaigns=Campaigns(CampaignStore(pool), BenchProfiles()),
            default_region="US",
        )
        runner = web.AppRunner(build_api_app(deps), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]

        async def body() -> AsyncIterator[bytes]:
            yield b"destination\n"
            for start in range(0, len(values), CHUNK):
                yield ("\n".join(values[start : start + CHUNK]) + "\n").encode()

        started = time.perf_counter()
        first_byte = None
        lines = 0
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/v1/scrub",
                data=body(),
                headers={"Content-Type": "text/csv"},
            ) as resp,
        ):
            resp.raise_for_status()
            async for chunk in resp.content.iter_any():
                if first_byte is None:
                    first_byte = time.perf_counter() - started
                lines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
        await runner.cleanup()
    finally:
        await pool.close()
    rows = lines - 1
    return {
        "rows": rows,
        "seconds": seconds,
        "per_second": rows / seconds,
        "first_byte_s": first_byte or 0.0,
    }


async def bench_complaints(admin_url: str, count: int, batch: int) -> dict[str, float]:
    async with admin_connection(admin_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {COMPLAINTS_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {COMPLAINTS_DB} TEMPLATE {BENCH_DB}")
    pool = await create_pool(with_database(admin_url, COMPLAINTS_DB), min_size=1, max_size=2)
    try:
        await migrate(pool)
        feedback = Feedback(
            complaints=ComplaintStore(pool), policy=FeedbackPolicy(), default_region="US"
        )
        rng = random.Random(11)
        now = datetime.now(UTC)
        records = []
        for i in range(count):
            p = pick(rng)
            at = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
            fields = {
                "destination": p.destination,
                "caller_id": caller_number(p.caller_index) if i % 2 else "",
                "source": rng.choice(("carrier", "12321", "crm")),
                "at": at.isoformat(),
            }
            records.append((i + 2, fields))
        summary = ImportSummary()
        started = time.perf_counter()
        for start in range(0, count, batch):
            await feedback.import_records(records[start : start + batch], summary)
        seconds = time.perf_counter() - started
    finally:
        await pool.close()
        async with admin_connection(admin_url) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {COMPLAINTS_DB} WITH (FORCE)")
    print(f"  {summary.as_json()['effects']}, duplicates {summary.duplicates}", file=sys.stderr)
    return {
        "rows": summary.imported + summary.duplicates,
        "seconds": seconds,
        "per_second": count / seconds,
    }


async def main_async(args: argparse.Namespace, admin_url: str) -> None:
    url = with_database(admin_url, BENCH_DB)
    print(f"machine: {machine()}; load {load_average()}", file=sys.stderr)
    if args.mode in ("usecase", "all", "api"):
        values = numbers(args.numbers, args.seed)
    if args.mode in ("usecase", "all"):
        r = await bench_usecase(url, values)
        print(
            f"scrub (use case): {r['rows']:,} numbers in {r['seconds']:.1f} s = "
            f"{r['per_second']:,.0f} numbers/s"
        )
    if args.mode in ("api", "all"):
        r = await bench_api(url, values)
        print(
            f"scrub (HTTP, text/csv): {r['rows']:,} numbers in {r['seconds']:.1f} s = "
            f"{r['per_second']:,.0f} numbers/s; first byte after {r['first_byte_s']:.2f} s"
        )
    if args.mode in ("complaints", "all"):
        r = await bench_complaints(admin_url, args.complaints, args.batch)
        print(
            f"complaints: {args.complaints:,} in {r['seconds']:.1f} s = "
            f"{r['per_second']:,.0f} complaints/s (batches of {args.batch})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--mode", choices=["all", "usecase", "api", "complaints"], default="all")
    parser.add_argument("--numbers", type=int, default=1_000_000)
    parser.add_argument("--complaints", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with server(args) as admin_url:
        uvloop.run(main_async(args, admin_url))


if __name__ == "__main__":
    main()
