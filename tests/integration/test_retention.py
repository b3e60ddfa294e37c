"""The audit log keeps `database.retention` of decisions and no more."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from dialguard.policy.model import DecisionRequest
from dialguard.store.callerids import CallerIdStore
from dialguard.store.decisions import prune
from tests.support import NOON_NY, BuiltinProfiles, make_decider


async def test_prune_removes_only_decisions_older_than_the_cutoff(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    decider = make_decider(pool, BuiltinProfiles(destination_min_interval="off"))
    for days in (500, 401, 399, 1):
        await decider.decide(
            DecisionRequest(
                caller_id="+12125550100",
                destination=f"+12122641{days:03d}",
                at=NOON_NY - timedelta(days=days),
                as_of=True,
            )
        )
    removed = await prune(pool, NOON_NY - timedelta(days=400), batch=1)
    assert removed == 2
    async with pool.acquire() as conn:
        left = await conn.fetch("SELECT destination FROM decisions ORDER BY at")
    assert [r["destination"] for r in left] == ["+12122641399", "+12122641001"]
