"""Typed ARI events: the few dialguard reads, parsed once at the boundary.

`parse_event` turns the raw JSON of one websocket message into a frozen dataclass. Event types
dialguard does not use become `OtherEvent`; an event of a known type that lacks a field the ARI
definitions mark as required, or carries the wrong JSON type, raises `MalformedEvent` so the
listener can log it and go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

from dialguard.ari.errors import MalformedEvent

__all__ = [
    "ApplicationReplaced",
    "Channel",
    "ChannelCreated",
    "ChannelDestroyed",
    "ChannelHangupRequest",
    "ChannelStateChange",
    "Dial",
    "Event",
    "MalformedEvent",
    "OtherEvent",
    "StasisEnd",
    "StasisStart",
    "parse_ari_time",
    "parse_event",
]

# Asterisk writes "2026-11-28T14:48:08.106+0000": milliseconds and an offset without a colon.


def parse_ari_time(value: str) -> datetime:
    """Parse an ARI timestamp into an aware datetime; ValueError when it is not one.

    ``fromisoformat`` reads ARI's ``2026-11-28T14:48:08.106+0000`` directly and is some thirty
    times faster than ``strptime``: every event carries one or two of these.
    """
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without offset: {value!r}")
    return parsed


_ONLY_STR = {str}


@dataclass(frozen=True, slots=True, kw_only=True)
class Channel:
    """A channel snapshot as ARI sends it (the fields dialguard uses).

    `app_name`/`app_data` are the dialplan application the channel is running: "Stasis" and
    "dialguard,<args>" while it waits for us, "" once it is destroyed.
    """

    id: str
    name: str
    state: str
    caller_number: str
    caller_name: str
    connected_number: str
    connected_name: str
    context: str
    exten: str
    priority: int
    app_name: str
    app_data: str
    creationtime: datetime
    channelvars: Mapping[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def from_json(cls, raw: Any) -> Channel:
        """Build from ARI's Channel model; MalformedEvent when a required field is missing.

        Every event carries one or two snapshots, so the well-formed case is read directly;
        anything unexpected takes the checked path, which names what is wrong.
        """
        try:
            caller = raw["caller"]
            connected = raw["connected"]
            dialplan = raw["dialplan"]
            texts = (
                raw["id"],
                raw["name"],
                raw["state"],
                caller["number"],
                caller["name"],
                connected["number"],
                connected["name"],
                dialplan["context"],
                dialplan["exten"],
                dialplan["app_name"],
                dialplan["app_data"],
                raw["creationtime"],
            )
            priority = dialplan["priority"]
            channelvars = raw.get("channelvars")
        except (KeyError, TypeError, AttributeError):
            return cls._checked(raw)
        if (
            type(priority) is not int
            or channelvars is not None
            or set(map(type, texts)) != _ONLY_STR
        ):
            return cls._checked(raw)
        try:
            creationtime = parse_ari_time(texts[11])
        except ValueError:
            return cls._checked(raw)
        return cls(
            id=texts[0],
            name=texts[1],
            state=texts[2],
            caller_number=texts[3],
            caller_name=texts[4],
            connected_number=texts[5],
            connected_name=texts[6],
            context=texts[7],
            exten=texts[8],
            priority=priority,
            app_name=texts[9],
            app_data=texts[10],
            creationtime=creationtime,
        )

    @classmethod
    def _checked(cls, raw: Any) -> Channel:
        obj = _obj(raw, "channel")
        caller = _obj(obj.get("caller"), "channel.caller")
        connected = _obj(obj.get("connected"), "channel.connected")
        dialplan = _obj(obj.get("dialplan"), "channel.dialplan")
        channelvars = obj.get("channelvars") or {}
        if not isinstance(channelvars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in channelvars.items()
        ):
            raise MalformedEvent("channel.channelvars is not an object of strings")
        return cls(
            id=_str(obj, "id", "channel"),
            name=_str(obj, "name", "channel"),
            state=_str(obj, "state", "channel"),
            caller_number=_str(caller, "number", "channel.caller"),
            caller_name=_str(caller, "name", "channel.caller"),
            connected_number=_str(connected, "number", "channel.connected"),
            connected_name=_str(connected, "name", "channel.connected"),
            context=_str(dialplan, "context", "channel.dialplan"),
            exten=_str(dialplan, "exten", "channel.dialplan"),
            priority=_int(dialplan, "priority", "channel.dialplan"),
            app_name=_str(dialplan, "app_name", "channel.dialplan"),
            app_data=_str(dialplan, "app_data", "channel.dialplan"),
            creationtime=_time(obj, "creationtime", "channel"),
            channelvars=dict(channelvars),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class StasisStart:
    """A channel entered our application and waits for a command. `args` are Stasis() args."""

    channel: Channel
    args: tuple[str, ...]
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StasisEnd:
    """The channel left our application (continued, hung up or moved)."""

    channel: Channel
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelCreated:
    channel: Channel
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelStateChange:
    """`channel.state` is the new state ("Ringing", "Up", ...)."""

    channel: Channel
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelDestroyed:
    """The end of a channel and the one reliable place to read why it ended.

    `cause` is the Q.850 cause and `cause_txt` Asterisk's text for it. `tech_cause` is the
    technology's own code (the SIP status for PJSIP, Asterisk 20.17+/22.7+), None when absent:
    SIP 607/608 only show here, their Q.850 cause is a bland 127.
    """

    channel: Channel
    cause: int
    cause_txt: str
    tech_cause: int | None
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelHangupRequest:
    """Someone asked the channel to hang up.

    With `soft=True`, `cause` is an AST_SOFTHANGUP_* bit mask, not a Q.850 cause (32 = explicit,
    e.g. from ARI DELETE; 16 = the dialplan ended after Hangup()). Only hard requests
    (`soft=False`) carry Q.850 codes. Read the real cause from ChannelDestroyed.
    """

    channel: Channel
    cause: int | None
    soft: bool
    tech_cause: int | None
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Dial:
    """Progress of a dial. `caller` is None when the dial came from an originate, not a channel.

    `dialstatus` is "" when dialing starts, then "RINGING", "ANSWER", "BUSY", "CONGESTION",
    "NOANSWER", "CHANUNAVAIL", ... Note: Asterisk reports a rejected call (cause 21) as
    "NOANSWER" here although DIALSTATUS says CHANUNAVAIL.
    """

    caller: Channel | None
    peer: Channel
    dialstatus: str
    dialstring: str
    timestamp: datetime
    application: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationReplaced:
    """Another websocket took our application name; this socket will receive nothing more."""

    application: str
    timestamp: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherEvent:
    """Any event type dialguard does not model, kept raw for logging and diagnostics."""

    type: str
    raw: Mapping[str, Any] = field(hash=False)


Event: TypeAlias = (
    StasisStart
    | StasisEnd
    | ChannelCreated
    | ChannelStateChange
    | ChannelDestroyed
    | ChannelHangupRequest
    | Dial
    | ApplicationReplaced
    | OtherEvent
)


def parse_event(raw: Mapping[str, Any]) -> Event:
    """Parse one ARI event. Never returns None: unknown types become `OtherEvent`.

    Raises MalformedEvent for a non-object, a missing `type`, or a known type whose required
    fields are missing or of the wrong JSON type.
    """
    obj = _obj(raw, "event")
    event_type = obj.get("type")
    if not isinstance(event_type, str):
        raise MalformedEvent("event without a string 'type'")
    parser = _PARSERS.get(event_type)
    if parser is None:
        return OtherEvent(type=event_type, raw=dict(obj))
    return parser(obj)


def _stasis_start(obj: Mapping[str, Any]) -> StasisStart:
    args = obj.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise MalformedEvent("StasisStart.args is not a list of strings")
    return StasisStart(
        channel=Channel.from_json(obj.get("channel")),
        args=tuple(args),
        timestamp=_time(obj, "timestamp", "StasisStart"),
        application=_str(obj, "application", "StasisStart"),
    )


def _stasis_end(obj: Mapping[str, Any]) -> StasisEnd:
    return StasisEnd(
        channel=Channel.from_json(obj.get("channel")),
        timestamp=_time(obj, "timestamp", "StasisEnd"),
        application=_str(obj, "application", "StasisEnd"),
    )


def _channel_created(obj: Mapping[str, Any]) -> ChannelCreated:
    return ChannelCreated(
        channel=Channel.from_json(obj.get("channel")),
        timestamp=_time(obj, "timestamp", "ChannelCreated"),
        application=_str(obj, "application", "ChannelCreated"),
    )


def _channel_state_change(obj: Mapping[str, Any]) -> ChannelStateChange:
    return ChannelStateChange(
        channel=Channel.from_json(obj.get("channel")),
        timestamp=_time(obj, "timestamp", "ChannelStateChange"),
        application=_str(obj, "application", "ChannelStateChange"),
    )


def _channel_destroyed(obj: Mapping[str, Any]) -> ChannelDestroyed:
    return ChannelDestroyed(
        channel=Channel.from_json(obj.get("channel")),
        cause=_int(obj, "cause", "ChannelDestroyed"),
        cause_txt=_str(obj, "cause_txt", "ChannelDestroyed"),
        tech_cause=_opt_int(obj, "tech_cause", "ChannelDestroyed"),
        timestamp=_time(obj, "timestamp", "ChannelDestroyed"),
        application=_str(obj, "application", "ChannelDestroyed"),
    )


def _channel_hangup_request(obj: Mapping[str, Any]) -> ChannelHangupRequest:
    soft = obj.get("soft", False)
    if not isinstance(soft, bool):
        raise MalformedEvent("ChannelHangupRequest.soft is not a boolean")
    return ChannelHangupRequest(
        channel=Channel.from_json(obj.get("channel")),
        cause=_opt_int(obj, "cause", "ChannelHangupRequest"),
        soft=soft,
        tech_cause=_opt_int(obj, "tech_cause", "ChannelHangupRequest"),
        timestamp=_time(obj, "timestamp", "ChannelHangupRequest"),
        application=_str(obj, "application", "ChannelHangupRequest"),
    )


def _dial(obj: Mapping[str, Any]) -> Dial:
    caller_raw = obj.get("caller")
    dialstring = obj.get("dialstring", "")
    if not isinstance(dialstring, str):
        raise MalformedEvent("Dial.dialstring is not a string")
    return Dial(
        caller=None if caller_raw is None else Channel.from_json(caller_raw),
        peer=Channel.from_json(obj.get("peer")),
        dialstatus=_str(obj, "dialstatus", "Dial"),
        dialstring=dialstring,
        timestamp=_time(obj, "timestamp", "Dial"),
        application=_str(obj, "application", "Dial"),
    )


def _application_replaced(obj: Mapping[str, Any]) -> ApplicationReplaced:
    return ApplicationReplaced(
        application=_str(obj, "application", "ApplicationReplaced"),
        timestamp=_time(obj, "timestamp", "ApplicationReplaced"),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "StasisStart": _stasis_start,
    "StasisEnd": _stasis_end,
    "ChannelCreated": _channel_created,
    "ChannelStateChange": _channel_state_change,
    "ChannelDestroyed": _channel_destroyed,
    "ChannelHangupRequest": _channel_hangup_request,
    "Dial": _dial,
    "ApplicationReplaced": _application_replaced,
}


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedEvent(f"{where} is not an object")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedEvent(f"{where}.{key} is missing or not a string")
    return value


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    # bool is an int in Python but never a valid ARI integer.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedEvent(f"{where}.{key} is missing or not an integer")
    return value


def _opt_int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    if obj.get(key) is None:
        return None
    return _int(obj, key, where)


def _time(obj: Mapping[str, Any], key: str, where: str) -> datetime:
    text = _str(obj, key, where)
    try:
        return parse_ari_time(text)
    except ValueError:
        raise MalformedEvent(f"{where}.{key} is not an ARI timestamp: {text!r}") from None
