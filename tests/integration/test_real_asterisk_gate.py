"""The gate against a real Asterisk 22: the shipped [dialguard-out] dialplan, a sipp carrier,
the real service wiring (in this process, or `dialguard serve`) and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.health import HealthStore
from dialguard.testing.real_asterisk import RealAsterisk, TcpRelay, carrier_number
from tests.integration.real_asterisk_support import (
    CALLER,
    CALLER_E164,
    asterisk,
    carrier,
    decision_of,
    gate_on,
    outcome_of,
    poll,
    poll_async,
    reached_carrier,
    requires_asterisk,
    serve_process,
)

__all__ = ["asterisk", "carrier"]  # fixtures

pytestmark = requires_asterisk


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CALLER_E164, None)


def in_stasis(asterisk: RealAsterisk, channel_id: str) -> bool:
    """The channel has entered Stasis(dialguard, ...) (and is parked there until told)."""
    return ("Stasis", "dialguard,") in [
        (app, data[: len("dialguard,")]) for app, data in asterisk.events.dialplan_apps(channel_id)
    ]


async def destroyed(asterisk: RealAsterisk, channel_id: str) -> int:
    event = await asterisk.events.wait_for_event("ChannelDestroyed", channel_id, timeout=15)
    return int(event["cause"])


# Outcomes come from the trunk's events, which the trunk subscription brings without
# subscribe_all as well.
@pytest.mark.parametrize("subscribe_all", ["true", "false"])
async def test_allowed_call_carries_the_decision_into_the_dialplan_and_its_outcome_is_recorded(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None, subscribe_all: str
) -> None:
    destination = carrier_number("2122641", 200, hold=1.0)
    async with gate_on(pool, carrier, tmp_path, DIALGUARD_ARI_SUBSCRIBE_ALL=subscribe_all):
        call = await carrier.originate_outbound(destination, CALLER, campaign="spring")
        row = await outcome_of(pool, call.stasis_id)
    variables = carrier.events.variables(call.stasis_id)
    assert variables["DIALGUARD_DECISION"] == "allow"
    assert variables["DIALGUARD_DECISION_ID"] == str(row["id"])
    assert variables["STASISSTATUS"] == "SUCCESS"
    assert reached_carrier(carrier, call.stasis_id)
    assert (row["allowed"], row["campaign"], row["source"]) == (True, "spring", "gate")
    assert row["destination"] == "+1" + destination and row["caller_id"] == CALLER_E164
    assert (row["outcome"], row["cause"]) == ("answered", 16)
    assert 0.8 <= row["answered_seconds"] <= 2.5


async def test_denied_call_is_hung_up_with_cause_21_and_the_rule_in_a_channel_variable(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    destination = carrier_number("2122641", 200)
    await BlacklistStore(pool).add_number("+1" + destination)
    async with gate_on(pool, carrier, tmp_path):
        call = await carrier.originate_outbound(destination, CALLER)
        cause = await destroyed(carrier, call.stasis_id)
    assert cause == 21
    variables = carrier.events.variables(call.stasis_id)
    assert (variables["DIALGUARD_DECISION"], variables["DIALGUARD_RULE"]) == ("deny", "blacklisted")
    assert not reached_carrier(carrier, call.stasis_id)
    assert carrier.events.of("ChannelCreated") and not [
        e for e in carrier.events.of("ChannelCreated") if "PJSIP/" in e.event["channel"]["name"]
    ], "no channel to the carrier was created"


async def test_deny_label_plays_the_announcement_branch_and_rejects_with_21(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path
) -> None:
    # The caller ID is not registered: callerid_unknown.
    async with gate_on(pool, asterisk, tmp_path, DIALGUARD_GATE_DENY_LABEL="denied"):
        call = await asterisk.originate_outbound(carrier_number("2122641", 200), CALLER)
        cause = await destroyed(asterisk, call.stasis_id)
    assert cause == 21
    apps = asterisk.events.dialplan_apps(call.stasis_id)
    assert (
        "Log",
        "NOTICE,dialguard-out: "
        + _name(asterisk, call.stasis_id)
        + " denied by rule callerid_unknown",
    ) in apps
    assert [a for a, _ in apps][-3:] == ["Progress", "Playback", "Hangup"]
    assert ("Hangup", "21") in apps


def _name(asterisk: RealAsterisk, channel_id: str) -> str:
    return str(asterisk.events.of("ChannelCreated", channel_id)[0].event["channel"]["name"])


async def test_carrier_outcomes_reach_caller_id_health_and_rest_a_blocked_caller_id(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    # (SIP code, outcome, cause) as Asterisk reports them for each carrier answer.
    expected = {
        486: ("busy", 17),
        503: ("congestion", 34),
        403: ("carrier_rejected", 21),
        603: ("carrier_rejected", 21),
        607: ("carrier_rejected", 127),
        608: ("carrier_rejected", 127),
    }
    env = {
        "DIALGUARD_FEEDBACK_CARRIER_BLOCK_WINDOW": "8",
        "DIALGUARD_FEEDBACK_CARRIER_BLOCK_SHARE": "0.5",
    }
    async with gate_on(pool, carrier, tmp_path, **env):
        answered = await carrier.originate_outbound(
            carrier_number("2122640", 200, hold=0.5), CALLER
        )
        rows = {200: await outcome_of(pool, answered.stasis_id)}
        for i, code in enumerate(expected):
            call = await carrier.originate_outbound(carrier_number(f"21226{42 + i}", code), CALLER)
            rows[code] = await outcome_of(pool, call.stasis_id)
        health = await CallerIdStore(pool).get(CALLER_E164)
        assert health is not None and health["state"] == "active", "7 of 8 completed: not judged"
        last = await carrier.originate_outbound(carrier_number("2122649", 200, hold=0.2), CALLER)
        await outcome_of(pool, last.stasis_id)

        async def rested() -> dict[str, object] | None:
            found = await CallerIdStore(pool).get(CALLER_E164)
            return found if found is not None and found["state"] == "rested" else None

        callerid = await poll_async(rested)
    assert (rows[200]["outcome"], rows[200]["cause"], rows[200]["sip_code"]) == (
        "answered",
        16,
        None,
    )
    for code, (outcome, cause) in expected.items():
        assert (rows[code]["outcome"], rows[code]["cause"], rows[code]["sip_code"]) == (
            outcome,
            cause,
            code,
        ), code
    # 4 carrier rejections (403, 603, 607, 608) in the last 8 completed calls: 50 %.
    assert callerid["reason"] == "carrier_block_suspected"
    health = await HealthStore(pool).callerid(
        CALLER_E164, at=datetime.now(UTC), window=1000, short_call_seconds=6
    )
    # Two answered calls, both shorter than 6 s; busy and congestion are neither.
    assert (health.calls, health.answered, health.short_calls, health.carrier_rejections) == (
        8,
        2,
        2,
        4,
    )


async def test_fail_closed_while_dialguard_is_down_then_gated_once_it_is_up(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    early = await carrier.originate_outbound(carrier_number("2122641", 200), CALLER)
    assert await destroyed(carrier, early.stasis_id) == 21
    assert carrier.events.variables(early.stasis_id)["STASISSTATUS"] == "FAILED"
    assert not reached_carrier(carrier, early.stasis_id)
    async with gate_on(pool, carrier, tmp_path):
        later = await carrier.originate_outbound(carrier_number("2122642", 200), CALLER)
        await poll(lambda: reached_carrier(carrier, later.stasis_id))
    assert await decision_of(pool, early.stasis_id) is None


async def test_call_parked_when_serve_is_killed_is_decided_by_the_restarted_serve(
    pool: asyncpg.Pool, db_dsn: str, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    relay = TcpRelay(carrier.host, carrier.port)
    await relay.start()
    try:
        async with serve_process(db_dsn, carrier, tmp_path, ari_url=relay.url()) as first:
            relay.freeze()  # the StasisStart below never reaches this instance
            call = await carrier.originate_outbound(carrier_number("2122641", 200), CALLER)
            await poll(lambda: in_stasis(carrier, call.stasis_id))
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
        relay.cut()
        # Asterisk keeps the channel parked in Stasis with nobody holding the application.
        assert not carrier.events.of("ChannelDestroyed", call.stasis_id)
        async with serve_process(db_dsn, carrier, tmp_path) as second:
            await poll(lambda: reached_carrier(carrier, call.stasis_id))
            second.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.proc.wait(), 15) == 0
    finally:
        await relay.close()
    row = await decision_of(pool, call.stasis_id)
    assert row is not None and row["allowed"]
    assert carrier.events.variables(call.stasis_id)["DIALGUARD_DECISION"] == "allow"


async def test_call_parked_across_a_websocket_cut_is_decided_after_the_reconnect(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    relay = TcpRelay(carrier.host, carrier.port)
    await relay.start()
    try:
        async with gate_on(pool, carrier, tmp_path, ari_url=relay.url()) as service:
            relay.freeze()
            call = await carrier.originate_outbound(carrier_number("2122641", 200), CALLER)
            await poll(lambda: in_stasis(carrier, call.stasis_id))
            relay.cut()
            await poll(lambda: reached_carrier(carrier, call.stasis_id))
            assert service.gate.ready
            reconnects = service.registry.get_sample_value("dialguard_ari_reconnects_total")
            assert reconnects == 1.0
    finally:
        await relay.close()
    row = await decision_of(pool, call.stasis_id)
    assert row is not None and row["allowed"]


@pytest.mark.parametrize("subscribe_all", ["true", "false"])
async def test_an_allow_label_missing_from_the_dialplan_is_reported_and_the_call_fails_closed(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path, registered: None, subscribe_all: str
) -> None:
    env = {"DIALGUARD_GATE_ALLOW_LABEL": "alowed", "DIALGUARD_ARI_SUBSCRIBE_ALL": subscribe_all}
    async with gate_on(pool, asterisk, tmp_path, **env) as service:
        call = await asterisk.originate_outbound(carrier_number("2122641", 200), CALLER)
        cause = await destroyed(asterisk, call.stasis_id)
        await poll(
            lambda: service.registry.get_sample_value("dialguard_dialplan_misconfigured_total")
        )
    assert cause == 21
    assert not reached_carrier(asterisk, call.stasis_id)
