"""Where a decision transaction (a dg_decide of one, or of ``--batch``) spends its time,
statement by statement, under each plan-cache mode.

Needs a server with ``pg_stat_statements`` preloaded (``track = all``, ``track_planning = on``);
pgserver's build has no contrib modules, so run it against a stock PostgreSQL holding the data set
(``bench/dataset.py --database URL``; the README shows the set-up):

    .venv/bin/python bench/statement_stats.py --database postgresql://postgres@/postgres?host=DIR

For each ``plan_cache_mode`` it runs the pgbench decision script (the same one bench/decisions.py
uses, ``--batch`` decisions a transaction) with one client for ``--seconds``, then lists every
statement inside dg_decide with its calls, how many times it was planned, and mean planning
and execution time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import tempfile
from pathlib import Path

import uvloop

from common import (
    BENCH_DB,
    BenchProfiles,
    LibpqTarget,
    add_server_arguments,
    admin_connection,
    caller_number,
    campaign_of,
    die,
    pg_bin,
    pick,
    server,
    with_database,
)
from decisions import CapturingStore, pgbench_script
from dialguard.decider import Decider, NumberPolicy
from dialguard.policy.model import DecisionRequest
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool

MODES = ("auto", "force_custom_plan", "force_generic_plan")


async def decide_params_script(dsn: str, batch: int) -> str:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        store = CapturingStore(pool)
        decider = Decider(
            decisions=store,
            campaigns=CampaignStore(pool),
            profiles=BenchProfiles(),
            numbers=NumberPolicy("US", "America/New_York"),
            deadline=5.0,
        )
        p = pick(random.Random())
        await decider.decide(
            DecisionRequest(
                caller_id=caller_number(p.caller_index),
                destination=p.destination,
                campaign=campaign_of(p.caller_index),
                source="bench",
            )
        )
        version, _ = await decider.profile_for("c0")
    finally:
        await pool.close()
    assert store.first is not None
    return pgbench_script(store.first, version, batch)


async def run(args: argparse.Namespace, admin_url: str) -> None:
    dsn = with_database(admin_url, BENCH_DB)
    script = await decide_params_script(dsn, args.batch)
    target = LibpqTarget.from_url(admin_url)
    with tempfile.TemporaryDirectory(prefix="dialguard-stmt-") as tmp:
        path = Path(tmp) / "decide.sql"
        path.write_text(script)
        for mode in args.modes:
            async with admin_connection(dsn) as conn:
                await conn.execute("SELECT pg_stat_statements_reset()")
            env = {**os.environ, "PGOPTIONS": f"-c plan_cache_mode={mode}"}
            proc = await asyncio.to_thread(
                subprocess.run,
                [
                    pg_bin("pgbench"),
                    *target.args(),
                    "-n",
                    "-M",
                    "prepared",
                    "-c",
                    "1",
                    "-T",
                    str(args.seconds),
                    "-f",
                    str(path),
                    BENCH_DB,
                ],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if proc.returncode != 0:
                die(f"pgbench failed: {proc.stderr.strip()}")
            tps = next(
                (line for line in proc.stdout.splitlines() if line.startswith("tps")), "tps ?"
            )
            print(f"\n## plan_cache_mode = {mode}: {tps}")
            async with admin_connection(dsn) as conn:
                rows = await conn.fetch(
                    "SELECT calls, plans, mean_plan_time, mean_exec_time, query"
                    "  FROM pg_stat_statements"
                    " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1)"
                    "   AND calls >= 10"
                    " ORDER BY total_plan_time + total_exec_time DESC",
                    BENCH_DB,
                )
            print("| calls | plans | plan ms | exec ms | statement |")
            print("|---:|---:|---:|---:|---|")
            for r in rows:
                text = " ".join(r["query"].split())[:90].replace("|", "\\|")
                print(
                    f"| {r['calls']} | {r['plans']} | {r['mean_plan_time']:.3f} "
                    f"| {r['mean_exec_time']:.3f} | `{text}` |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--batch", type=int, default=1, help="decisions a transaction (dg_decide items)"
    )
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=list(MODES), help="plan_cache_mode values"
    )
    args = parser.parse_args()
    with server(args) as url:
        uvloop.run(run(args, url))


if __name__ == "__main__":
    main()
