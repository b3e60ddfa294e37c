"""AriClient and EventListener against the fake Asterisk, over real HTTP and websockets."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest

from dialguard.ari import (
    ApplicationReplaced,
    AriAuthError,
    AriBadRequest,
    AriClient,
    AriNotFound,
    AriUnavailable,
    ChannelDestroyed,
    ChannelGone,
    Dial,
    DialplanTargetNotFound,
    Event,
    EventListener,
    NotInStasis,
    OtherEvent,
    StasisStart,
    WrongState,
)
from dialguard.testing import FakeAsterisk, Outcome

USER, PASSWORD, APP = "dialguard", "s3cret-pw", "dialguard"
E = TypeVar("E")


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(USER, PASSWORD) as server:
        yield server


@pytest.fixture
async def client(fake: FakeAsterisk) -> AsyncIterator[AriClient]:
    async with AriClient(fake.base_url, USER, PASSWORD, APP, timeout=1.0) as ari:
        yield ari


class Recorder:
    """Collects delivered events; the listener's on_event must be synchronous."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
async def listener(fake: FakeAsterisk) -> AsyncIterator[tuple[EventListener, Recorder]]:
    recorder = Recorder()
    events = EventListener(
        fake.base_url,
        USER,
        PASSWORD,
        APP,
        on_event=recorder,
        subscribe_all=True,  # as the lab recordings did: every channel's events
        backoff=lambda attempt: 0.01,
    )
    await events.start()
    async with asyncio.timeout(2):
        await events.wait_connected()
    yield events, recorder
    await events.stop()


async def _parked_call(
    fake: FakeAsterisk, recorder: Recorder, number: str = "15550100"
) -> StasisStart:
    call = await fake.originate_outbound(number)
    assert call.stasis is not None
    stasis_id = call.stasis.id
    found = await fake.wait_for(
        lambda: [e for e in recorder.of(StasisStart) if e.channel.id == stasis_id]
    )
    start = found[0]
    assert isinstance(start, StasisStart)
    return start


# -- error mapping ----------------------------------------------------------------------------


async def test_continue_on_an_unknown_channel_is_channel_gone(client: AriClient) -> None:
    with pytest.raises(ChannelGone) as raised:
        await client.continue_in_dialplan("does-not-exist-123")
    assert raised.value.message == "Channel not found"
    assert raised.value.channel_id == "does-not-exist-123"


async def test_hangup_of_an_unknown_channel_is_channel_gone(client: AriClient) -> None:
    with pytest.raises(ChannelGone):
        await client.hangup("does-not-exist-123", reason_code=21)


async def test_continue_on_the_originated_half_is_not_in_stasis(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    await _parked_call(fake, listener[1])
    originated = fake.calls[0].originated
    assert originated is not None
    with pytest.raises(NotInStasis) as raised:
        await client.continue_in_dialplan(originated.id)
    assert raised.value.message == "Channel not in Stasis application"


async def test_second_continue_is_not_in_stasis(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    start = await _parked_call(fake, listener[1])
    first, second = await asyncio.gather(
        client.continue_in_dialplan(start.channel.id, label="allowed"),
        client.continue_in_dialplan(start.channel.id, label="allowed"),
        return_exceptions=True,
    )
    assert first is None
    assert isinstance(second, NotInStasis)


async def test_unknown_label_is_a_configuration_error_not_a_vanished_call(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    start = await _parked_call(fake, listener[1])
    with pytest.raises(DialplanTargetNotFound) as raised:
        await client.continue_in_dialplan(start.channel.id, label="no-such-label")
    assert not isinstance(raised.value, ChannelGone)
    assert raised.value.message == "Requested label can not be found"


async def test_continue_on_a_channel_that_is_down_is_wrong_state(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    created = await client.request(
        "POST", "/channels/create", {"endpoint": "PJSIP/15550100@carrier", "app": APP}
    )
    with pytest.raises(WrongState) as raised:
        await client.continue_in_dialplan(created["id"])
    assert raised.value.message == "Channel in invalid state"


async def test_hangup_with_both_reason_and_code_is_refused_before_sending(
    fake: FakeAsterisk, client: AriClient
) -> None:
    with pytest.raises(ValueError):
        await client.hangup("1.2", reason_code=21, reason="rejected")
    assert fake.requests == []


async def test_bad_request_carries_asterisks_message(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    start = await _parked_call(fake, listener[1])
    with pytest.raises(AriBadRequest) as raised:
        await client.request(
            "DELETE", f"/channels/{start.channel.id}", {"reason": "rejected", "reason_code": 21}
        )
    assert raised.value.message == "The reason and reason_code can't both be specified"


async def test_wrong_password_is_an_auth_error(fake: FakeAsterisk) -> None:
    async with AriClient(fake.base_url, USER, "wrong", APP) as ari:
        with pytest.raises(AriAuthError) as raised:
            await ari.list_channels()
    assert raised.value.message == "Authentication required"


async def test_missing_application_is_not_found(client: AriClient) -> None:
    with pytest.raises(AriNotFound) as raised:
        await client.get_application()
    assert not isinstance(raised.value, ChannelGone)
    assert raised.value.message == "Application not found"


async def test_allocation_failure_is_unavailable_with_the_error_text(client: AriClient) -> None:
    with pytest.raises(AriUnavailable) as raised:
        await client.originate("Bogus/123", extension="1", context="dialer-entry")
    assert raised.value.message == "Allocation failed"


async def test_refused_connection_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AriClient(f"http://127.0.0.1:{port}/ari", USER, PASSWORD, APP) as ari:
        with pytest.raises(AriUnavailable):
            await ari.list_channels()


async def test_slow_answer_is_unavailable_after_the_timeout(fake: FakeAsterisk) -> None:
    fake.set_rest_delay(0.5)
    async with AriClient(fake.base_url, USER, PASSWORD, APP, timeout=0.1) as ari:
        with pytest.raises(AriUnavailable):
            await ari.list_channels()


# -- what goes over the wire ------------------------------------------------------------------


async def test_credentials_never_appear_in_urls_or_logs(
    fake: FakeAsterisk, client: AriClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.list_channels()
    with pytest.raises(ChannelGone):
        await client.continue_in_dialplan("gone")
    for request in fake.requests:
        assert PASSWORD not in request.path
        assert all(PASSWORD not in v for v in request.query.values())
        assert "api_key" not in request.query
    assert PASSWORD not in caplog.text
    with pytest.raises(ValueError):
        AriClient(f"http://{USER}:{PASSWORD}@127.0.0.1:8088/ari", USER, PASSWORD, APP)


async def test_typed_calls_send_only_what_the_definitions_allow(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    start = await _parked_call(fake, listener[1])
    assert (await client.get_application())["name"] == APP
    assert (await client.subscribe("endpoint:PJSIP/carrier"))["name"] == APP
    await client.set_variable(start.channel.id, "DIALGUARD_DECISION", "allow")
    assert fake.channels and start.channel.id in [c["id"] for c in await client.list_channels()]
    assert (await client.get_channel(start.channel.id))["dialplan"]["app_name"] == "Stasis"
    await client.continue_in_dialplan(start.channel.id, label="allowed")
    made = await client.originate(
        "Local/15550111@outbound",
        extension="15550111",
        context="dialer-entry",
        priority=1,
        caller_id='"Dialer" <4930123456>',
        dial_timeout=30,
        variables={"_CAMPAIGN": "spring"},
    )
    assert made["name"].endswith(";1")
    assert fake.protocol_violations == []
    assert [r.status for r in fake.requests if r.path != "/events"] == [
        200,
        200,
        204,
        200,
        200,
        204,
        200,
    ]


# -- events listener --------------------------------------------------------------------------


async def test_listener_delivers_typed_events_in_order(
    fake: FakeAsterisk, client: AriClient, listener: tuple[EventListener, Recorder]
) -> None:
    _, recorder = listener
    start = await _parked_call(fake, recorder)
    await client.hangup(start.channel.id, reason_code=21)
    await fake.wait_for(lambda: recorder.of(ChannelDestroyed))
    assert start.args == ("15550100", "4930123456")
    destroyed = next(e for e in recorder.of(ChannelDestroyed) if e.channel.id == start.channel.id)
    assert isinstance(destroyed, ChannelDestroyed)
    assert destroyed.cause == 21
    assert recorder.events.index(start) < recorder.events.index(destroyed)


async def test_listener_without_subscribe_all_sees_its_calls_and_subscribed_trunks(
    fake: FakeAsterisk, client: AriClient
) -> None:
    recorder = Recorder()

    async def subscribe_trunk() -> None:
        await client.subscribe("endpoint:PJSIP/carrier")

    events = EventListener(
        fake.base_url, USER, PASSWORD, APP, on_event=recorder, on_connect=subscribe_trunk
    )
    await events.start()
    try:
        await fake.wait_for(lambda: fake.app_connected(APP) and fake.requests[-1].status == 200)
        fake.set_outcome("15550100", Outcome.sip(607))
        start = await _parked_call(fake, recorder)
        await client.continue_in_dialplan(start.channel.id, label="allowed")
        await fake.wait_for(lambda: recorder.of(ChannelDestroyed))
    finally:
        await events.stop()
    names = {
        e.channel.name
        for e in recorder.events
        if not isinstance(e, OtherEvent | ApplicationReplaced | Dial)
    }
    assert not any(name.endswith(";1") for name in names)  # the originated half is not ours
    trunk_end = recorder.of(ChannelDestroyed)[0]
    assert isinstance(trunk_end, ChannelDestroyed)
    assert trunk_end.channel.name.startswith("PJSIP/carrier-")
    assert (trunk_end.cause, trunk_end.tech_cause) == (127, 607)
    assert fake.requests[0].query["subscribeAll"] == "false"


async def test_malformed_events_are_skipped_with_a_warning(
    fake: FakeAsterisk,
    listener: tuple[EventListener, Recorder],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, recorder = listener
    caplog.set_level(logging.WARNING, logger="dialguard.ari.listener")
    await fake.push_event(APP, "{not json")
    await fake.push_event(APP, {"type": "ChannelDestroyed", "channel": {"id": "1.2"}})
    await fake.push_event(APP, {"type": "DeviceStateChanged", "device_state": {}})
    await fake.wait_for(lambda: recorder.events)
    assert [type(e) for e in recorder.events] == [OtherEvent]
    assert "not JSON" in caplog.text
    assert "malformed ChannelDestroyed event (channel 1.2)" in caplog.text


async def test_every_message_is_counted_by_type_delivered_or_dropped(fake: FakeAsterisk) -> None:
    received: list[str] = []
    recorder = Recorder()
    events = EventListener(
        fake.base_url,
        USER,
        PASSWORD,
        APP,
        on_event=recorder,
        types=frozenset({"ChannelDestroyed"}),
        on_received=received.append,
    )
    await events.start()
    try:
        async with asyncio.timeout(2):
            await events.wait_connected()
        await fake.push_event(APP, {"type": "ChannelVarset", "variable": "X", "value": "1"})
        await fake.push_event(APP, "{not json")
        await fake.push_event(APP, '["a", "list"]')
        # The type key after a nested object: not read off the text, so decoded to be sure.
        await fake.push_event(APP, '{"channel": {"id": "1.2", "type": "x"}, "type": "Dial"}')
        await fake.push_event(APP, {"type": "ChannelDestroyed", "channel": {"id": "1.2"}})
        await fake.wait_for(lambda: len(received) >= 5)
    finally:
        await events.stop()
    assert received == ["ChannelVarset", "untyped", "untyped", "Dial", "ChannelDestroyed"]
    assert recorder.events == []  # the one of an allowed type is malformed: skipped, but counted


async def test_listener_reconnects_after_a_drop_with_backoff(fake: FakeAsterisk) -> None:
    attempts: list[int] = []
    connects = 0
    disconnects = 0

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.01

    async def on_connect() -> None:
        nonlocal connects
        connects += 1

    def on_disconnect() -> None:
        nonlocal disconnects
        disconnects += 1

    events = EventListener(
        fake.base_url,
        USER,
        PASSWORD,
        APP,
        on_event=Recorder(),
        on_connect=on_connect,
        on_disconnect=on_disconnect,
        backoff=backoff,
    )
    await events.start()
    try:
        await fake.wait_for(lambda: connects == 1)
        await fake.drop_websocket(APP, abort=True)
        await fake.wait_for(lambda: connects == 2 and fake.app_connected(APP))
        await fake.drop_websocket(APP, abort=False)
        await fake.wait_for(lambda: connects == 3 and events.connected)
    finally:
        await events.stop()
    assert disconnects == 3  # two drops and the stop
    assert attempts == [0, 0]  # each successful connect resets the backoff
    assert not events.connected


async def test_listener_keeps_retrying_with_growing_backoff_while_refused(
    fake: FakeAsterisk, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 0.01

    events = EventListener(fake.base_url, USER, "wrong", APP, on_event=Recorder(), backoff=backoff)
    await events.start()
    try:
        await fake.wait_for(lambda: len(attempts) >= 3)
    finally:
        await events.stop()
    assert attempts[:3] == [0, 1, 2]
    assert not events.connected
    assert "authentication refused" in caplog.text
    assert "wrong" not in caplog.text


async def test_events_arriving_during_on_connect_are_delivered_after_it(
    fake: FakeAsterisk,
) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def on_connect() -> None:
        order.append("on_connect started")
        await release.wait()
        order.append("on_connect done")

    def on_event(event: Event) -> None:
        assert isinstance(event, OtherEvent)
        order.append(f"event {event.raw['n']}")

    events = EventListener(
        fake.base_url, USER, PASSWORD, APP, on_event=on_event, on_connect=on_connect
    )
    await events.start()
    try:
        await fake.wait_for(lambda: order == ["on_connect started"] and fake.app_connected(APP))
        for n in range(3):
            await fake.push_event(APP, {"type": "Custom", "n": n})
        await asyncio.sleep(0.05)  # give the reader time to (wrongly) deliver early
        assert order == ["on_connect started"]
        release.set()
        await fake.wait_for(lambda: len(order) == 5)
    finally:
        await events.stop()
    assert order == ["on_connect started", "on_connect done", "event 0", "event 1", "event 2"]


async def test_a_failing_on_connect_does_not_stop_delivery(fake: FakeAsterisk) -> None:
    recorder = Recorder()

    async def on_connect() -> None:
        raise RuntimeError("reconciliation failed")

    events = EventListener(
        fake.base_url, USER, PASSWORD, APP, on_event=recorder, on_connect=on_connect
    )
    await events.start()
    try:
        await fake.wait_for(lambda: fake.app_connected(APP))
        await fake.push_event(APP, {"type": "Custom"})
        await fake.wait_for(lambda: recorder.events)
    finally:
        await events.stop()


async def test_a_second_socket_replaces_the_first(fake: FakeAsterisk) -> None:
    first, second = Recorder(), Recorder()
    one = EventListener(fake.base_url, USER, PASSWORD, APP, on_event=first)
    two = EventListener(fake.base_url, USER, PASSWORD, APP, on_event=second)
    await one.start()
    try:
        await fake.wait_for(lambda: fake.app_connected(APP))
        await two.start()
        await fake.wait_for(lambda: first.of(ApplicationReplaced))
        await fake.originate_outbound("15550100")
        await fake.wait_for(lambda: second.of(StasisStart))
    finally:
        await two.stop()
        await one.stop()
    assert [type(e) for e in first.events] == [ApplicationReplaced]
    assert one.connections == 1  # Asterisk does not close the replaced socket


async def test_stop_cancels_the_reader_and_closes_the_socket(fake: FakeAsterisk) -> None:
    events = EventListener(fake.base_url, USER, PASSWORD, APP, on_event=Recorder())
    await events.start()
    await fake.wait_for(lambda: fake.app_connected(APP))
    await events.stop()
    await fake.wait_for(lambda: not fake.app_connected(APP))
    assert not events.connected
    await events.stop()  # idempotent
