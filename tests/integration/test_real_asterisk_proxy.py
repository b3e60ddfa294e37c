"""The ARI proxy and the bypass detector against a real Asterisk 22 with a sipp carrier: an
ARI dialer originates to the trunk through dialguard's proxy, or straight to Asterisk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.testing.real_asterisk import OBSERVER_APP, RealAsterisk, carrier_number
from tests.integration.real_asterisk_support import (
    CALLER,
    CALLER_E164,
    asterisk,
    carrier,
    decision_of,
    gate_on,
    outcome_of,
    poll,
    requires_asterisk,
    value,
)
from tests.integration.test_proxy_originations import DIALER_AUTH, PROXY_ENV, proxy_url

__all__ = ["asterisk", "carrier"]  # fixtures

pytestmark = requires_asterisk

GRACE = 2.0  # GateConfig.ungated_grace


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CALLER_E164, None)


@pytest.fixture
async def dialer() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=DIALER_AUTH) as session:
        yield session


def trunk_channels(asterisk: RealAsterisk) -> list[str]:
    return [
        str(e.event["channel"]["id"])
        for e in asterisk.events.of("ChannelCreated")
        if str(e.event["channel"]["name"]).startswith("PJSIP/carrier-")
    ]


async def test_allowed_originate_through_the_proxy_reaches_the_carrier_and_is_accounted_for(
    pool: asyncpg.Pool,
    carrier: RealAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    # Answered for longer than the bypass detector's grace time: it must find the call explained.
    destination = carrier_number("2122641", 200, hold=GRACE + 0.5)
    async with gate_on(pool, carrier, tmp_path, **PROXY_ENV) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={
                "endpoint": f"PJSIP/{destination}@carrier",
                "app": OBSERVER_APP,
                "callerId": f'"Dialer" <{CALLER}>',
            },
        ) as resp:
            assert resp.status == 200, await resp.text()
            channel = json.loads(await resp.read())
        assert channel["name"].startswith("PJSIP/carrier-")
        row = await outcome_of(pool, channel["id"])
        await carrier.events.wait_for_event("ChannelDestroyed", channel["id"], timeout=GRACE + 8)
        assert value(service, "dialguard_ungated_calls_total") == 0
    assert (row["allowed"], row["source"], row["destination"]) == (
        True,
        "proxy",
        "+1" + destination,
    )
    # A channel originated into an application (no Dial() to copy the far end's cause) that the
    # carrier hangs up with a BYE ends with cause 0 in Asterisk 22.10.1, not 16.
    assert (row["outcome"], row["cause"], row["sip_code"]) == ("answered", 0, None)
    assert GRACE <= row["answered_seconds"] <= GRACE + 2


async def test_denied_originate_is_refused_by_the_proxy_and_never_reaches_asterisk(
    pool: asyncpg.Pool,
    carrier: RealAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    destination = carrier_number("2122641", 200)
    await BlacklistStore(pool).add_number("+1" + destination)
    async with gate_on(pool, carrier, tmp_path, **PROXY_ENV) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            json={
                "endpoint": f"PJSIP/{destination}@carrier",
                "app": OBSERVER_APP,
                "callerId": f'"Dialer" <{CALLER}>',
            },
        ) as resp:
            status, body = resp.status, await resp.json()
        _, listed = await carrier.rest("GET", "/channels")
    assert status == 403
    assert body["message"].startswith("dialguard: blacklisted: ")
    assert listed == [] and trunk_channels(carrier) == []


async def test_proxy_passes_other_requests_and_the_events_websocket_through(
    pool: asyncpg.Pool,
    carrier: RealAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    destination = carrier_number("2122641", 200, hold=0.5)
    async with gate_on(pool, carrier, tmp_path, **PROXY_ENV) as service:
        base = proxy_url(service)
        async with dialer.get(f"{base}/asterisk/info") as resp:
            assert resp.status == 200
            proxied = await resp.json()
        _, direct = await carrier.rest("GET", "/asterisk/info")
        assert proxied["system"]["entity_id"] == direct["system"]["entity_id"]
        assert proxied["build"] == direct["build"]
        async with dialer.get(f"{base}/endpoints/PJSIP/carrier") as resp:
            assert resp.status == 200 and (await resp.json())["resource"] == "carrier"
        async with dialer.ws_connect(f"{base}/events?app=dialer") as ws:
            async with dialer.post(
                f"{base}/channels",
                params={
                    "endpoint": f"PJSIP/{destination}@carrier",
                    "app": "dialer",
                    "callerId": f'"Dialer" <{CALLER}>',
                },
            ) as resp:
                assert resp.status == 200
                channel_id = (await resp.json())["id"]
            # Asterisk's events for the dialer's own application arrive through the proxy.
            seen: list[str] = []
            async for message in ws:
                event = json.loads(message.data)
                if event.get("channel", {}).get("id") == channel_id:
                    seen.append(event["type"])
                if event["type"] == "StasisStart":
                    break
        assert "StasisStart" in seen
        row = await outcome_of(pool, channel_id)
    assert (row["source"], row["outcome"]) == ("proxy", "answered")


@pytest.mark.parametrize("subscribe_all", ["true", "false"])
async def test_direct_trunk_originate_is_counted_as_ungated(
    pool: asyncpg.Pool,
    carrier: RealAsterisk,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    subscribe_all: str,
) -> None:
    async with gate_on(
        pool, carrier, tmp_path, DIALGUARD_ARI_SUBSCRIBE_ALL=subscribe_all
    ) as service:
        trunk = await carrier.originate_direct_to_trunk(
            carrier_number("2122641", 200, hold=GRACE + 2.0), CALLER
        )
        await poll(lambda: value(service, "dialguard_ungated_calls_total") >= 1, within=GRACE + 5)
        cause = (await carrier.events.wait_for_event("ChannelDestroyed", trunk))["cause"]
    assert cause != 21, "only counted without enforcement: the carrier ended the call"
    lines = [r.getMessage() for r in caplog.records if "ungated call" in r.getMessage()]
    assert len(lines) == 1 and trunk in lines[0] and CALLER in lines[0]
    assert await decision_of(pool, trunk) is None


async def test_with_enforcement_a_direct_trunk_originate_is_hung_up_with_cause_21(
    pool: asyncpg.Pool, carrier: RealAsterisk, tmp_path: Path
) -> None:
    async with gate_on(pool, carrier, tmp_path, DIALGUARD_GATE_ENFORCE_GATE="true") as service:
        trunk = await carrier.originate_direct_to_trunk(
            carrier_number("2122641", 200, hold=GRACE + 5.0), CALLER
        )
        destroyed = await carrier.events.wait_for_event(
            "ChannelDestroyed", trunk, timeout=GRACE + 4
        )
        assert value(service, "dialguard_ungated_calls_total") == 1
    assert destroyed["cause"] == 21
