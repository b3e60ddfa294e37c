"""The same gate scenarios against the fake Asterisk and the real one.

The fake stays for fast tests; these scenarios pin it to what the real Asterisk 22 does with
the shipped dialplan, for the behaviours it imitates: allow with its channel variables and
outcome, deny with cause 21, fail closed while dialguard is down, and a channel parked by an
instance that went away. The real runs are marked `asterisk` and need DIALGUARD_TEST_ASTERISK;
the fake runs always.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg
import orjson
import pytest

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import FakeAsterisk, Outcome
from dialguard.testing.real_asterisk import OBSERVER_APP, RealAsterisk, carrier_number
from tests.integration.real_asterisk_support import (
    CALLER,
    CALLER_E164,
    gate_on,
    outcome_of,
    poll,
    requires_asterisk,
)
from tests.integration.test_proxy_originations import DIALER_AUTH, PROXY_ENV, proxy_url


class Pbx(Protocol):
    """A scenario's view of an Asterisk, real or fake."""

    base_url: str
    username: str
    password: str

    async def place(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        """A call through the gate to a destination starting with `line` (7 digits), which
        the carrier answers (200, hanging up after `hold` s) or refuses with `sip_code`;
        returns the id of the channel in Stasis."""
        ...

    def events(self, type: str, channel_id: str) -> list[dict[str, Any]]: ...

    def carrier(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        """A destination the carrier answers (or refuses) as asked, for calls that do not pass
        the dialplan (the ARI proxy's originations)."""
        ...


class FakePbx:
    def __init__(self, fake: FakeAsterisk) -> None:
        self.fake = fake
        self.base_url = fake.base_url
        self.username, self.password = "dialguard", "dialguard"

    async def place(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        outcome = Outcome.answered(hold) if sip_code == 200 else Outcome.sip(sip_code)
        call = await self.fake.originate_outbound(
            carrier_number(line, sip_code, hold=hold),
            CALLER,
            variables={"CAMPAIGN": "spring"},
            outcome=outcome,
        )
        assert call.stasis is not None
        return call.stasis.id

    def carrier(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        number = carrier_number(line, sip_code, hold=hold)
        self.fake.set_outcome(
            number, Outcome.answered(hold) if sip_code == 200 else Outcome.sip(sip_code)
        )
        return number

    def events(self, type: str, channel_id: str) -> list[dict[str, Any]]:
        # What the observer heard, as the real harness's observer application does.
        return [e.event for e in self.fake.events(type, app=OBSERVER_APP, channel_id=channel_id)]


class RealPbx:
    def __init__(self, asterisk: RealAsterisk) -> None:
        self.asterisk = asterisk
        self.base_url = asterisk.base_url
        self.username, self.password = asterisk.username, asterisk.password

    async def place(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        number = carrier_number(line, sip_code, hold=hold)
        call = await self.asterisk.originate_outbound(number, CALLER, campaign="spring")
        return call.stasis_id

    def carrier(self, line: str, *, sip_code: int = 200, hold: float = 0.0) -> str:
        return carrier_number(line, sip_code, hold=hold)

    def events(self, type: str, channel_id: str) -> list[dict[str, Any]]:
        return [e.event for e in self.asterisk.events.of(type, channel_id)]


@pytest.fixture(params=["fake", pytest.param("real", marks=requires_asterisk)])
async def pbx(request: pytest.FixtureRequest) -> AsyncIterator[Pbx]:
    if request.param == "fake":
        async with (
            FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as fake,
            aiohttp.ClientSession() as session,
        ):
            auth = {"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")}
            url = f"{fake.base_url}/events?app={OBSERVER_APP}&subscribeAll=true"
            async with session.ws_connect(url, headers=auth):
                await fake.wait_for(lambda: fake.app_connected(OBSERVER_APP))
                yield FakePbx(fake)
        return
    async with RealAsterisk.from_env() as asterisk:
        if not asterisk.sip:
            pytest.skip(f"no sipp carrier: {asterisk.without_sip_because}")
        yield RealPbx(asterisk)


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add(CALLER_E164, None)


def variables(pbx: Pbx, channel_id: str) -> dict[str, str]:
    return {str(e["variable"]): str(e["value"]) for e in pbx.events("ChannelVarset", channel_id)}


def dialed_carrier(pbx: Pbx, channel_id: str) -> bool:
    return any(
        e["dialplan_app"] == "Dial" and "@carrier" in e["dialplan_app_data"]
        for e in pbx.events("ChannelDialplan", channel_id)
    )


async def destroyed_cause(pbx: Pbx, channel_id: str) -> int:
    found = await poll(lambda: pbx.events("ChannelDestroyed", channel_id), within=15)
    return int(found[0]["cause"])


async def test_allowed_call_sets_the_variables_dials_the_carrier_and_records_the_outcome(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    async with gate_on(pool, pbx, tmp_path):
        channel = await pbx.place("2122641", hold=0.5)
        row = await outcome_of(pool, channel)
        await destroyed_cause(pbx, channel)
    found = variables(pbx, channel)
    assert (found["STASISSTATUS"], found["DIALGUARD_DECISION"]) == ("SUCCESS", "allow")
    assert found["DIALGUARD_DECISION_ID"] == str(row["id"])
    assert dialed_carrier(pbx, channel)
    assert (row["campaign"], row["outcome"], row["cause"]) == ("spring", "answered", 16)


async def test_the_application_hears_only_the_event_types_the_gate_acts_on(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    heard: list[str] = []
    async with gate_on(pool, pbx, tmp_path) as service:
        listener = service.listener
        handle = listener._handle_text

        def counting(text: str) -> None:
            heard.append(str(orjson.loads(text).get("type")))
            handle(text)

        listener._handle_text = counting  # type: ignore[method-assign]
        auth = {"Authorization": aiohttp.encode_basic_auth(pbx.username, pbx.password)}
        async with (
            aiohttp.ClientSession(headers=auth) as session,
            session.get(f"{pbx.base_url}/applications/dialguard") as response,
        ):
            application = await response.json()
        channel = await pbx.place("2122641", hold=0.2)
        row = await outcome_of(pool, channel)
        await destroyed_cause(pbx, channel)
    assert sorted(e["type"] for e in application["events_allowed"]) == sorted(service.gate.events)
    # The observer heard the call's variables being set; the gate's application did not.
    assert variables(pbx, channel)["DIALGUARD_DECISION"] == "allow"
    assert "StasisStart" in heard and "ChannelDestroyed" in heard
    assert set(heard) <= service.gate.events, set(heard) - service.gate.events
    assert row["outcome"] == "answered"


async def test_busy_carrier_is_recorded_with_its_sip_code(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    async with gate_on(pool, pbx, tmp_path):
        channel = await pbx.place("2122641", sip_code=486)
        row = await outcome_of(pool, channel)
        # The dialplan hangs up with the carrier's cause (HANGUPCAUSE after Dial).
        assert await destroyed_cause(pbx, channel) == 17
    assert (row["outcome"], row["cause"], row["sip_code"]) == ("busy", 17, 486)


async def test_denied_call_ends_with_cause_21_and_names_its_rule(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    await BlacklistStore(pool).add_number("+1" + carrier_number("2122641", 200))
    async with gate_on(pool, pbx, tmp_path):
        channel = await pbx.place("2122641")
        cause = await destroyed_cause(pbx, channel)
    assert cause == 21
    found = variables(pbx, channel)
    assert (found["DIALGUARD_DECISION"], found["DIALGUARD_RULE"]) == ("deny", "blacklisted")
    assert not dialed_carrier(pbx, channel)


async def test_without_dialguard_stasis_fails_and_the_call_ends_with_cause_21(
    pbx: Pbx,
) -> None:
    channel = await pbx.place("2122641")
    assert await destroyed_cause(pbx, channel) == 21
    assert variables(pbx, channel)["STASISSTATUS"] == "FAILED"
    assert not dialed_carrier(pbx, channel)


async def test_channel_parked_by_an_instance_that_went_away_is_decided_on_connect(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    auth = {"Authorization": aiohttp.encode_basic_auth(pbx.username, pbx.password)}
    async with aiohttp.ClientSession(headers=auth) as session:
        # An instance holds the application, hears the StasisStart and goes away unanswered.
        ws = await session.ws_connect(f"{pbx.base_url}/events?app=dialguard")
        channel = await pbx.place("2122641")
        async for message in ws:
            if '"StasisStart"' in message.data and channel in message.data:
                break
        await ws.close()
    assert not pbx.events("ChannelDestroyed", channel), "parked, not ended"
    async with gate_on(pool, pbx, tmp_path):
        await poll(lambda: dialed_carrier(pbx, channel))
    assert variables(pbx, channel)["DIALGUARD_DECISION"] == "allow"


async def test_deny_label_sends_the_call_to_the_announcement_then_ends_it_with_21(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path
) -> None:
    # The caller ID is not registered: callerid_unknown.
    async with gate_on(pool, pbx, tmp_path, DIALGUARD_GATE_DENY_LABEL="denied"):
        channel = await pbx.place("2122641")
        cause = await destroyed_cause(pbx, channel)
    assert cause == 21
    assert variables(pbx, channel)["DIALGUARD_RULE"] == "callerid_unknown"
    apps = [e["dialplan_app"] for e in pbx.events("ChannelDialplan", channel)]
    assert "Playback" in apps and apps[-1] == "Hangup"
    assert not dialed_carrier(pbx, channel)


async def test_proxy_gates_an_ari_originate_to_the_trunk(
    pool: asyncpg.Pool, pbx: Pbx, tmp_path: Path, registered: None
) -> None:
    allowed = pbx.carrier("2122641", sip_code=486)
    denied = pbx.carrier("2122642", sip_code=200)
    await BlacklistStore(pool).add_number("+1" + denied)
    async with (
        gate_on(pool, pbx, tmp_path, **PROXY_ENV) as service,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        base = proxy_url(service)
        async with dialer.get(f"{base}/asterisk/info") as resp:
            assert resp.status == 200 and "system" in await resp.json()
        answers = {}
        for number in (allowed, denied):
            async with dialer.post(
                f"{base}/channels",
                params={
                    "endpoint": f"PJSIP/{number}@carrier",
                    "app": OBSERVER_APP,
                    "callerId": f'"Dialer" <{CALLER}>',
                },
            ) as resp:
                answers[number] = (resp.status, await resp.json())
        status, channel = answers[allowed]
        assert status == 200
        row = await outcome_of(pool, channel["id"])
    assert (row["source"], row["outcome"], row["cause"], row["sip_code"]) == (
        "proxy",
        "busy",
        17,
        486,
    )
    status, body = answers[denied]
    assert status == 403 and body["message"].startswith("dialguard: blacklisted: ")
