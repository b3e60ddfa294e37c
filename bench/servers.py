"""A decision on Debian's PostgreSQL against one on the embedded server, in the same run.

    scripts/debian-postgres .venv/bin/python bench/servers.py

Both servers get a fresh database, migrated and never analysed: a new deployment's tables, which
have no statistics (the case where PostgreSQL's JIT used to compile the decision's plan on every
call). On each, live decisions go through the real Decider, from 1 client and then from 16, and
the run reports decisions a second, latency percentiles, the server's CPU a decision (every
process of the server, read with psutil) and this process's (the Decider and asyncpg: what a
decision costs dialguard itself). The target: a decision on Debian's PostgreSQL costs
at most 1.5 times one on the embedded server.

Debian's server is the one ``DIALGUARD_TEST_DSN`` names (``scripts/debian-postgres`` starts a
throwaway cluster of the package and sets it); the embedded one starts in a temporary folder.
Only what every release has is used, so ``PYTHONPATH=<old>/src`` measures an older checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import psutil  # type: ignore[import-untyped]

from dialguard.decider import Decider, NumberPolicy
from dialguard.policy.model import DecisionRequest
from dialguard.policy.profile import builtin_raw
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore
from dialguard.store.embedded import EmbeddedPostgres
from dialguard.store.migrate import migrate

BLOCKS = (
    ("+1212", "America/New_York"),
    ("+4420", "Europe/London"),
    ("+813", "Asia/Tokyo"),
    ("+8610", "Asia/Shanghai"),
)
CALLERS = [f"+1212555{n:04d}" for n in range(1000, 1100)]


class Profiles:
    """Every rule on, as shipped."""

    def raw(self, name: str) -> dict[str, Any]:
        return builtin_raw("default")


@dataclass
class Measured:
    server: str
    version: str
    jit: str
    clients: int
    decisions: int
    per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    client_cpu_ms: float


def daytime_block() -> str:
    now = datetime.now(UTC)
    return next(p for p, z in BLOCKS if 9 <= now.astimezone(ZoneInfo(z)).hour < 20)


def server_processes(backend_pid: int) -> list[psutil.Process]:
    postmaster = psutil.Process(backend_pid).parent()
    return [postmaster, *postmaster.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


async def measure(
    name: str, admin_url: str, decisions: int, clients: list[int], spacing: float = 0.0
) -> list[Measured]:
    database = f"dg_servers_{os.getpid()}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {database}")
    await admin.execute(f"CREATE DATABASE {database}")
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + database))
    results: list[Measured] = []
    try:
        pool = await create_pool(url, min_size=max(clients), max_size=max(clients))
        await migrate(pool)
        for c in CALLERS:
            await CallerIdStore(pool).add(c, None)
        version = await pool.fetchval("SHOW server_version")
        jit = await admin.fetchval("SHOW jit")
        decider = Decider(
            decisions=DecisionStore(pool),
            campaigns=CampaignStore(pool),
            profiles=Profiles(),
            numbers=NumberPolicy("US", "America/New_York"),
            deadline=5.0,
        )
        processes = server_processes(await pool.fetchval("SELECT pg_backend_pid()"))
        block = daytime_block()
        serial = 0
        for n_clients in clients:
            latencies: list[float] = []

            async def client(count: int, latencies: list[float]) -> None:
                nonlocal serial
                for _ in range(count):
                    serial += 1
                    caller = CALLERS[serial % len(CALLERS)]
                    request = DecisionRequest(
                        caller_id=caller, destination=f"{block}{4000000 + serial:07d}"
                    )
                    began = time.perf_counter()
                    await decider.decide(request)
                    latencies.append((time.perf_counter() - began) * 1000)
                    if spacing:
                        await asyncio.sleep(spacing)

            await client(20, [])  # warm-up: plans and caches
            cpu_before = cpu_seconds(processes + server_processes_new(processes))
            client_before = time.process_time()
            started = time.perf_counter()
            await asyncio.gather(
                *(client(decisions // n_clients, latencies) for _ in range(n_clients))
            )
            elapsed = time.perf_counter() - started
            client_cpu = time.process_time() - client_before
            cpu = cpu_seconds(processes + server_processes_new(processes)) - cpu_before
            latencies.sort()
            results.append(
                Measured(
                    server=name,
                    version=version,
                    jit=jit,
                    clients=n_clients,
                    decisions=len(latencies),
                    per_second=len(latencies) / elapsed,
                    p50_ms=statistics.median(latencies),
                    p99_ms=latencies[int(len(latencies) * 0.99) - 1],
                    server_cpu_ms=cpu * 1000 / len(latencies),
                    client_cpu_ms=client_cpu * 1000 / len(latencies),
                )
            )
        await pool.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.close()
    return results


def server_processes_new(known: list[psutil.Process]) -> list[psutil.Process]:
    """Backends started since ``known`` was read (none, with the pool opened before)."""
    pids = {p.pid for p in known}
    try:
        return [p for p in known[0].children(recursive=True) if p.pid not in pids]
    except psutil.NoSuchProcess:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=2000, help="a measurement")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument(
        "--spacing-ms",
        type=float,
        default=0.0,
        help="each client rests this long after each decision, as a gate between calls does"
        " (default 0: back to back)",
    )
    args = parser.parse_args()
    debian = os.environ.get("DIALGUARD_TEST_DSN")
    if not debian:
        parser.error("run it under scripts/debian-postgres (DIALGUARD_TEST_DSN names the server)")
    results: list[Measured] = []
    spacing = args.spacing_ms / 1000
    tmp = Path(tempfile.mkdtemp(prefix="dialguard-bench-"))
    # As root the embedded server runs as its own user, which must pass through the folder.
    tmp.chmod(0o711)
    try:
        embedded = EmbeddedPostgres(tmp / "pgdata")
        url = embedded.start()
        try:
            results += asyncio.run(measure("embedded", url, args.decisions, args.clients, spacing))
        finally:
            embedded.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results += asyncio.run(measure("debian", debian, args.decisions, args.clients, spacing))
    print(
        "| server | PostgreSQL | jit | clients | decisions/s | p50 ms | p99 ms "
        "| server CPU ms a decision | client CPU ms a decision |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m in results:
        print(
            f"| {m.server} | {m.version.split()[0]} | {m.jit} | {m.clients} "
            f"| {m.per_second:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.server_cpu_ms:.2f} "
            f"| {m.client_cpu_ms:.2f} |"
        )
    for n in args.clients:
        e = next(m for m in results if m.server == "embedded" and m.clients == n)
        d = next(m for m in results if m.server == "debian" and m.clients == n)
        ratio = d.server_cpu_ms / e.server_cpu_ms
        verdict = "meets" if ratio <= 1.5 else "misses"
        print(
            f"\n{n} client(s): Debian's server CPU a decision is {ratio:.2f}x the embedded"
            f" server's ({verdict} the 1.5x target); p50 {d.p50_ms / e.p50_ms:.2f}x"
        )


if __name__ == "__main__":
    main()
