"""A scrub says what a dry-run decision says, destination by destination, for the rules a scrub
judges: same rule, same retry time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard.bulk_numbers import BulkNumbers
from dialguard.policy.model import DecisionRequest
from dialguard.policy.scrub import ScrubRequest, ScrubRow
from dialguard.scrub import Scrubber
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
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


# A day still to come, so that blacklist expiries around it can be set now.
T = NOON_NY.replace(year=2036)
# Each in an exchange of its own: a listed prefix (9 to 11 characters) covers one of them.
DESTINATIONS = [f"+1212{264 + n}{1000 + n:04d}" for n in range(12)]
CAMPAIGNS = ("", "spring", "autumn")
expiries = st.one_of(st.none(), st.integers(-72, 72).map(lambda h: T + timedelta(hours=h)))
calls = st.tuples(
    st.one_of(st.integers(1, 12 * 60), st.integers(1, 10 * 24 * 60)),  # minutes before T
    st.integers(0, len(CALLERS) - 1),
    st.integers(0, len(DESTINATIONS) - 1),
    st.sampled_from((None, 10, 45, 300)),  # answered seconds
)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """A history of calls over the last ten days (many in the last hours), and number and
    prefix blacklist entries, global or a campaign's, some expired by T."""
    number = st.tuples(st.integers(0, len(DESTINATIONS) - 1), st.sampled_from(CAMPAIGNS), expiries)
    prefix = st.tuples(
        st.integers(0, len(DESTINATIONS) - 1),
        st.integers(9, 11),
        st.sampled_from(CAMPAIGNS),
        expiries,
    )
    return {
        "calls": draw(st.lists(calls, max_size=80)),
        "numbers": draw(st.lists(number, max_size=4)),
        "prefixes": draw(st.lists(prefix, max_size=2)),
        "caller": draw(st.sampled_from((None, CALLERS[0]))),
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_scrub_agrees_with_check_on_every_number(db_dsn: str, scenario: dict[str, Any]) -> None:
    """For any history and blacklists, a scrub and a dry-run check give every number the same
    rule and the same time it becomes callable."""
    asyncio.run(_agree(db_dsn, scenario))


async def _agree(dsn: str, scenario: dict[str, Any]) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        await pool.execute(
            "TRUNCATE decisions, blacklist_numbers, blacklist_prefixes, campaign_callerids,"
            " callerids"
        )
        for c in CALLERS:
            await CallerIdStore(pool).add(c, None)
        decider = make_decider(pool, PROFILE)
        blacklist = BlacklistStore(pool)
        for dest, campaign, expires in scenario["numbers"]:
            await blacklist.add_number(DESTINATIONS[dest], campaign=campaign, expires_at=expires)
        for dest, length, campaign, expires in scenario["prefixes"]:
            await blacklist.add_prefix(
                DESTINATIONS[dest][:length], campaign=campaign, expires_at=expires
            )
        for minutes, caller, dest, answered in sorted(scenario["calls"], reverse=True):
            at = T - timedelta(minutes=minutes)
            d = await decider.decide(
                DecisionRequest(CALLERS[caller], DESTINATIONS[dest], "spring", at, as_of=True)
            )
            if d.decision_id is not None and answered is not None:
                await DecisionStore(pool).record_outcome(
                    d.decision_id,
                    outcome="answered",
                    answered_seconds=answered,
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
            clock=lambda: T,
        )
        caller = scenario["caller"]
        values = [*DESTINATIONS, "12", "+1 (212) 264-0003"]
        rows = await scrub_all(scrubber, values, ScrubRequest(caller, "spring"))
        assert len(rows) == len(values)
        for value, row in zip(values, rows, strict=True):
            check = await decider.decide(
                DecisionRequest(caller or CALLERS[1], value, "spring", T, record=False)
            )
            if caller is None and check.rule is not None and check.rule.value.startswith("caller"):
                continue  # without a caller ID a scrub does not judge caller-ID rules
            assert (row.rule, row.callable_at) == (check.rule, check.callable_at), value
    finally:
        await pool.close()


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
