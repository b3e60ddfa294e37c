"""A scrub says what a dry-run decision says, destination by destination, for the rules a scrub
judges: same rule, same retry time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg

from dialguard.bulk_numbers import BulkNumbers
from dialguard.policy.model import DecisionRequest
from dialguard.policy.scrub import ScrubRequest, ScrubRow
from dialguard.scrub import Scrubber
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecisionStore
from dialguard.store.scrub import ScrubStore
from tests.support import NOON_NY, BuiltinProfiles, make_decider

CALLERS = [f"+1212555{n:04d}" for n in range(100, 104)]
# Caller-ID load rules switched off: a scrub leaves them to the moment of dialling.
PROFILE = BuiltinProfiles(
    callerid_caps=[], callerid_max_concurrent="off", campaign_callerids_per_day="off"
)


async def chunks(values: list[str], size: int = 7) -> AsyncIterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


async def scrub_all(scrubber: Scrubber, values: list[str], request: ScrubRequest) -> list[ScrubRow]:
    return [row async for batch in scrubber.scrub(chunks(values), request) for row in batch]


async def test_scrub_agrees_with_check_on_every_destination(pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    for c in CALLERS:
        await CallerIdStore(pool).add(c, None)
    decider = make_decider(pool, PROFILE)
    destinations = [f"+1212264{n:04d}" for n in range(40)]
    blacklist = BlacklistStore(pool)
    await blacklist.add_prefix("+1212264003", expires_at=NOON_NY + timedelta(days=2))
    await blacklist.add_number(destinations[15], campaign="spring")
    await blacklist.add_number(destinations[16], expires_at=NOON_NY - timedelta(hours=1))
    # A history: calls over the last ten days, some answered long enough for a cooldown.
    for _ in range(150):
        at = NOON_NY - timedelta(minutes=rng.randrange(1, 10 * 24 * 60))
        d = await decider.decide(
            DecisionRequest(rng.choice(CALLERS), rng.choice(destinations), "spring", at, as_of=True)
        )
        if d.decision_id is not None and rng.random() < 0.5:
            await DecisionStore(pool).record_outcome(
                d.decision_id,
                outcome="answered",
                answered_seconds=rng.choice((10, 45, 300)),
                cause=16,
                sip_code=None,
                at=at,
            )
    scrubber = Scrubber(
        store=ScrubStore(pool),
        profiles=decider,
        callerids=CallerIdStore(pool),
        campaigns=CampaignStore(pool),
        numbers=BulkNumbers("US", "America/New_York"),
        default_region="US",
        clock=lambda: NOON_NY,
    )
    values = [*destinations, "12", "+1 (212) 264-0003"]
    for caller in (None, CALLERS[0]):
        rows = await scrub_all(scrubber, values, ScrubRequest(caller, "spring"))
        assert len(rows) == len(values)
        seen = set()
        for value, row in zip(values, rows, strict=True):
            check = await decider.decide(
                DecisionRequest(caller or CALLERS[1], value, "spring", NOON_NY, record=False)
            )
            if caller is None and check.rule is not None and check.rule.value.startswith("caller"):
                continue  # without a caller ID a scrub does not judge caller-ID rules
            assert (row.rule, row.callable_at) == (check.rule, check.callable_at), value
            seen.add(row.rule)
        assert len(seen) >= 5, f"the scenario should exercise several rules, saw {seen}"


async def test_a_paused_campaign_makes_every_valid_number_uncallable(pool: asyncpg.Pool) -> None:
    await CampaignStore(pool).set_paused("spring", True, "review")
    scrubber = Scrubber(
        store=ScrubStore(pool),
        profiles=make_decider(pool),
        callerids=CallerIdStore(pool),
        campaigns=CampaignStore(pool),
        numbers=BulkNumbers("US", "America/New_York"),
        default_region="US",
        clock=lambda: NOON_NY,
    )
    rows = await scrub_all(scrubber, ["+12122641234", "x"], ScrubRequest(campaign="spring"))
    assert [r.rule.value if r.rule else None for r in rows] == [
        "campaign_paused",
        "invalid_number",
    ]
