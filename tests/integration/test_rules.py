"""Every rule at its boundaries, decided through the real decider and a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from dialguard.decider import Decider
from dialguard.policy.codes import Rule, Verdict
from dialguard.policy.model import DecisionRequest
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecisionStore
from tests.support import NOON_NY, BuiltinProfiles, make_decider

CID = "+12125550100"
CID2 = "+12125550101"
CID3 = "+12125550102"
DEST = "+12122641234"
S = timedelta(seconds=1)


@pytest.fixture
async def decider(pool: asyncpg.Pool) -> Decider:
    for number in (CID, CID2, CID3):
        await CallerIdStore(pool).add(number, None)
    return make_decider(pool)


async def decide(d: Decider, at=NOON_NY, caller=CID, dest=DEST, campaign=None, record=True):
    return await d.decide(
        DecisionRequest(
            caller_id=caller, destination=dest, campaign=campaign, at=at, as_of=True, record=record
        )
    )


async def test_first_call_is_allowed_and_recorded(decider: Decider, pool: asyncpg.Pool) -> None:
    d = await decide(decider)
    assert d.verdict is Verdict.ALLOW and d.rule is None
    assert d.decision_id is not None
    row = await DecisionStore(pool).get(d.decision_id)
    assert row is not None and row["allowed"] and row["destination"] == DEST


async def test_formats_of_one_number_are_the_same_destination(decider: Decider) -> None:
    assert (await decide(decider, dest="(212) 264-1234")).allowed
    second = await decide(decider, dest="+1 212 264 1234", at=NOON_NY + S)
    assert second.rule is Rule.DESTINATION_INTERVAL


async def test_garbage_destination_is_invalid_number(decider: Decider) -> None:
    d = await decide(decider, dest="not a number")
    assert d.rule is Rule.INVALID_NUMBER and d.decision_id is not None


async def test_invalid_caller_id_is_callerid_unknown(decider: Decider) -> None:
    d = await decide(decider, caller="12")
    assert d.rule is Rule.CALLERID_UNKNOWN
    assert "not a valid phone number" in d.evidence


async def test_unregistered_caller_id_is_denied(decider: Decider) -> None:
    d = await decide(decider, caller="+12125550199")
    assert d.rule is Rule.CALLERID_UNKNOWN and "not registered" in d.evidence


async def test_unregistered_caller_id_passes_when_not_required(pool: asyncpg.Pool) -> None:
    d = make_decider(pool, BuiltinProfiles(require_registered_callerid=False))
    assert (await decide(d, caller="+12125550199")).allowed


async def test_caller_id_registered_for_another_campaign_is_unknown(
    decider: Decider, pool: asyncpg.Pool
) -> None:
    await CallerIdStore(pool).add("+12125550150", "alpha")
    assert (await decide(decider, caller="+12125550150", campaign="alpha")).allowed
    other = await decide(decider, caller="+12125550150", campaign="beta", dest="+12122641235")
    assert other.rule is Rule.CALLERID_UNKNOWN and "alpha" in other.evidence


async def test_rested_and_retired_caller_ids_are_denied(
    decider: Decider, pool: asyncpg.Pool
) -> None:
    await CallerIdStore(pool).set_state(CID, "rested", "manual")
    assert (await decide(decider)).rule is Rule.CALLERID_RESTED
    await CallerIdStore(pool).set_state(CID2, "retired", "number returned")
    assert (await decide(decider, caller=CID2)).rule is Rule.CALLERID_RESTED


async def test_paused_campaign_is_denied_on_the_next_decision(
    decider: Decider, pool: asyncpg.Pool
) -> None:
    assert (await decide(decider, campaign="spring")).allowed
    await CampaignStore(pool).set_paused("spring", True, "complaints review")
    d = await decide(decider, campaign="spring", dest="+12122641235", at=NOON_NY + S)
    assert d.rule is Rule.CAMPAIGN_PAUSED and "complaints review" in d.evidence
    await CampaignStore(pool).set_paused("spring", False, None)
    assert (await decide(decider, campaign="spring", dest="+12122641235", at=NOON_NY + S)).allowed


async def test_blacklisted_number_global_and_per_campaign(
    decider: Decider, pool: asyncpg.Pool
) -> None:
    bl = BlacklistStore(pool)
    await bl.add_number(DEST)
    assert (await decide(decider)).rule is Rule.BLACKLISTED
    await bl.add_number("+12122641235", campaign="alpha")
    assert (await decide(decider, dest="+12122641235", campaign="alpha")).rule is Rule.BLACKLISTED
    assert (await decide(decider, dest="+12122641235", campaign="beta")).allowed


async def test_blacklisted_prefix_and_expiry(decider: Decider, pool: asyncpg.Pool) -> None:
    bl = BlacklistStore(pool)
    noon = NOON_NY.replace(year=2036)  # an expiry is set in the future
    await bl.add_prefix("+1718264", expires_at=noon + timedelta(hours=1))
    d = await decide(decider, dest="+17182641234", at=noon)
    assert d.rule is Rule.BLACKLISTED and "+1718264" in d.evidence
    assert d.callable_at == noon + timedelta(hours=1)
    later = await decide(decider, dest="+17182641234", at=noon + timedelta(hours=1))
    assert later.allowed, "expiry compares with the decision's time"


async def test_blacklist_outranks_calling_hours(decider: Decider, pool: asyncpg.Pool) -> None:
    await BlacklistStore(pool).add_number(DEST)
    night = NOON_NY.replace(hour=4)  # 23:00 in New York
    assert (await decide(decider, at=night)).rule is Rule.BLACKLISTED


@pytest.mark.parametrize(
    ("utc_hour", "utc_minute", "second", "verdict"),
    [
        (11, 59, 59, Verdict.DENY),  # 07:59:59 New York (EDT, UTC-4, after 8 March 2026)
        (12, 0, 0, Verdict.ALLOW),  # 08:00:00
        (0, 59, 59, Verdict.ALLOW),  # 20:59:59
        (1, 0, 0, Verdict.DENY),  # 21:00:00
    ],
)
async def test_calling_hours_boundaries(
    decider: Decider, utc_hour: int, utc_minute: int, second: int, verdict: Verdict
) -> None:
    at = NOON_NY.replace(hour=utc_hour, minute=utc_minute, second=second)
    d = await decide(decider, at=at)
    assert d.verdict is verdict
    if verdict is Verdict.DENY:
        assert d.rule is Rule.CALLING_HOURS and d.callable_at is not None


async def test_multi_zone_number_must_be_inside_everywhere(decider: Decider) -> None:
    # An Australian mobile rings from Perth (UTC+8) to Sydney (UTC+11 in March).
    at = NOON_NY.replace(hour=21, minute=30)  # 08:30 Sydney, 05:30 Perth
    d = await decide(decider, dest="+61412345678", at=at)
    assert d.rule is Rule.CALLING_HOURS
    assert d.facts["zone"] != "Australia/Sydney"
    assert d.facts["local_time"] < "08:00:00"


async def test_toll_free_number_uses_fallback_zone(decider: Decider) -> None:
    at = NOON_NY.replace(hour=1, minute=30)  # 21:30 New York
    assert (await decide(decider, dest="+18002752273", at=at)).rule is Rule.CALLING_HOURS


async def test_destination_interval_boundary(decider: Decider) -> None:
    assert (await decide(decider)).allowed
    inside = await decide(decider, at=NOON_NY + timedelta(hours=4) - S)
    assert inside.rule is Rule.DESTINATION_INTERVAL
    assert inside.callable_at == NOON_NY + timedelta(hours=4)
    assert (await decide(decider, at=NOON_NY + timedelta(hours=4))).allowed


async def test_denied_attempts_do_not_count(decider: Decider) -> None:
    assert (await decide(decider)).allowed
    for i in range(5):
        assert not (await decide(decider, at=NOON_NY + (i + 1) * S)).allowed
    assert (await decide(decider, at=NOON_NY + timedelta(hours=4))).allowed


async def test_destination_cap_per_day_boundary(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)
    d = make_decider(pool, BuiltinProfiles(destination_min_interval="off", callerid_caps=[]))
    start = NOON_NY - timedelta(hours=2)
    for i in range(3):
        assert (await decide(d, at=start + i * timedelta(minutes=10))).allowed
    capped = await decide(d, at=start + timedelta(hours=24) - S)
    assert capped.rule is Rule.DESTINATION_CAP
    assert "3 attempts in the last 24h, limit 3" in capped.evidence
    assert capped.callable_at == start + timedelta(hours=24)
    assert (await decide(d, at=start + timedelta(hours=24))).allowed


async def test_destination_cap_per_week(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)
    d = make_decider(pool, BuiltinProfiles(destination_min_interval="off", callerid_caps=[]))
    for day in range(7):
        assert (await decide(d, at=NOON_NY + timedelta(days=day))).allowed
    week = await decide(d, at=NOON_NY + timedelta(days=7) - S)
    assert week.rule is Rule.DESTINATION_CAP and "limit 7" in week.evidence
    assert (await decide(d, at=NOON_NY + timedelta(days=7))).allowed


async def test_conversation_cooldown_boundary(decider: Decider, pool: asyncpg.Pool) -> None:
    first = await decide(decider)
    assert first.decision_id is not None
    await DecisionStore(pool).record_outcome(
        first.decision_id,
        outcome="answered",
        answered_seconds=30,
        cause=16,
        sip_code=None,
        at=NOON_NY + timedelta(seconds=30),
    )
    ended = NOON_NY + timedelta(seconds=30)
    inside = await decide(decider, at=ended + timedelta(days=7) - S)
    assert inside.rule is Rule.DESTINATION_COOLDOWN
    assert inside.callable_at == ended + timedelta(days=7)
    assert (await decide(decider, at=ended + timedelta(days=7))).allowed


async def test_short_answered_call_starts_no_cooldown(decider: Decider, pool: asyncpg.Pool) -> None:
    first = await decide(decider)
    assert first.decision_id is not None
    await DecisionStore(pool).record_outcome(
        first.decision_id,
        outcome="answered",
        answered_seconds=29,
        cause=16,
        sip_code=None,
        at=NOON_NY,
    )
    assert (await decide(decider, at=NOON_NY + timedelta(hours=4))).allowed


async def test_callerid_rotation_per_destination(decider: Decider) -> None:
    assert (await decide(decider, caller=CID)).allowed
    assert (await decide(decider, caller=CID2, at=NOON_NY + timedelta(hours=4))).allowed
    third = await decide(decider, caller=CID3, at=NOON_NY + timedelta(hours=8))
    assert third.rule is Rule.CALLERID_ROTATION
    # A caller ID the destination already saw is no parade.
    assert (await decide(decider, caller=CID, at=NOON_NY + timedelta(hours=8))).allowed


async def test_campaign_rotation(pool: asyncpg.Pool) -> None:
    store = CallerIdStore(pool)
    numbers = [f"+1212555{n:04d}" for n in range(200, 204)]
    for n in numbers:
        await store.add(n, None)
    d = make_decider(pool, BuiltinProfiles(campaign_callerids_per_day=3))
    for i, n in enumerate(numbers[:3]):
        assert (await decide(d, caller=n, dest=f"+1212264{i:04d}", campaign="c")).allowed
    fourth = await decide(d, caller=numbers[3], dest="+12122649999", campaign="c")
    assert fourth.rule is Rule.CAMPAIGN_ROTATION
    assert (await decide(d, caller=numbers[0], dest="+12122649998", campaign="c")).allowed
    later = NOON_NY + timedelta(hours=24)
    assert (await decide(d, caller=numbers[3], dest="+12122649997", campaign="c", at=later)).allowed


async def test_callerid_rate_per_minute_boundary(decider: Decider) -> None:
    for i in range(5):
        assert (await decide(decider, dest=f"+1212264{i:04d}", at=NOON_NY + i * S)).allowed
    sixth = await decide(decider, dest="+12122649999", at=NOON_NY + timedelta(seconds=59))
    assert sixth.rule is Rule.CALLERID_RATE
    assert sixth.callable_at == NOON_NY + timedelta(minutes=1)
    assert (await decide(decider, dest="+12122649999", at=NOON_NY + timedelta(minutes=1))).allowed


async def test_callerid_concurrency_until_outcome(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)
    d = make_decider(pool, BuiltinProfiles(callerid_max_concurrent=2, callerid_caps=[]))
    first = await decide(d, dest="+12122640001")
    assert (await decide(d, dest="+12122640002")).allowed
    assert (await decide(d, dest="+12122640003")).rule is Rule.CALLERID_CONCURRENCY
    assert first.decision_id is not None
    await DecisionStore(pool).record_outcome(
        first.decision_id, outcome="busy", answered_seconds=None, cause=17, sip_code=486, at=NOON_NY
    )
    assert (await decide(d, dest="+12122640003")).allowed
    # A call with no outcome stops counting after max_call_duration.
    later = NOON_NY + timedelta(hours=2)
    assert (await decide(d, dest="+12122640004", at=later)).allowed


async def test_check_records_nothing(decider: Decider) -> None:
    dry = await decide(decider, record=False)
    assert dry.allowed and dry.decision_id is None
    assert (await decide(decider)).allowed


async def test_rules_switched_off_never_deny(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)
    off = BuiltinProfiles(
        calling_hours="off",
        destination_min_interval="off",
        destination_caps=[],
        conversation_cooldown="off",
        rotation_per_destination="off",
        campaign_callerids_per_day="off",
        callerid_caps=[],
        callerid_max_concurrent="off",
    )
    d = make_decider(pool, off)
    for i in range(20):
        assert (await decide(d, at=NOON_NY.replace(hour=4) + i * S)).allowed


async def test_campaign_override_applies_to_next_decision(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CID, None)
    d = make_decider(pool)
    assert (await decide(d, campaign="x")).allowed
    # Another process changes the campaign; this decider's cache is stale and must notice.
    await CampaignStore(pool).set("x", "default", {"destination_min_interval": "1m"})
    assert (await decide(d, campaign="x", at=NOON_NY + timedelta(minutes=1))).allowed


async def test_counts_are_shared_across_campaigns(decider: Decider) -> None:
    assert (await decide(decider, campaign="a")).allowed
    d = await decide(decider, campaign="b", at=NOON_NY + S)
    assert d.rule is Rule.DESTINATION_INTERVAL


async def test_callerid_caps_count_in_every_window_of_a_long_list(pool: asyncpg.Pool) -> None:
    """The first four caps are counted in one scan, a fifth and beyond on their own: each
    binds at its own limit and frees its own window later."""
    await CallerIdStore(pool).add(CID, None)
    fourth = make_decider(pool, BuiltinProfiles(callerid_caps=["9/1m", "9/2m", "9/3m", "1/4m"]))
    assert (await decide(fourth, dest="+12122640001")).allowed
    denied = await decide(fourth, dest="+12122640002", at=NOON_NY + S)
    assert denied.rule is Rule.CALLERID_RATE and denied.facts["window_s"] == 240
    assert denied.callable_at == NOON_NY + timedelta(minutes=4)

    fifth = make_decider(
        pool, BuiltinProfiles(callerid_caps=["9/1m", "9/2m", "9/3m", "9/4m", "2/1h"])
    )
    later = NOON_NY + timedelta(minutes=10)
    assert (await decide(fifth, dest="+12122640003", at=later)).allowed
    denied = await decide(fifth, dest="+12122640004", at=later + S)
    assert denied.rule is Rule.CALLERID_RATE and denied.facts["window_s"] == 3600
    assert denied.facts["count"] == 2
    # The first call (at NOON_NY) leaves the hour first.
    assert denied.callable_at == NOON_NY + timedelta(hours=1)
