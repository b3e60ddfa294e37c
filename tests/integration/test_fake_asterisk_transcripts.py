"""The fake Asterisk replays each recorded scenario of Asterisk 22.10.1 (shared/asterisk).

Each test drives the fake the way the recording drove Asterisk (a websocket per app with
subscribeAll=true, REST through a plain HTTP client) and compares the key events of the
outbound Local halves (;1/;2) or the inbound SIP channel with the recording: type, causes,
cause_txt, tech_cause, args, dialplan fields, Dial statuses, and REST statuses and bodies.
The expected sequences below were extracted from the recordings. The lab's carrier was a Local
pair into a dialplan simulator; the fake's carrier is one PJSIP channel, so carrier-side events
are checked on their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dialguard.testing import FakeAsterisk, Outcome, SentEvent

USER, PASSWORD = "dialguard", "dialguard"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
KEY_TYPES = {
    "ChannelCreated",
    "StasisStart",
    "StasisEnd",
    "Dial",
    "ChannelStateChange",
    "ChannelHangupRequest",
    "ChannelDestroyed",
    "ApplicationReplaced",
}
ARGS = ("15550100", "4930123456")
STASIS_START = ("StasisStart", ";2", ARGS, "Stasis", "dialguard,15550100,4930123456")
ORIGINATED = [("ChannelCreated", ";1"), ("ChannelCreated", ";2"), ("Dial", ";1", ""), STASIS_START]

# deny.jsonl and deny-reason-rejected.jsonl
DENY = [
    *ORIGINATED,
    ("ChannelHangupRequest", ";2", 32, True),
    ("StasisEnd", ";2"),
    ("ChannelHangupRequest", ";2", 16, True),
    ("ChannelHangupRequest", ";1", 21, False),
    ("ChannelDestroyed", ";2", 21, "Call Rejected", None),
    ("Dial", ";1", "NOANSWER"),
    ("ChannelDestroyed", ";1", 21, "Call Rejected", None),
]
# allow-answered.jsonl
ALLOW_ANSWERED = [
    *ORIGINATED,
    ("StasisEnd", ";2"),
    ("ChannelStateChange", ";2", "Up"),
    ("ChannelStateChange", ";1", "Up"),
    ("Dial", ";1", "ANSWER"),
    ("ChannelHangupRequest", ";2", 16, True),
    ("ChannelHangupRequest", ";1", 16, False),
    ("ChannelDestroyed", ";2", 16, "Normal Clearing", None),
    ("ChannelHangupRequest", ";1", 16, True),
    ("ChannelDestroyed", ";1", 16, "Normal Clearing", None),
]


def _failed_dial(cause: int, text: str) -> list[tuple[Any, ...]]:
    """allow-busy / allow-congestion (cause 16) and allow-carrier-rejected (cause 21)."""
    return [
        *ORIGINATED,
        ("StasisEnd", ";2"),
        ("ChannelHangupRequest", ";2", 16, True),
        ("ChannelHangupRequest", ";1", cause, False),
        ("ChannelDestroyed", ";2", cause, text, None),
        ("Dial", ";1", "NOANSWER"),
        ("ChannelDestroyed", ";1", cause, text, None),
    ]


def _role(name: str) -> str | None:
    if re.fullmatch(r"Local/\d+@outbound-[0-9a-f]{8};[12]", name):
        return name[-2:]
    if name.startswith("PJSIP/loopback-"):
        return "sip"
    if re.fullmatch(r"PJSIP/carrier-[0-9a-f]{8}", name):
        return "trunk"
    return None


def key_events(events: list[SentEvent], *, trunk: bool = False) -> list[tuple[Any, ...]]:
    """The recording's view of a call: key events of ;1/;2 (or the SIP channel)."""
    out: list[tuple[Any, ...]] = []
    for sent in events:
        ev = sent.event
        kind = ev["type"]
        if kind not in KEY_TYPES:
            continue
        if kind == "ApplicationReplaced":
            out.append((kind,))
            continue
        role = _role((ev["peer"] if kind == "Dial" else ev["channel"])["name"])
        if role is None or (role == "trunk") != trunk:
            continue
        if kind == "Dial":
            out.append((kind, role, ev["dialstatus"]))
        elif kind == "ChannelHangupRequest":
            out.append((kind, role, ev.get("cause"), ev.get("soft", False)))
        elif kind == "ChannelDestroyed":
            out.append((kind, role, ev["cause"], ev["cause_txt"], ev.get("tech_cause")))
        elif kind == "StasisStart":
            dialplan = ev["channel"]["dialplan"]
            out.append((kind, role, tuple(ev["args"]), dialplan["app_name"], dialplan["app_data"]))
        elif kind == "ChannelStateChange":
            out.append((kind, role, ev["channel"]["state"]))
        else:
            out.append((kind, role))
    return out


class Lab:
    """Drives the fake like the recording harness: raw websockets and raw REST."""

    def __init__(self, fake: FakeAsterisk, session: aiohttp.ClientSession) -> None:
        self.fake = fake
        self.session = session
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

    async def open(self, label: str, app: str = "dialguard") -> None:
        self.sockets[label] = await self.session.ws_connect(
            f"{self.fake.base_url}/events?app={app}&subscribeAll=true", headers=AUTH
        )

    async def rest(self, method: str, path: str, **query: str) -> tuple[int, Any]:
        return await self.request(method, path, query)

    async def request(
        self, method: str, path: str, query: dict[str, str], *, auth: bool = True
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.fake.base_url + path, params=query, headers=AUTH if auth else None
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def originate(self, number: str = "15550100") -> dict[str, Any]:
        status, body = await self.rest(
            "POST",
            "/channels",
            endpoint=f"Local/{number}@outbound",
            extension=number,
            context="dialer-entry",
            priority="1",
            callerId='"Dialer" <4930123456>',
            timeout="30",
        )
        assert status == 200, body
        return dict(body)

    async def stasis_start(self, app: str = "dialguard") -> dict[str, Any]:
        sent = await self.fake.wait_for_event("StasisStart", app=app)
        return sent.event

    def events(self, app: str = "dialguard") -> list[SentEvent]:
        return self.fake.events(app=app)

    async def close(self) -> None:
        for ws in self.sockets.values():
            await ws.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(USER, PASSWORD) as server:
        yield server


@pytest.fixture
async def lab(fake: FakeAsterisk) -> AsyncIterator[Lab]:
    async with aiohttp.ClientSession() as session:
        recorder = Lab(fake, session)
        yield recorder
        await recorder.close()


async def _ended(fake: FakeAsterisk) -> None:
    await fake.wait_for(lambda: all(c.ended.is_set() for c in fake.calls))


# -- deny ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query"), [{"reason_code": "21"}, {"reason": "rejected"}])
async def test_deny_ends_both_halves_with_21_before_the_204(
    fake: FakeAsterisk, lab: Lab, query: dict[str, str]
) -> None:
    await lab.open("dialguard")
    originated = await lab.originate()
    start = await lab.stasis_start()
    stasis_id = start["channel"]["id"]
    assert stasis_id != originated["id"]  # the reply describes ;1, StasisStart is for ;2
    assert originated["name"].endswith(";1") and originated["dialplan"]["app_name"] == "AppDial2"
    assert await lab.request("DELETE", f"/channels/{stasis_id}", query) == (204, None)
    assert key_events(lab.events()) == DENY
    delete = next(r for r in fake.requests if r.method == "DELETE")
    destroyed = fake.events("ChannelDestroyed")
    assert all(e.seq < delete.seq for e in destroyed)  # the 204 comes after ChannelDestroyed
    assert destroyed[0].event["channel"]["dialplan"]["app_name"] == ""
    assert await lab.rest("GET", "/channels") == (200, [])
    assert fake.protocol_violations == []


async def test_sip_deny_reports_the_403_sent_to_the_caller(fake: FakeAsterisk, lab: Lab) -> None:
    await lab.open("dialguard")
    await fake.originate_outbound("15550100", "sipp", caller_name="sipp", via="sip")
    start = await lab.stasis_start()
    assert start["args"] == ["15550100", "sipp"]
    assert start["channel"]["name"].startswith("PJSIP/loopback-")
    await lab.rest("DELETE", f"/channels/{start['channel']['id']}", reason_code="21")
    assert key_events(lab.events()) == [
        ("ChannelCreated", "sip"),
        ("StasisStart", "sip", ("15550100", "sipp"), "Stasis", "dialguard,15550100,sipp"),
        ("ChannelHangupRequest", "sip", 32, True),
        ("StasisEnd", "sip"),
        ("ChannelHangupRequest", "sip", 16, True),
        ("ChannelDestroyed", "sip", 21, "Call Rejected", 403),
    ]


# -- allow --------------------------------------------------------------------------------------


async def test_allow_answered_ends_every_channel_with_16(fake: FakeAsterisk, lab: Lab) -> None:
    fake.set_outcome("15550100", Outcome.answered(0.05))
    await lab.open("dialguard")
    await lab.originate()
    start = await lab.stasis_start()
    assert await lab.rest("POST", f"/channels/{start['channel']['id']}/continue") == (204, None)
    await _ended(fake)
    assert key_events(lab.events()) == ALLOW_ANSWERED
    assert key_events(lab.events(), trunk=True) == [
        ("ChannelCreated", "trunk"),
        ("Dial", "trunk", ""),
        ("ChannelStateChange", "trunk", "Up"),
        ("Dial", "trunk", "ANSWER"),
        ("ChannelHangupRequest", "trunk", 16, False),
        ("ChannelDestroyed", "trunk", 16, "Normal Clearing", None),
    ]
    dialplan = [
        (e.event["dialplan_app"], e.event["dialplan_app_data"])
        for e in lab.events()
        if e.type == "ChannelDialplan" and e.channel_name and e.channel_name.endswith(";2")
    ]
    assert dialplan[:5] == [
        ("NoOp", "outbound 15550100 from 4930123456"),
        ("Stasis", "dialguard,15550100,4930123456"),
        ("NoOp", "STASISSTATUS=SUCCESS"),
        ("GotoIf", "0?failed"),
        ("Dial", "PJSIP/15550100@carrier,30"),
    ]


async def test_sip_allow_answered_ends_the_inbound_channel_with_16(
    fake: FakeAsterisk, lab: Lab
) -> None:
    await lab.open("dialguard")
    await fake.originate_outbound("15550100", "sipp", caller_name="sipp", via="sip")
    start = await lab.stasis_start()
    await lab.rest("POST", f"/channels/{start['channel']['id']}/continue", label="allowed")
    await _ended(fake)
    events = [e for e in key_events(lab.events()) if e[0] != "ChannelHangupRequest"]
    assert events == [
        ("ChannelCreated", "sip"),
        ("StasisStart", "sip", ("15550100", "sipp"), "Stasis", "dialguard,15550100,sipp"),
        ("StasisEnd", "sip"),
        ("ChannelStateChange", "sip", "Up"),
        ("ChannelDestroyed", "sip", 16, "Normal Clearing", None),
    ]


@pytest.mark.parametrize(
    ("outcome", "outbound_cause", "trunk_cause", "tech_cause", "dialstatus"),
    [
        # allow-busy: the plain Hangup() after Dial loses the busy cause (HANGUPCAUSE=0).
        pytest.param(Outcome.busy(), 16, 17, 486, "BUSY", id="busy"),
        # allow-congestion: the same quirk.
        pytest.param(Outcome.congestion(), 16, 34, 503, "CONGESTION", id="congestion"),
        # allow-carrier-rejected: cause 21 reaches every channel; the Dial event says NOANSWER.
        pytest.param(Outcome.rejected(), 21, 21, None, "NOANSWER", id="carrier-rejected"),
        pytest.param(Outcome.sip(403), 21, 21, 403, "NOANSWER", id="sip-403"),
        pytest.param(Outcome.sip(603), 21, 21, 603, "NOANSWER", id="sip-603"),
        pytest.param(Outcome.sip(607), 127, 127, 607, "NOANSWER", id="sip-607"),
        pytest.param(Outcome.sip(608), 127, 127, 608, "NOANSWER", id="sip-608"),
        pytest.param(Outcome.no_answer(0.05), 16, 19, None, "NOANSWER", id="no-answer"),
    ],
)
async def test_allowed_call_that_the_carrier_refuses(
    fake: FakeAsterisk,
    lab: Lab,
    outcome: Outcome,
    outbound_cause: int,
    trunk_cause: int,
    tech_cause: int | None,
    dialstatus: str,
) -> None:
    fake.set_outcome("15550100", outcome)
    await lab.open("dialguard")
    await lab.originate()
    start = await lab.stasis_start()
    await lab.rest("POST", f"/channels/{start['channel']['id']}/continue", label="allowed")
    await _ended(fake)
    text = {16: "Normal Clearing", 21: "Call Rejected", 127: "Interworking, unspecified"}
    assert key_events(lab.events()) == _failed_dial(outbound_cause, text[outbound_cause])
    trunk = key_events(lab.events(), trunk=True)
    assert trunk[-2] == ("Dial", "trunk", dialstatus)
    assert trunk[-1][:3] == ("ChannelDestroyed", "trunk", trunk_cause)
    assert trunk[-1][4] == tech_cause
    status = next(
        e for e in lab.events() if e.event.get("variable") == "DIALSTATUS" and e.event["value"]
    )
    assert status.event["value"] in ("BUSY", "CONGESTION", "CHANUNAVAIL", "NOANSWER")


async def test_keep_dial_cause_makes_the_outbound_halves_end_with_the_carrier_cause(
    lab: Lab,
) -> None:
    async with FakeAsterisk(USER, PASSWORD, keep_dial_cause=True) as fake:
        lab.fake = fake
        fake.set_outcome("15550101", Outcome.busy())
        await lab.open("dialguard")
        await lab.originate("15550101")
        start = await lab.stasis_start()
        await lab.rest("POST", f"/channels/{start['channel']['id']}/continue", label="allowed")
        await _ended(fake)
        causes = fake.calls[0].causes()
        await lab.close()
    assert sorted(causes.values()) == [17, 17, 17]


# -- the application is not there ---------------------------------------------------------------


async def test_app_not_connected_fails_closed_with_21(fake: FakeAsterisk, lab: Lab) -> None:
    assert await lab.rest("GET", "/applications") == (200, [])
    assert await lab.rest("GET", "/applications/dialguard") == (
        404,
        {"message": "Application not found"},
    )
    await lab.open("observer", app="dg-observer")
    await lab.originate()
    await _ended(fake)
    observed = key_events(lab.events("dg-observer"))
    assert [e for e in observed if e[0] != "Dial"][2:] == [
        ("ChannelHangupRequest", ";2", 16, True),
        ("ChannelHangupRequest", ";1", 21, False),
        ("ChannelDestroyed", ";2", 21, "Call Rejected", None),
        ("ChannelDestroyed", ";1", 21, "Call Rejected", None),
    ]
    assert not fake.events("StasisStart")
    steps = [
        e.event["dialplan_app_data"]
        for e in lab.events("dg-observer")
        if e.type == "ChannelDialplan" and e.channel_name and e.channel_name.endswith(";2")
    ]
    assert steps[2:] == ["STASISSTATUS=FAILED", "1?failed", "21"]


@pytest.mark.parametrize("abort", [True, False], ids=["drop", "close"])
async def test_socket_lost_mid_call_leaves_the_channel_parked_until_the_timeout(
    fake: FakeAsterisk, lab: Lab, abort: bool
) -> None:
    await lab.open("observer", app="dg-observer")
    await lab.open("dialguard")
    call = await fake.originate_outbound("15550100", originate_timeout=0.3)
    start = await lab.stasis_start()
    await fake.drop_websocket("dialguard", abort=abort)
    _, channels = await lab.rest("GET", "/channels")
    parked = [c for c in channels if c["id"] == start["channel"]["id"]]
    assert parked and parked[0]["dialplan"]["app_name"] == "Stasis"
    assert await lab.rest("GET", "/applications/dialguard") == (
        404,
        {"message": "Application not found"},
    )
    await asyncio.wait_for(call.ended.wait(), 2)
    assert key_events(lab.events("dg-observer"))[-4:] == [
        ("ChannelHangupRequest", ";2", 19, False),
        ("ChannelDestroyed", ";1", 19, "User alerting, no answer", None),
        ("ChannelHangupRequest", ";2", 16, True),
        ("ChannelDestroyed", ";2", 19, "User alerting, no answer", None),
    ]
    assert not fake.events("StasisEnd")  # nobody holds the app, so nobody is told


async def test_reconnect_does_not_replay_stasis_start_but_continue_works(
    fake: FakeAsterisk, lab: Lab
) -> None:
    await lab.open("dialguard")
    await lab.originate()
    start = await lab.stasis_start()
    stasis_id = start["channel"]["id"]
    await fake.drop_websocket("dialguard", abort=True)
    await lab.open("dialguard-again")
    status, app = await lab.rest("GET", "/applications/dialguard")
    assert status == 200 and app["channel_ids"] == ["__AST_CHANNEL_ALL_TOPIC"]
    status, channels = await lab.rest("GET", "/channels")
    assert [c["dialplan"]["app_data"] for c in channels if c["id"] == stasis_id] == [
        "dialguard,15550100,4930123456"
    ]
    assert await lab.rest("POST", f"/channels/{stasis_id}/continue") == (204, None)
    await _ended(fake)
    assert len(fake.events("StasisStart")) == 1
    assert [e.seq for e in fake.events("StasisEnd")]  # StasisEnd reaches the new socket
    assert key_events(lab.events())[-7:] == ALLOW_ANSWERED[-7:]


# -- concurrency and replacement ----------------------------------------------------------------


async def test_double_continue_second_and_third_are_409(fake: FakeAsterisk, lab: Lab) -> None:
    await lab.open("dialguard")
    await lab.originate()
    start = await lab.stasis_start()
    path = f"/channels/{start['channel']['id']}/continue"
    first, second = await asyncio.gather(lab.rest("POST", path), lab.rest("POST", path))
    not_in_stasis = (409, {"message": "Channel not in Stasis application"})
    assert sorted([first, second], key=lambda r: r[0]) == [(204, None), not_in_stasis]
    assert await lab.rest("POST", path) == not_in_stasis
    await _ended(fake)
    assert [e for e in key_events(lab.events()) if e[0] == "StasisEnd"] == [("StasisEnd", ";2")]


async def test_second_socket_replaces_the_first_which_hears_nothing_more(
    fake: FakeAsterisk, lab: Lab
) -> None:
    await lab.open("first")
    await fake.wait_for(lambda: fake.app_connected("dialguard"))
    await lab.open("second")
    replaced = await lab.sockets["first"].receive_json(timeout=1)
    assert replaced["type"] == "ApplicationReplaced"
    assert replaced["application"] == "dialguard"
    await lab.originate()
    start = await lab.stasis_start()
    await lab.rest("POST", f"/channels/{start['channel']['id']}/continue")
    await _ended(fake)
    assert not lab.sockets["first"].closed  # Asterisk does not close it
    with pytest.raises(asyncio.TimeoutError):
        await lab.sockets["first"].receive(timeout=0.05)
    assert key_events(lab.events())[1:] == ALLOW_ANSWERED
    assert [e.type for e in lab.events()].count("ApplicationReplaced") == 1


# -- invalid requests ---------------------------------------------------------------------------


async def test_invalid_requests_answer_as_asterisk_does(fake: FakeAsterisk, lab: Lab) -> None:
    not_found = (404, {"message": "Channel not found"})
    assert await lab.rest("POST", "/channels/does-not-exist-123/continue") == not_found
    assert await lab.rest("DELETE", "/channels/does-not-exist-123", reason_code="21") == not_found
    assert await lab.rest("DELETE", "/channels/does-not-exist-123", reason="rejected") == not_found
    assert await lab.rest("GET", "/channels/does-not-exist-123") == not_found
    assert await lab.rest("POST", "/channels", extension="15550100", context="dialer-entry") == (
        400,
        {"message": "Endpoint must be specified"},
    )
    assert await lab.rest(
        "POST", "/channels", endpoint="Bogus/123", extension="1", context="dialer-entry"
    ) == (500, {"error": "Allocation failed"})
    auth_required = (401, {"message": "Authentication required"})
    assert await lab.request("GET", "/asterisk/info", {}, auth=False) == auth_required
    async with lab.session.get(
        f"{fake.base_url}/asterisk/info", headers={"Authorization": "Basic d3Jvbmc6d3Jvbmc="}
    ) as resp:
        assert (resp.status, await resp.json()) == auth_required
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await lab.session.ws_connect(f"{fake.base_url}/events?app=dialguard")
    assert refused.value.status == 401

    await lab.open("dialguard")
    originated = await lab.originate()
    start = await lab.stasis_start()
    stasis_id = start["channel"]["id"]
    assert (await lab.rest("GET", f"/channels/{stasis_id}"))[0] == 200
    assert await lab.rest("DELETE", f"/channels/{stasis_id}", reason="bogus") == (
        400,
        {"message": "Invalid reason for hangup reason provided"},
    )
    assert await lab.rest(
        "DELETE", f"/channels/{stasis_id}", reason="rejected", reason_code="21"
    ) == (400, {"message": "The reason and reason_code can't both be specified"})
    assert await lab.rest("POST", f"/channels/{originated['id']}/continue") == (
        409,
        {"message": "Channel not in Stasis application"},
    )
    assert await lab.rest(
        "POST", f"/channels/{stasis_id}/continue", context="nonexistent-ctx", extension="999"
    ) == (204, None)
    await _ended(fake)
    assert key_events(lab.events())[4:] == [
        ("StasisEnd", ";2"),
        ("ChannelHangupRequest", ";2", 16, True),
        ("ChannelHangupRequest", ";1", 0, False),
        ("Dial", ";1", "NOANSWER"),
        ("ChannelDestroyed", ";1", 0, "Unknown", None),
        ("ChannelDestroyed", ";2", 0, "Unknown", None),
    ]
    last = lab.events("dialguard")[-1].event["channel"]["dialplan"]
    assert (last["context"], last["exten"], last["priority"]) == ("nonexistent-ctx", "999", 1)
    assert await lab.rest("POST", f"/channels/{stasis_id}/continue") == not_found
    # What the definitions do not allow is recorded: the missing endpoint and the bogus reason.
    assert [v.message for v in fake.protocol_violations] == [
        "missing required parameter 'endpoint'",
        "'reason' value 'bogus' is not one of normal, busy, congestion, no_answer, timeout, "
        "rejected, unallocated, normal_unspecified, number_incomplete, codec_mismatch, "
        "interworking, failure, answered_elsewhere",
    ]


async def test_requests_outside_the_definitions_are_refused_and_recorded(
    fake: FakeAsterisk, lab: Lab
) -> None:
    assert (await lab.rest("GET", "/channels", api_key="u:p"))[0] == 400
    assert (await lab.rest("POST", "/channels/1.2/continue", label="x", when="now"))[0] == 400
    assert (await lab.rest("POST", "/channels/1.2/continue", priority="first"))[0] == 400
    assert (await lab.rest("PUT", "/channels"))[0] == 405
    assert (await lab.rest("GET", "/no/such/resource"))[0] == 404
    assert len(fake.protocol_violations) == 5


# -- beyond the recordings ----------------------------------------------------------------------


async def test_a_call_straight_to_the_trunk_never_enters_stasis(
    fake: FakeAsterisk, lab: Lab
) -> None:
    await lab.open("dialguard")
    call = await fake.originate_direct_to_trunk("15550199", outcome=Outcome.answered(0.02))
    await asyncio.wait_for(call.ended.wait(), 2)
    assert not fake.events("StasisStart")
    assert key_events(lab.events(), trunk=True)[0] == ("ChannelCreated", "trunk")
    assert call.causes() == {call.trunk.name: 16} if call.trunk else False


async def test_fast_mode_offers_calls_with_only_the_key_events() -> None:
    async with (
        FakeAsterisk(USER, PASSWORD, verbose_events=False) as fake,
        aiohttp.ClientSession() as session,
    ):
        lab = Lab(fake, session)
        await lab.open("dialguard")
        await fake.wait_for(lambda: fake.app_connected("dialguard"))
        calls = await fake.offer_calls(20, rate=1000)
        await fake.wait_for(lambda: len(fake.events("StasisStart")) == 20)
        assert len(calls) == 20
        assert {e.type for e in fake.events_sent} <= KEY_TYPES
        await lab.close()
