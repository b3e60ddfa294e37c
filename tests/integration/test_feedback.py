"""Complaints and what they do: blacklist, caller-ID rests, campaign pauses; through a real
PostgreSQL, the feedback use case and the decider."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from dialguard.decider import Decider
from dialguard.feedback import Feedback
from dialguard.metrics import Metrics
from dialguard.policy.codes import Rule
from dialguard.policy.feedback import ComplaintError, ComplaintRequest, FeedbackPolicy
from dialguard.policy.model import DecisionRequest
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.complaints import ComplaintStore
from tests.support import NOON_NY, make_decider

CID = "+12125550100"
DEST = "+12122641234"
H = timedelta(hours=1)


def feedback_on(pool: asyncpg.Pool, policy: FeedbackPolicy | None = None, **kw: Any) -> Feedback:
    return Feedback(
        complaints=ComplaintStore(pool),
        policy=policy or FeedbackPolicy(),
        default_region="US",
        clock=lambda: NOON_NY,
        **kw,
    )


async def add_calls(
    pool: asyncpg.Pool, n: int, *, caller: str = CID, campaign: str = "default", end: datetime
) -> None:
    """``n`` allowed calls from ``caller`` to distinct destinations, one a minute up to ``end``."""
    rows = [
        (end - timedelta(minutes=i), caller, f"+1212300{i:04d}", campaign, True) for i in range(n)
    ]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "decisions",
            records=rows,
            columns=["at", "caller_id", "destination", "campaign", "allowed"],
        )


def complaint(dest: str = DEST, **kw: Any) -> ComplaintRequest:
    kw.setdefault("source", "carrier")
    kw.setdefault("caller_id", CID)
    return ComplaintRequest(destination=dest, **kw)


@pytest.fixture
async def decider(pool: asyncpg.Pool) -> Decider:
    await CallerIdStore(pool).add(CID, None)
    return make_decider(pool)


async def test_complaint_blacklists_the_destination_for_every_decision(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    recorded = await feedback_on(pool).complain(complaint(dest="(212) 264-1234"))
    assert recorded.effects.blacklisted and not recorded.duplicate
    assert recorded.complaint.destination == DEST
    d = await decider.decide(DecisionRequest(CID, DEST, at=NOON_NY + H, as_of=True))
    assert d.rule is Rule.BLACKLISTED
    assert d.facts["source"] == "complaint" and d.callable_at is None


async def test_caller_id_is_rested_at_the_third_complaint_in_a_day(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, build_version="test")
    fb = feedback_on(pool, metrics=metrics)
    first = await fb.complain(complaint("+12122640001", at=NOON_NY - 23 * H, campaign="spring"))
    second = await fb.complain(complaint("+12122640002", at=NOON_NY - H, campaign="spring"))
    assert not first.effects.callerid_rested and not second.effects.callerid_rested
    assert (await CallerIdStore(pool).get(CID) or {})["state"] == "active"
    third = await fb.complain(complaint("+12122640003", at=NOON_NY, campaign="spring"))
    assert third.effects.callerid_rested
    row = await CallerIdStore(pool).get(CID)
    assert row is not None and (row["state"], row["reason"]) == ("rested", "complaints")
    d = await decider.decide(DecisionRequest(CID, "+12122649999", at=NOON_NY + H, as_of=True))
    assert d.rule is Rule.CALLERID_RESTED
    value = registry.get_sample_value
    assert value("dialguard_complaints_total", {"source": "carrier", "campaign": "spring"}) == 3
    rests = {"reason": "complaints", "campaign": "spring"}
    assert value("dialguard_callerid_rests_total", rests) == 1


async def test_complaints_spread_over_more_than_a_day_do_not_rest(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    fb = feedback_on(pool)
    for i, hours in enumerate((48, 24, 0)):
        r = await fb.complain(complaint(f"+1212264000{i}", at=NOON_NY - hours * H))
    assert not r.effects.callerid_rested


async def test_complaints_delivered_out_of_order_rest_the_caller_id_all_the_same(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    # Four complaints within a day, delivered newest first: each alone counts only itself at or
    # before its time, but the window ending at the newest holds the last three.
    fb = feedback_on(pool)
    effects = []
    for i, hours in enumerate((3, 2, 1, 0)):
        r = await fb.complain(complaint(f"+1212264000{i}", at=NOON_NY - 20 * H + hours * H))
        effects.append(r.effects.callerid_rested)
    assert effects == [False, False, True, False]
    row = await CallerIdStore(pool).get(CID)
    assert row is not None and (row["state"], row["reason"]) == ("rested", "complaints")


async def test_a_campaign_is_paused_by_complaints_out_of_order_too(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    await add_calls(pool, 200, campaign="spring", end=NOON_NY)
    fb = feedback_on(pool)
    # 1 % of 200 calls: the second complaint arrives first, and the first completes the window.
    late = await fb.complain(complaint("+12122640001", campaign="spring", at=NOON_NY))
    early = await fb.complain(complaint("+12122640002", campaign="spring", at=NOON_NY - H))
    assert not late.effects.campaign_paused and early.effects.campaign_paused


async def test_duplicate_complaint_is_counted_once(pool: asyncpg.Pool, decider: Decider) -> None:
    fb = feedback_on(pool)
    first = await fb.complain(complaint(at=NOON_NY))
    again = await fb.complain(complaint(at=NOON_NY))
    assert again.duplicate and again.id == first.id
    assert again.effects.as_json() == {
        "blacklisted": False,
        "callerid_rested": False,
        "campaign_paused": False,
    }
    other_source = await fb.complain(complaint(at=NOON_NY, source="crm"))
    assert not other_source.duplicate
    count = await pool.fetchval("SELECT count(*) FROM complaints")
    assert count == 2


async def test_complaint_rate_rests_a_caller_id_once_it_has_enough_calls(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    # One complaint in 200 calls is 0.5 %: the rate. With 199 calls it is not judged yet.
    await add_calls(pool, 199, end=NOON_NY - H)
    fb = feedback_on(pool)
    early = await fb.complain(complaint("+12122640001", at=NOON_NY - H))
    assert not early.effects.callerid_rested
    await add_calls(pool, 1, end=NOON_NY - H + timedelta(seconds=1))
    # A second complaint outside the day: the count rule is far; the rate (2/200) is over.
    rested = await fb.complain(complaint("+12122640002", at=NOON_NY))
    assert rested.effects.callerid_rested


async def test_campaign_is_paused_at_its_complaint_rate_over_a_day(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    callers = [f"+1212555{n:04d}" for n in range(200, 204)]
    for c in callers:
        await CallerIdStore(pool).add(c, None)
        await add_calls(pool, 50, caller=c, campaign="spring", end=NOON_NY - H)
    fb = feedback_on(pool)
    one = await fb.complain(complaint("+12122640001", caller_id=callers[0], campaign="spring"))
    assert not one.effects.campaign_paused
    two = await fb.complain(complaint("+12122640002", caller_id=callers[1], campaign="spring"))
    assert two.effects.campaign_paused and not two.effects.callerid_rested
    row = await CampaignStore(pool).get("spring")
    assert row is not None and row["paused"] and row["pause_reason"] == "complaints"
    d = await decider.decide(
        DecisionRequest(callers[2], "+12122649999", campaign="spring", at=NOON_NY, as_of=True)
    )
    assert d.rule is Rule.CAMPAIGN_PAUSED
    three = await fb.complain(complaint("+12122640003", caller_id=callers[2], campaign="spring"))
    assert not three.effects.campaign_paused, "already paused: this complaint paused nothing"


async def test_campaign_below_its_minimum_of_calls_is_not_paused(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    await add_calls(pool, 100, campaign="small", end=NOON_NY - H)
    fb = feedback_on(pool)
    for i in range(2):
        r = await fb.complain(complaint(f"+1212264000{i}", campaign="small", caller_id=None))
    assert not r.effects.campaign_paused


async def test_complaint_without_caller_id_is_laid_on_the_last_call(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    call = await decider.decide(
        DecisionRequest(CID, DEST, campaign="spring", at=NOON_NY - H, as_of=True)
    )
    assert call.allowed
    r = await feedback_on(pool).complain(ComplaintRequest(destination=DEST, source="12321"))
    assert (r.complaint.caller_id, r.complaint.campaign) == (CID, "spring")


async def test_complaint_blacklisting_expires_per_source(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    policy = FeedbackPolicy(complaint_expiry={"crm": 86400})
    r = await feedback_on(pool, policy).complain(complaint(source="crm", at=NOON_NY))
    assert r.effects.blacklisted
    entry = await BlacklistStore(pool).get_number(DEST)
    assert entry is not None and entry["expires_at"] == NOON_NY + timedelta(days=1)
    later = await decider.decide(
        DecisionRequest(CID, DEST, at=NOON_NY + timedelta(days=1), as_of=True)
    )
    assert later.rule is not Rule.BLACKLISTED


async def test_complaint_never_shortens_a_permanent_blacklist_entry(
    pool: asyncpg.Pool, decider: Decider
) -> None:
    await BlacklistStore(pool).add_number(DEST, source="registry")
    policy = FeedbackPolicy(complaint_expiry={"carrier": 3600})
    r = await feedback_on(pool, policy).complain(complaint())
    assert not r.effects.blacklisted
    entry = await BlacklistStore(pool).get_number(DEST)
    assert entry is not None and entry["source"] == "registry" and entry["expires_at"] is None


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("destination", ComplaintRequest(destination="12", source="carrier")),
        ("caller_id", ComplaintRequest(destination=DEST, source="carrier", caller_id="x")),
        ("source", ComplaintRequest(destination=DEST, source="gossip")),
    ],
)
async def test_invalid_complaints_name_the_field(
    pool: asyncpg.Pool, field: str, request_: ComplaintRequest
) -> None:
    with pytest.raises(ComplaintError) as caught:
        await feedback_on(pool).complain(request_)
    assert caught.value.field == field
    assert await pool.fetchval("SELECT count(*) FROM complaints") == 0


async def test_configured_extra_source_is_accepted(pool: asyncpg.Pool, decider: Decider) -> None:
    policy = FeedbackPolicy(extra_sources=("dnc_portal",))
    registry = CollectorRegistry()
    fb = feedback_on(pool, policy, metrics=Metrics(registry, build_version="t"))
    r = await fb.complain(complaint(source="dnc_portal"))
    assert r.effects.blacklisted
