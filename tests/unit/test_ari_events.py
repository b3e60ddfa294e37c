"""Parsing ARI events: shapes taken from the Asterisk 22.10.1 recordings."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from dialguard.ari.events import (
    ApplicationReplaced,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangupRequest,
    ChannelStateChange,
    Dial,
    MalformedEvent,
    OtherEvent,
    StasisEnd,
    StasisStart,
    parse_ari_time,
    parse_event,
)

CHANNEL: dict[str, Any] = {
    "id": "1795877302.19",
    "name": "Local/15550100@outbound-00000009;2",
    "state": "Ring",
    "protocol_id": "",
    "caller": {"name": "Dialer", "number": "4930123456"},
    "connected": {"name": "Dialer", "number": "4930123456"},
    "accountcode": "",
    "dialplan": {
        "context": "outbound",
        "exten": "15550100",
        "priority": 2,
        "app_name": "Stasis",
        "app_data": "dialguard,15550100,4930123456",
    },
    "creationtime": "2026-11-28T14:48:22.573+0000",
    "language": "en",
}

STASIS_START: dict[str, Any] = {
    "type": "StasisStart",
    "timestamp": "2026-11-28T14:48:22.574+0000",
    "args": ["15550100", "4930123456"],
    "channel": CHANNEL,
    "asterisk_id": "02:fc:00:00:00:01",
    "application": "dialguard",
}


def _event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "timestamp": "2026-11-28T14:48:22.575+0000",
        "channel": copy.deepcopy(CHANNEL),
        "asterisk_id": "02:fc:00:00:00:01",
        "application": "dialguard",
        **fields,
    }


def test_stasis_start_carries_args_and_the_parked_dialplan_location() -> None:
    event = parse_event(STASIS_START)
    assert isinstance(event, StasisStart)
    assert event.args == ("15550100", "4930123456")
    assert event.application == "dialguard"
    ch = event.channel
    assert (ch.id, ch.name, ch.state) == ("1795877302.19", CHANNEL["name"], "Ring")
    assert (ch.caller_number, ch.caller_name, ch.connected_number) == (
        "4930123456",
        "Dialer",
        "4930123456",
    )
    assert (ch.context, ch.exten, ch.priority) == ("outbound", "15550100", 2)
    assert (ch.app_name, ch.app_data) == ("Stasis", "dialguard,15550100,4930123456")
    assert ch.channelvars == {}


def test_timestamps_are_aware_and_keep_milliseconds() -> None:
    event = parse_event(STASIS_START)
    assert isinstance(event, StasisStart)
    assert event.timestamp == datetime(2026, 11, 28, 14, 48, 22, 574000, tzinfo=UTC)
    assert event.channel.creationtime.tzinfo is not None
    assert parse_ari_time("2026-11-28T14:48:22+00:00").tzinfo is not None


def test_events_are_frozen_and_hashable() -> None:
    event = parse_event(STASIS_START)
    assert hash(event) == hash(parse_event(copy.deepcopy(STASIS_START)))
    with pytest.raises(AttributeError):
        event.args = ()  # type: ignore[misc, union-attr]


def test_channelvars_are_read_when_ari_conf_lists_them() -> None:
    raw = copy.deepcopy(STASIS_START)
    raw["channel"]["channelvars"] = {"CAMPAIGN": "spring"}
    event = parse_event(raw)
    assert isinstance(event, StasisStart)
    assert event.channel.channelvars == {"CAMPAIGN": "spring"}


def test_channel_destroyed_keeps_the_sip_code_as_tech_cause() -> None:
    event = parse_event(
        _event("ChannelDestroyed", cause=21, cause_txt="Call Rejected", tech_cause=403)
    )
    assert isinstance(event, ChannelDestroyed)
    assert (event.cause, event.cause_txt, event.tech_cause) == (21, "Call Rejected", 403)


def test_channel_destroyed_without_tech_cause_has_none() -> None:
    event = parse_event(_event("ChannelDestroyed", cause=16, cause_txt="Normal Clearing"))
    assert isinstance(event, ChannelDestroyed)
    assert event.tech_cause is None


def test_soft_hangup_request_is_flagged_so_its_bitmask_is_not_read_as_q850() -> None:
    soft = parse_event(_event("ChannelHangupRequest", cause=32, soft=True))
    hard = parse_event(_event("ChannelHangupRequest", cause=21))
    assert isinstance(soft, ChannelHangupRequest) and isinstance(hard, ChannelHangupRequest)
    assert (soft.cause, soft.soft) == (32, True)
    assert (hard.cause, hard.soft) == (21, False)


def test_dial_from_an_originate_has_no_caller() -> None:
    raw = {
        "type": "Dial",
        "timestamp": "2026-11-28T14:48:22.575+0000",
        "dialstatus": "",
        "forward": "",
        "dialstring": "15550100@outbound",
        "peer": CHANNEL,
        "application": "dialguard",
    }
    event = parse_event(raw)
    assert isinstance(event, Dial)
    assert event.caller is None
    assert event.peer.id == CHANNEL["id"]
    assert event.dialstring == "15550100@outbound"


def test_dial_from_the_dialplan_names_the_caller() -> None:
    raw = {
        "type": "Dial",
        "timestamp": "2026-11-28T14:48:13.537+0000",
        "dialstatus": "BUSY",
        "caller": CHANNEL,
        "peer": {**CHANNEL, "id": "1795877293.8", "name": "PJSIP/carrier-00000004"},
        "application": "dialguard",
    }
    event = parse_event(raw)
    assert isinstance(event, Dial)
    assert event.caller is not None and event.caller.id == CHANNEL["id"]
    assert (event.peer.name, event.dialstatus, event.dialstring) == (
        "PJSIP/carrier-00000004",
        "BUSY",
        "",
    )


def test_application_replaced_has_no_channel() -> None:
    event = parse_event(
        {
            "type": "ApplicationReplaced",
            "timestamp": "2026-11-28T14:49:28.671+0000",
            "application": "dialguard",
            "asterisk_id": "02:fc:00:00:00:01",
        }
    )
    assert isinstance(event, ApplicationReplaced)
    assert event.application == "dialguard"


@pytest.mark.parametrize("event_type", ["StasisEnd", "ChannelStateChange", "ChannelCreated"])
def test_channel_only_events_parse(event_type: str) -> None:
    event = parse_event(_event(event_type))
    assert type(event).__name__ == event_type
    assert isinstance(event, StasisEnd | ChannelStateChange | ChannelCreated)
    assert event.channel.id == CHANNEL["id"]


def test_unknown_types_are_kept_raw() -> None:
    raw = {"type": "DeviceStateChanged", "device_state": {"name": "x", "state": "INUSE"}}
    event = parse_event(raw)
    assert isinstance(event, OtherEvent)
    assert event.type == "DeviceStateChanged"
    assert event.raw["device_state"]["state"] == "INUSE"


def _without(raw: dict[str, Any], *path: str) -> dict[str, Any]:
    broken = copy.deepcopy(raw)
    target = broken
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return broken


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([], id="not-an-object"),
        pytest.param({"timestamp": "2026-11-28T14:48:22.574+0000"}, id="no-type"),
        pytest.param(_without(STASIS_START, "channel"), id="no-channel"),
        pytest.param(_without(STASIS_START, "args"), id="no-args"),
        pytest.param(_without(STASIS_START, "channel", "dialplan"), id="no-dialplan"),
        pytest.param(_without(STASIS_START, "channel", "caller", "number"), id="no-caller"),
        pytest.param({**STASIS_START, "args": "15550100"}, id="args-not-a-list"),
        pytest.param({**STASIS_START, "timestamp": "yesterday"}, id="bad-timestamp"),
        pytest.param(_event("ChannelDestroyed", cause="21", cause_txt="x"), id="cause-string"),
        pytest.param(_event("ChannelDestroyed", cause=True, cause_txt="x"), id="cause-bool"),
        pytest.param(_event("ChannelDestroyed", cause_txt="x"), id="no-cause"),
        pytest.param(_event("ChannelHangupRequest", cause=32, soft="yes"), id="soft-string"),
        pytest.param(
            _event("StasisStart", args=[], channel={**CHANNEL, "dialplan": {"priority": "2"}}),
            id="priority-not-an-integer",
        ),
    ],
)
def test_malformed_events_raise_a_named_error(raw: Any) -> None:
    with pytest.raises(MalformedEvent):
        parse_event(raw)


@pytest.mark.parametrize(
    ("channel", "named"),
    [
        pytest.param({**CHANNEL, "id": 19}, "channel.id", id="id-not-a-string"),
        pytest.param({**CHANNEL, "creationtime": "soon"}, "channel.creationtime", id="bad-time"),
        pytest.param(
            {**CHANNEL, "dialplan": {**CHANNEL["dialplan"], "priority": True}},
            "channel.dialplan.priority",
            id="priority-bool",
        ),
        pytest.param(
            {**CHANNEL, "channelvars": {"CAMPAIGN": 1}}, "channelvars", id="channelvar-not-a-string"
        ),
    ],
)
def test_a_malformed_snapshot_is_named_in_the_error(channel: Any, named: str) -> None:
    with pytest.raises(MalformedEvent, match=named):
        parse_event({**STASIS_START, "channel": channel})
