"""Live races between two instances on the real clock: how many calls each round allows.

Two pools (two "instances", each with its decider and two batch slots) decide ``--calls`` live
decisions at once for one new destination, ``--rounds`` times; then ``--calls`` live decisions
at once from one caller ID capped at 5 a minute. Only one call a round, and five in all, may be
allowed. ``--skew`` runs the second instance's clock that many seconds off.

Runs against the database named by ``--dsn`` (or ``DIALGUARD_TEST_DSN``), in a fresh database
of its own. It uses only what every release has, so the same file measures an older checkout:
``PYTHONPATH=<old>/src python bench/races.py``.

    scripts/debian-postgres .venv/bin/python bench/races.py --rounds 50
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg

from dialguard.decider import Decider, NumberPolicy
from dialguard.policy.model import DecisionRequest
from dialguard.policy.profile import builtin_raw
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore
from dialguard.store.migrate import migrate

BLOCKS = (
    ("+1212264", "America/New_York"),
    ("+44207946", "Europe/London"),
    ("+8133555", "Asia/Tokyo"),
    ("+86106552", "Asia/Shanghai"),
)


class Profiles:
    def __init__(self, **changes: Any) -> None:
        self.changes = changes

    def raw(self, name: str) -> dict[str, Any]:
        values = builtin_raw(name)
        if name == "default":
            values.update(self.changes)
        return values


def daytime_block() -> str:
    now = datetime.now(UTC)
    return next(p for p, z in BLOCKS if 9 <= now.astimezone(ZoneInfo(z)).hour < 20)


def decider(pool: asyncpg.Pool, profiles: Profiles, skew: float) -> Decider:
    return Decider(
        decisions=DecisionStore(pool),
        campaigns=CampaignStore(pool),
        profiles=profiles,
        numbers=NumberPolicy("US", "America/New_York"),
        deadline=5.0,
        clock=lambda: datetime.now(UTC) + timedelta(seconds=skew),
    )


async def race(deciders: list[Decider], requests: list[DecisionRequest]) -> int:
    results = await asyncio.gather(*(deciders[i % 2].decide(r) for i, r in enumerate(requests)))
    return sum(d.allowed for d in results)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("DIALGUARD_TEST_DSN"))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--skew", type=float, default=0.0)
    args = parser.parse_args()
    if not args.dsn:
        parser.error("name a PostgreSQL server: --dsn or DIALGUARD_TEST_DSN")
    name = f"dg_races_{os.getpid()}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = urlunsplit(urlsplit(args.dsn)._replace(path="/" + name))
    try:
        a = await create_pool(dsn, min_size=8, max_size=16)
        b = await create_pool(dsn, min_size=8, max_size=16)
        await migrate(a)
        callers = [f"+1212555{n:04d}" for n in range(300, 300 + args.calls)]
        for c in callers:
            await CallerIdStore(a).add(c, None)
        one_destination = Profiles(
            rotation_per_destination="off", callerid_caps=[], callerid_max_concurrent="off"
        )
        deciders = [decider(a, one_destination, 0.0), decider(b, one_destination, args.skew)]
        block = daytime_block()
        started = time.perf_counter()
        allowed = []
        for n in range(args.rounds):
            requests = [
                DecisionRequest(caller_id=c, destination=f"{block}{n:04d}") for c in callers
            ]
            allowed.append(await race(deciders, requests))
        seconds = time.perf_counter() - started
        spread = Counter(allowed)
        print(
            f"one destination, {args.calls} calls at once, {args.rounds} rounds"
            f" (skew {args.skew:+g} s, {seconds:.1f} s):"
            f" rounds allowing exactly one {spread[1]}, more than one"
            f" {sum(v for k, v in spread.items() if k > 1)}, most in a round {max(allowed)}"
        )
        capped = Profiles(callerid_caps=["5/1m"], callerid_max_concurrent="off")
        deciders = [decider(a, capped, 0.0), decider(b, capped, args.skew)]
        cid = "+12125550999"
        await CallerIdStore(a).add(cid, None)
        requests = [
            DecisionRequest(caller_id=cid, destination=f"{block}{5000 + n:04d}")
            for n in range(args.calls)
        ]
        allowed_cap = await race(deciders, requests)
        print(f"one caller ID capped at 5/1m, {args.calls} calls at once: allowed {allowed_cap}")
        await a.close()
        await b.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
