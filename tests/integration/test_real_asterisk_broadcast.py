"""Several instances gate one real Asterisk 22 through StasisBroadcast (gate.mode = "broadcast"):
the shipped [dialguard-broadcast] context, claims, one policy, and a call parked with an instance
that goes away decided by another. The kill-under-load scenarios are in
test_real_asterisk_takeover.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from dialguard.app import Service
from dialguard.testing.real_asterisk import RealAsterisk, carrier_number
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
    requires_asterisk,
    value,
)

__all__ = ["asterisk", "carrier"]  # fixtures

pytestmark = requires_asterisk


async def originate_broadcast(
    asterisk: RealAsterisk, destination: str, caller_id: str = CALLER, campaign: str = ""
) -> str:
    """A dialer's call into [dialguard-broadcast]; the id of the half that runs the gate."""
    call = await asterisk.originate_outbound(
        destination, caller_id, campaign=campaign or None, context="dialguard-broadcast"
    )
    return call.stasis_id


@asynccontextmanager
async def instances(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path, *names: str, **env: str
) -> AsyncIterator[list[Service]]:
    async with AsyncExitStack() as stack:
        services = []
        for name in names:
            (tmp_path / name).mkdir(exist_ok=True)
            services.append(
                await stack.enter_async_context(
                    gate_on(
                        pool,
                        asterisk,
                        tmp_path / name,
                        DIALGUARD_GATE_MODE="broadcast",
                        DIALGUARD_GATE_INSTANCE_ID=name,
                        **env,
                    )
                )
            )
        # Each ready instance has seen the others: a ready instance always has.
        await poll(
            lambda: all(len(s.broadcast.alive) == len(names) for s in services if s.broadcast)
        )
        yield services


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    from dialguard.store.callerids import CallerIdStore

    await CallerIdStore(pool).add(CALLER_E164, None)


def left_with(asterisk: RealAsterisk, channel_id: str) -> dict[str, str]:
    return asterisk.events.variables(channel_id)


async def destroyed_cause(asterisk: RealAsterisk, channel_id: str) -> int:
    event = await asterisk.events.wait_for_event("ChannelDestroyed", channel_id, timeout=15)
    return int(event["cause"])


async def test_each_call_is_claimed_by_one_instance_and_decided_once(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    async with instances(pool, asterisk, tmp_path, "a", "b") as (a, b):
        calls = [
            await originate_broadcast(asterisk, carrier_number(f"21226{i:02d}", 486), campaign="x")
            for i in range(6)
        ]
        for call in calls:
            await destroyed_cause(asterisk, call)
        won = value(a, "dialguard_broadcast_claims_total", result="won") + value(
            b, "dialguard_broadcast_claims_total", result="won"
        )
        lost = value(a, "dialguard_broadcast_claims_total", result="lost") + value(
            b, "dialguard_broadcast_claims_total", result="lost"
        )
    assert (won, lost) == (6, 6)
    for call in calls:
        row = await decision_of(pool, call)  # exactly one row, or fetchrow would hide a second
        async with pool.acquire() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM decisions WHERE channel_id = $1", call
            )
        assert count == 1 and row is not None and row["allowed"] and row["campaign"] == "x"
        variables = left_with(asterisk, call)
        assert variables["DIALGUARD_DECISION"] == "allow"
        assert variables["STASISSTATUS"] == "SUCCESS"


async def test_without_any_instance_the_call_fails_closed_after_the_broadcast_timeout(
    asterisk: RealAsterisk,
) -> None:
    call = await originate_broadcast(asterisk, carrier_number("2122641", 200))
    assert await destroyed_cause(asterisk, call) == 21
    # Unlike Stasis(), which answers FAILED at once, the broadcast waits out its timeout.
    assert left_with(asterisk, call)["STASISSTATUS"] == "TIMEOUT"


async def test_an_instance_whose_profiles_differ_is_not_ready_and_claims_nothing(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    async with instances(pool, asterisk, tmp_path, "a") as (a,):
        (tmp_path / "b").mkdir()
        async with gate_on(
            pool,
            asterisk,
            tmp_path / "b",
            DIALGUARD_GATE_MODE="broadcast",
            DIALGUARD_GATE_INSTANCE_ID="b",
            DIALGUARD_PROFILES_DEFAULT_DESTINATION_MIN_INTERVAL="1h",
        ) as b:
            await poll(lambda: value(b, "dialguard_profiles_mismatch") == 1)
            assert not b.readiness()[0] and b.readiness()[1]["profiles_agree"] is False
            assert a.readiness()[0] and value(a, "dialguard_profiles_mismatch") == 0
            await poll(lambda: value(a, "dialguard_instances_alive") == 2)
            call = await originate_broadcast(asterisk, carrier_number("2122641", 486))
            await destroyed_cause(asterisk, call)
            assert value(b, "dialguard_broadcast_claims_total", result="won") == 0
            assert value(a, "dialguard_broadcast_claims_total", result="won") == 1
            assert value(b, "dialguard_ready", mode="broadcast") == 0


async def test_a_call_parked_with_an_instance_that_stops_is_decided_by_the_other(
    pool: asyncpg.Pool, asterisk: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    async with instances(pool, asterisk, tmp_path, "a", "b") as (a, b):
        # a alone claims: b's claims are held back until a holds the call.
        b.broadcast._agree = False  # type: ignore[union-attr]
        a_decide = a.gate._decide_channel

        async def never(*args: object, **kwargs: object) -> None:
            return None

        a.gate._decide_channel = never  # type: ignore[method-assign]
        call = await originate_broadcast(asterisk, carrier_number("2122641", 486))
        await poll(lambda: value(a, "dialguard_broadcast_claims_total", result="won") == 1)
        b.broadcast._agree = True  # type: ignore[union-attr]
        a.gate._decide_channel = a_decide  # type: ignore[method-assign]
        # a goes away: its websocket closes, its lease goes. The call stays parked in a's app.
        await a.listener.stop()
        await a.supervisor.stop()
        await a.broadcast.stop()  # type: ignore[union-attr]
        await poll_async(lambda: decision_of(pool, call), within=3.0)
        await destroyed_cause(asterisk, call)
        assert value(b, "dialguard_takeovers_total") == 1
        assert value(b, "dialguard_takeover_calls_total") == 1
    assert left_with(asterisk, call)["DIALGUARD_DECISION"] == "allow"


async def test_an_instance_leaves_the_calls_of_another_alone_and_still_sees_a_bypass(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path, registered: None
) -> None:
    # Each instance hears every trunk leg (the trunk subscription) but only its own calls'
    # Dial events: the legs of calls another instance allowed are not ungated calls.
    async with instances(pool, carrier, tmp_path, "a", "b") as (a, b):
        calls = [
            await originate_broadcast(carrier, carrier_number(f"21226{i:02d}", 200, hold=2.5))
            for i in range(4)
        ]
        for call in calls:
            assert await destroyed_cause(carrier, call) == 16
        for call in calls:
            # The winner follows its call: the outcome is recorded as in stasis mode.
            row = await outcome_of(pool, call)
            assert (row["allowed"], row["outcome"], row["cause"]) == (True, "answered", 16)
        assert value(a, "dialguard_ungated_calls_total") == 0
        assert value(b, "dialguard_ungated_calls_total") == 0
        trunk = await carrier.originate_direct_to_trunk(
            carrier_number("2122699", 200, hold=5), CALLER
        )
        await poll(
            lambda: (
                value(a, "dialguard_ungated_calls_total") >= 1
                or value(b, "dialguard_ungated_calls_total") >= 1
            ),
            within=10,
        )
        assert trunk
