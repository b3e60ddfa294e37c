"""Build the benchmark data set in a fresh database ``dialguard_bench``.

    .venv/bin/python bench/dataset.py            # embedded server in /tmp/dialguard-bench/pgdata
    .venv/bin/python bench/dataset.py --database postgresql://user@host/postgres

What it holds (the ranges are in ``bench/common.py``):

* 1,000,000 globally blacklisted numbers and 10,000 blacklisted prefixes;
* 20 campaigns and 300,000 registered caller IDs, 15,000 to each campaign. The default profile
  allows a caller ID 5 calls a minute, 60 an hour, 300 a day and 10 up at once. At a few
  thousand allowed decisions a second, 300,000 caller IDs see well under one allowed call a
  minute each, so the caps almost never bind while every decision still runs every caller-ID
  count (``bench/decisions.py`` ends the calls of each measurement, so "up" calls do not pile up
  from one measurement to the next). The benchmark profile raises the campaign's distinct
  caller IDs a day from 20 to 15,000 (see ``bench_profile_raw`` in ``bench/common.py``);
* every caller ID already used by its campaign in the last day (``campaign_callerids``), as in
  a running system, so the campaign-rotation rule takes its no-lock path;
* 100,000 destinations with history: 1 to 3 allowed decisions each in the past 30 days from
  random caller IDs, with outcomes (some answered long enough to start a cool-down).

Everything is loaded with COPY and the tables are vacuumed and analysed at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import uvloop

from common import (
    BENCH_DB,
    BLACKLIST_BASE,
    BLACKLIST_COUNT,
    CALLER_COUNT,
    CAMPAIGN_COUNT,
    HISTORY_BASE,
    HISTORY_COUNT,
    PREFIX_COUNT,
    add_server_arguments,
    admin_connection,
    caller_number,
    campaign_of,
    prefix,
    server,
    with_database,
)
from dialguard.store.connection import create_pool
from dialguard.store.migrate import migrate

HistoryRow = tuple[
    datetime, datetime, str, str, str, bool, str, str, datetime, int | None, int | None
]


def history_rows(now: datetime, rng: random.Random) -> Iterator[HistoryRow]:
    """Allowed past decisions, 1 to 3 per destination, over the last 30 days."""
    for i in range(HISTORY_COUNT):
        destination = f"+{HISTORY_BASE + i}"
        for _ in range(rng.choices((1, 2, 3), weights=(6, 3, 1))[0]):
            at = now - timedelta(seconds=rng.uniform(3600, 30 * 86400))
            caller = rng.randrange(CALLER_COUNT)
            if rng.random() < 0.3:
                outcome, seconds, cause = "answered", rng.randint(5, 300), 16
            else:
                outcome, seconds, cause = "no_answer", None, 19
            ended = at + timedelta(seconds=(seconds or 0) + 20)
            yield (
                at,
                at,
                caller_number(caller),
                destination,
                campaign_of(caller),
                True,
                "bench",
                outcome,
                ended,
                seconds,
                cause,
            )


async def build(admin_url: str, *, seed: int) -> None:
    rng = random.Random(seed)
    async with admin_connection(admin_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {BENCH_DB}")
    pool = await create_pool(with_database(admin_url, BENCH_DB), min_size=1, max_size=2)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            await load(conn, rng)
    finally:
        await pool.close()


async def load(conn: asyncpg.Connection, rng: random.Random) -> None:
    now = datetime.now(UTC)
    started = time.perf_counter()

    def done(what: str, t0: float) -> None:
        print(f"  {what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    t0 = time.perf_counter()
    await conn.copy_records_to_table(
        "blacklist_numbers",
        records=((BLACKLIST_BASE + i, "", "registry") for i in range(BLACKLIST_COUNT)),
        columns=["number", "campaign", "source"],
    )
    done(f"{BLACKLIST_COUNT:,} blacklisted numbers", t0)

    t0 = time.perf_counter()
    await conn.copy_records_to_table(
        "blacklist_prefixes",
        records=((prefix(i), "", "registry") for i in range(PREFIX_COUNT)),
        columns=["prefix", "campaign", "source"],
    )
    done(f"{PREFIX_COUNT:,} blacklisted prefixes", t0)

    t0 = time.perf_counter()
    await conn.copy_records_to_table(
        "campaigns",
        records=((f"c{i}", "default") for i in range(CAMPAIGN_COUNT)),
        columns=["name", "profile"],
    )
    await conn.copy_records_to_table(
        "callerids",
        records=((caller_number(i), campaign_of(i)) for i in range(CALLER_COUNT)),
        columns=["number", "campaign"],
    )
    await conn.copy_records_to_table(
        "campaign_callerids",
        records=(
            (campaign_of(i), caller_number(i), now - timedelta(hours=rng.uniform(1, 20)))
            for i in range(CALLER_COUNT)
        ),
        columns=["campaign", "caller_id", "last_used_at"],
    )
    done(f"{CAMPAIGN_COUNT:,} campaigns, {CALLER_COUNT:,} caller IDs", t0)

    t0 = time.perf_counter()
    await conn.copy_records_to_table(
        "decisions",
        records=history_rows(now, rng),
        columns=[
            "at",
            "decided_at",
            "caller_id",
            "destination",
            "campaign",
            "allowed",
            "source",
            "outcome",
            "outcome_at",
            "answered_seconds",
            "cause",
        ],
    )
    n = await conn.fetchval("SELECT count(*) FROM decisions")
    done(f"{n:,} past decisions for {HISTORY_COUNT:,} destinations", t0)

    t0 = time.perf_counter()
    # VACUUM as well as ANALYZE: it sets the visibility map, so the counting queries can use
    # index-only scans from the first decision on, as they would in a long-running system.
    await conn.execute("VACUUM (ANALYZE)")
    done("VACUUM (ANALYZE)", t0)
    size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    print(
        f"data set ready in {time.perf_counter() - started:.1f} s; database {BENCH_DB} is {size}",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--seed", type=int, default=20260310)
    args = parser.parse_args()
    with server(args) as url:
        uvloop.run(build(url, seed=args.seed))


if __name__ == "__main__":
    main()
