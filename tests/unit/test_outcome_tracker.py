"""OutcomeTracker: linking allowed channels to trunk legs and turning hang-ups into outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from dialguard.outcomes import CallOutcome, OutcomeTracker
from dialguard.policy.codes import Outcome

T0 = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


class Sink:
    def __init__(self) -> None:
        self.recorded: list[CallOutcome] = []

    async def record(self, outcome: CallOutcome) -> None:
        self.recorded.append(outcome)


class Counting:
    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str | None]] = []
        self.rejections: list[str] = []
        self.misconfigured = 0

    def call_outcome(
        self, outcome: str, campaign: str | None, caller_id: str | None = None
    ) -> None:
        self.outcomes.append((outcome, campaign))

    def carrier_rejection(self, label: str, campaign: str | None) -> None:
        self.rejections.append(label)

    def dialplan_misconfigured(self) -> None:
        self.misconfigured += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker() -> tuple[OutcomeTracker, Sink, Counting, Clock, list[Awaitable[None]]]:
    sink, metrics, clock = Sink(), Counting(), Clock()
    spawned: list[Awaitable[None]] = []
    return OutcomeTracker(sink, metrics, spawned.append, clock=clock), sink, metrics, clock, spawned


async def run(spawned: list[Awaitable[None]]) -> None:
    await asyncio.gather(*spawned)


async def test_answered_trunk_leg_records_talk_seconds_from_dial_answer_to_destroy() -> None:
    t, sink, metrics, _, spawned = tracker()
    t.allowed("stasis-1", 7, "spring", "+12125550100")
    assert t.on_dial("stasis-1", "trunk-1", "", T0)
    t.on_dial("stasis-1", "trunk-1", "ANSWER", T0 + timedelta(seconds=2))
    t.on_destroyed("trunk-1", 16, None, T0 + timedelta(seconds=47))
    await run(spawned)
    (outcome,) = sink.recorded
    assert (outcome.decision_id, outcome.outcome, outcome.answered_seconds) == (
        7,
        Outcome.ANSWERED,
        45,
    )
    assert metrics.outcomes == [("answered", "spring")]


async def test_sip_608_on_the_trunk_is_a_carrier_rejection_with_its_own_label() -> None:
    t, sink, metrics, _, spawned = tracker()
    t.allowed("stasis-1", 8, "spring", "+12125550100")
    t.on_dial("stasis-1", "trunk-1", "", T0)
    t.on_destroyed("trunk-1", 127, 608, T0)
    await run(spawned)
    assert sink.recorded[0].outcome is Outcome.CARRIER_REJECTED
    assert metrics.rejections == ["sip_608"]


async def test_the_stasis_channel_ending_first_waits_for_the_trunk_leg() -> None:
    t, sink, _, _, spawned = tracker()
    t.allowed("stasis-1", 9, "spring", "+12125550100")
    t.on_dial("stasis-1", "trunk-1", "", T0)
    t.on_destroyed("stasis-1", 16, None, T0)
    assert spawned == []
    t.on_destroyed("trunk-1", 17, 486, T0)
    await run(spawned)
    assert [o.outcome for o in sink.recorded] == [Outcome.BUSY]


async def test_cause_0_right_after_continue_is_a_dialplan_misconfiguration() -> None:
    t, sink, metrics, clock, spawned = tracker()
    t.allowed("stasis-1", 10, "spring", "+12125550100")
    clock.now += 0.5
    t.on_destroyed("stasis-1", 0, None, T0)
    await run(spawned)
    assert metrics.misconfigured == 1
    assert sink.recorded[0].outcome is Outcome.FAILED


async def test_cause_0_long_after_continue_is_not_blamed_on_the_dialplan() -> None:
    t, _, metrics, clock, spawned = tracker()
    t.allowed("stasis-1", 11, "spring", "+12125550100")
    clock.now += 30
    t.on_destroyed("stasis-1", 0, None, T0)
    await run(spawned)
    assert metrics.misconfigured == 0


async def test_a_call_whose_dial_went_unheard_takes_its_answer_from_the_dialling_channel() -> None:
    # The subscription to the dialling channel was renewed after its Dial (a reconnect): no
    # trunk leg is linked, and the dialling channel's own state and end tell the outcome.
    t, sink, metrics, _, spawned = tracker()
    t.allowed("stasis-1", 13, "spring", "+12125550100")
    t.on_answer("stasis-1", T0 + timedelta(seconds=3))
    t.on_answer("stasis-1", T0 + timedelta(seconds=9))  # a second Up changes nothing
    t.on_destroyed("stasis-1", 16, None, T0 + timedelta(seconds=33))
    await run(spawned)
    (outcome,) = sink.recorded
    assert (outcome.decision_id, outcome.outcome, outcome.answered_seconds, outcome.cause) == (
        13,
        Outcome.ANSWERED,
        30,
        16,
    )
    assert metrics.outcomes == [("answered", "spring")]


async def test_the_dialling_channel_going_up_leaves_a_linked_trunk_legs_answer_alone() -> None:
    t, sink, _, _, spawned = tracker()
    t.allowed("stasis-1", 14, "spring", "+12125550100")
    t.on_dial("stasis-1", "trunk-1", "", T0)
    t.on_answer("trunk-1", T0 + timedelta(seconds=5))
    t.on_answer("stasis-1", T0 + timedelta(seconds=6))
    t.on_destroyed("stasis-1", 16, None, T0 + timedelta(seconds=20))
    t.on_destroyed("trunk-1", 16, None, T0 + timedelta(seconds=25))
    await run(spawned)
    (outcome,) = sink.recorded
    assert outcome.answered_seconds == 20


async def test_a_call_found_answered_after_a_restart_is_answered_from_then() -> None:
    # A new process: the call comes from the database's rows; its Dial and answer went unheard.
    t, sink, _, _, spawned = tracker()
    rows = [
        {"id": 21, "channel_id": "stasis-1", "campaign": "spring", "caller_id": "+1212"},
        {"id": 22, "channel_id": "stasis-2", "campaign": "spring", "caller_id": "+1212"},
    ]
    before = datetime.now(UTC)
    ended, followed = t.reconcile(rows, {"stasis-1", "stasis-2"}, up={"stasis-1"})
    assert (ended, sorted(followed)) == (0, ["stasis-1", "stasis-2"])
    later = datetime.now(UTC) + timedelta(seconds=12)
    t.on_destroyed("stasis-1", 16, None, later)
    t.on_destroyed("stasis-2", 17, None, later)
    await run(spawned)
    by_id = {o.decision_id: o for o in sink.recorded}
    assert by_id[21].outcome is Outcome.ANSWERED
    assert by_id[21].answered_seconds is not None
    assert 11 <= by_id[21].answered_seconds <= round((later - before).total_seconds())
    assert by_id[22].outcome is Outcome.BUSY  # not up when found: its own end tells


async def test_a_trunk_leg_answered_while_nobody_listened_is_answered_from_the_reconnect() -> None:
    t, sink, _, _, spawned = tracker()
    t.allowed("stasis-1", 23, "spring", "+12125550100")
    t.on_dial("stasis-1", "trunk-1", "", T0)
    # The websocket was down while the trunk leg answered.
    t.reconcile([], {"stasis-1", "trunk-1"}, up={"stasis-1", "trunk-1"})
    t.on_destroyed("trunk-1", 16, None, datetime.now(UTC) + timedelta(seconds=5))
    await run(spawned)
    (outcome,) = sink.recorded
    assert outcome.outcome is Outcome.ANSWERED
    assert outcome.answered_seconds == 5


async def test_dial_from_an_unknown_channel_is_not_ours() -> None:
    t, _, _, _, spawned = tracker()
    assert not t.on_dial("someone-else", "trunk-9", "", T0)
    t.on_destroyed("trunk-9", 16, None, T0)
    assert spawned == []


def test_entries_older_than_max_age_are_dropped() -> None:
    t, _, _, clock, _ = tracker()
    t.allowed("stasis-1", 12, "spring", "+12125550100")
    t.on_dial("stasis-1", "trunk-1", "", T0)
    clock.now += 7201
    assert t.expire() == 1
    assert not t.is_allowed_channel("stasis-1") and not t.is_tracked_trunk("trunk-1")
