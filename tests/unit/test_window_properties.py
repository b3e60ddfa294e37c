"""Window arithmetic, as properties: the real store on a real PostgreSQL against a tiny model.

The model is the issue's sentence: an attempt at time t counts in a window W ending at ``now``
when ``now - W < t <= now``; only allowed attempts count. Every example seeds its attempts through
the real decider (every rule off, so each is allowed and recorded at its own time), adds denied
attempts that must not count, then decides at ``now`` with only the rule under test switched on.
The ``pool`` fixture is one database per test, so each example uses its own numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard.decider import Decider
from dialguard.policy.codes import Rule, Verdict
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.policy.values import Window, format_duration, parse_duration, parse_window
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecisionStore
from tests.support import NOON_NY, BuiltinProfiles, make_decider

# Every rule off: the seeding decider allows and records whatever it is given.
ALL_OFF: dict[str, Any] = {
    "calling_hours": "off",
    "destination_min_interval": "off",
    "destination_caps": [],
    "conversation_min_seconds": "off",
    "conversation_cooldown": "off",
    "rotation_per_destination": "off",
    "campaign_callerids_per_day": "off",
    "callerid_caps": [],
    "callerid_max_concurrent": "off",
    "require_registered_callerid": False,
}
PAUSED = "paused-seeding"  # a paused campaign: its attempts are recorded as denied
WINDOWS = [60, 3600, 4 * 3600, 86400, 7 * 86400]
DB_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_numbers = itertools.count()


def fresh_destination() -> str:
    return f"+1212264{next(_numbers) % 10000:04d}"


def fresh_caller() -> str:
    return f"+1646264{next(_numbers) % 10000:04d}"


# ---- the reference model -------------------------------------------------------------------


def in_window(times: Sequence[int], now: int, window: int) -> list[int]:
    return sorted(t for t in times if now - window < t <= now)


def cap_verdict(times: Sequence[int], now: int, limit: int, window: int) -> int | None:
    """``None`` when allowed, else the second at which the destination frees."""
    counted = in_window(times, now, window)
    if len(counted) < limit:
        return None
    return counted[len(counted) - limit] + window


def interval_verdict(times: Sequence[int], now: int, interval: int) -> int | None:
    counted = in_window(times, now, interval)
    return counted[-1] + interval if counted else None


# ---- strategies ----------------------------------------------------------------------------


def offsets(window: int) -> st.SearchStrategy[int]:
    """Seconds relative to ``now``, crowded at the window's two edges."""
    return st.one_of(
        st.integers(-window - 2, -window + 2),
        st.integers(-2, 2),
        st.integers(-2 * window, window),
    )


@st.composite
def window_case(draw: st.DrawFn) -> tuple[int, int, list[int], list[int], int]:
    window = draw(st.sampled_from(WINDOWS))
    limit = draw(st.integers(1, 4))
    allowed = draw(st.lists(offsets(window), max_size=7))
    denied = draw(st.lists(offsets(window), max_size=3))
    shift = draw(st.integers(0, 90 * 86400))
    return window, limit, allowed, denied, shift


# ---- helpers -------------------------------------------------------------------------------


@dataclass
class Seeder:
    pool: asyncpg.Pool
    decider: Decider

    async def attempts(
        self, now: datetime, allowed: Sequence[int], denied: Sequence[int], **numbers: str
    ) -> list[Decision]:
        made = []
        for offset in allowed:
            decision = await self._decide(now + timedelta(seconds=offset), None, **numbers)
            assert decision.allowed, decision.evidence
            made.append(decision)
        for offset in denied:
            decision = await self._decide(now + timedelta(seconds=offset), PAUSED, **numbers)
            assert decision.rule is Rule.CAMPAIGN_PAUSED
        return made

    async def _decide(
        self, at: datetime, campaign: str | None, *, caller: str, destination: str
    ) -> Decision:
        return await self.decider.decide(
            DecisionRequest(
                caller_id=caller, destination=destination, campaign=campaign, at=at, as_of=True
            )
        )


async def seeder(pool: asyncpg.Pool) -> Seeder:
    await CampaignStore(pool).set_paused(PAUSED, True, "seeding denied attempts")
    return Seeder(pool, make_decider(pool, BuiltinProfiles(**ALL_OFF)))


async def decide_at(
    pool: asyncpg.Pool, now: datetime, caller: str, destination: str, record: bool, **rule: Any
) -> Decision:
    decider = make_decider(pool, BuiltinProfiles(**{**ALL_OFF, **rule}))
    return await decider.decide(
        DecisionRequest(
            caller_id=caller, destination=destination, at=now, as_of=True, record=record
        )
    )


def assert_matches(decision: Decision, rule: Rule, frees: int | None, now: datetime) -> None:
    if frees is None:
        assert decision.verdict is Verdict.ALLOW, decision.evidence
    else:
        assert decision.rule is rule, decision.evidence
        assert decision.callable_at == now + timedelta(seconds=frees)


# ---- properties against the real store -----------------------------------------------------


@DB_SETTINGS
@given(case=window_case(), record=st.booleans())
async def test_destination_cap_counts_exactly_the_attempts_inside_the_window(
    pool: asyncpg.Pool, case: tuple[int, int, list[int], list[int], int], record: bool
) -> None:
    window, limit, allowed, denied, shift = case
    now = NOON_NY + timedelta(seconds=shift)
    caller, destination = fresh_caller(), fresh_destination()
    seed = await seeder(pool)
    await seed.attempts(now, allowed, denied, caller=caller, destination=destination)

    decision = await decide_at(
        pool, now, caller, destination, record, destination_caps=[f"{limit}/{window}s"]
    )
    assert_matches(
        decision, Rule.DESTINATION_CAP, cap_verdict(allowed, now=0, limit=limit, window=window), now
    )
    if decision.rule is Rule.DESTINATION_CAP:
        assert decision.facts["count"] == len(in_window(allowed, 0, window))


@DB_SETTINGS
@given(case=window_case())
async def test_destination_counts_include_every_caller_id_and_campaign(
    pool: asyncpg.Pool, case: tuple[int, int, list[int], list[int], int]
) -> None:
    window, limit, allowed, denied, shift = case
    now = NOON_NY + timedelta(seconds=shift)
    destination = fresh_destination()
    seed = await seeder(pool)
    # Each allowed attempt from another caller ID: the destination's count is shared.
    for offset in allowed:
        await seed.attempts(now, [offset], [], caller=fresh_caller(), destination=destination)
    await seed.attempts(now, [], denied, caller=fresh_caller(), destination=destination)

    decision = await decide_at(
        pool, now, fresh_caller(), destination, False, destination_caps=[f"{limit}/{window}s"]
    )
    assert_matches(decision, Rule.DESTINATION_CAP, cap_verdict(allowed, 0, limit, window), now)


@DB_SETTINGS
@given(case=window_case())
async def test_destination_interval_denies_exactly_when_an_attempt_is_too_recent(
    pool: asyncpg.Pool, case: tuple[int, int, list[int], list[int], int]
) -> None:
    interval, _, allowed, denied, shift = case
    now = NOON_NY + timedelta(seconds=shift)
    caller, destination = fresh_caller(), fresh_destination()
    seed = await seeder(pool)
    await seed.attempts(now, allowed, denied, caller=caller, destination=destination)

    decision = await decide_at(
        pool, now, caller, destination, True, destination_min_interval=f"{interval}s"
    )
    assert_matches(decision, Rule.DESTINATION_INTERVAL, interval_verdict(allowed, 0, interval), now)


@DB_SETTINGS
@given(case=window_case())
async def test_caller_id_rate_counts_its_calls_to_every_destination(
    pool: asyncpg.Pool, case: tuple[int, int, list[int], list[int], int]
) -> None:
    window, limit, allowed, denied, shift = case
    now = NOON_NY + timedelta(seconds=shift)
    caller = fresh_caller()
    seed = await seeder(pool)
    for offset in allowed:
        await seed.attempts(now, [offset], [], caller=caller, destination=fresh_destination())
    await seed.attempts(now, [], denied, caller=caller, destination=fresh_destination())

    decision = await decide_at(
        pool, now, caller, fresh_destination(), False, callerid_caps=[f"{limit}/{window}s"]
    )
    assert_matches(decision, Rule.CALLERID_RATE, cap_verdict(allowed, 0, limit, window), now)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int | None]], int]:
    cooldown = draw(st.sampled_from([3600, 86400, 7 * 86400]))
    min_seconds = draw(st.integers(1, 60))
    answered = st.one_of(
        st.none(),
        st.integers(min_seconds - 1, min_seconds + 1).filter(lambda s: s > 0),
        st.integers(1, 3600),
    )
    calls = draw(st.lists(st.tuples(offsets(cooldown), answered), max_size=5))
    shift = draw(st.integers(0, 90 * 86400))
    return cooldown, min_seconds, calls, shift


@DB_SETTINGS
@given(case=conversations())
async def test_conversation_cooldown_runs_from_the_end_of_each_long_enough_call(
    pool: asyncpg.Pool, case: tuple[int, int, list[tuple[int, int | None]], int]
) -> None:
    cooldown, min_seconds, calls, shift = case
    now = NOON_NY + timedelta(seconds=shift)
    caller, destination = fresh_caller(), fresh_destination()
    seed = await seeder(pool)
    store = DecisionStore(pool)
    for offset, answered in calls:
        (made,) = await seed.attempts(now, [offset], [], caller=caller, destination=destination)
        assert made.decision_id is not None
        await store.record_outcome(
            made.decision_id,
            outcome="answered" if answered is not None else "no_answer",
            answered_seconds=answered,
            cause=16 if answered is not None else 19,
            sip_code=None,
            at=made.at + timedelta(seconds=answered or 0),
        )

    decision = await decide_at(
        pool,
        now,
        caller,
        destination,
        False,
        conversation_min_seconds=min_seconds,
        conversation_cooldown=f"{cooldown}s",
    )
    # A conversation counts when its call started by now and it ended inside the cooldown.
    ends = [t + a for t, a in calls if a is not None and a >= min_seconds and t <= 0]
    live = [end for end in ends if end > -cooldown]
    expected = max(live) + cooldown if live else None
    assert_matches(decision, Rule.DESTINATION_COOLDOWN, expected, now)


# ---- pure properties of the value syntax the windows are written in ------------------------


@given(st.integers(1, 400 * 86400))
def test_a_formatted_duration_parses_back_to_the_same_seconds(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(1, 10_000), st.integers(1, 400 * 86400))
def test_a_window_prints_in_a_form_that_parses_back(limit: int, seconds: int) -> None:
    window = Window(limit, seconds)
    assert parse_window(str(window)) == window


@given(st.lists(st.integers(-10_000, 0), max_size=20), st.integers(1, 5000), st.integers(1, 5))
def test_the_model_frees_a_capped_destination_exactly_when_its_count_drops_below_the_limit(
    past: list[int], window: int, limit: int
) -> None:
    frees = cap_verdict(past, 0, limit, window)
    if frees is None:
        assert len(in_window(past, 0, window)) < limit
    else:
        assert frees > 0
        assert len(in_window(past, frees - 1, window)) >= limit
        assert len(in_window(past, frees, window)) < limit
