"""A thin ARI adapter: REST client, events listener with reconnect, typed events.

It imports nothing else of dialguard: the gate and the proxy use it, never the other way round.
"""

from __future__ import annotations

from dialguard.ari.client import AriClient, HangupReason
from dialguard.ari.errors import (
    AriAuthError,
    AriBadRequest,
    AriConflict,
    AriError,
    AriNotFound,
    AriUnavailable,
    ChannelGone,
    DialplanTargetNotFound,
    MalformedEvent,
    NotInStasis,
    WrongState,
)
from dialguard.ari.events import (
    ApplicationReplaced,
    Channel,
    ChannelCreated,
    ChannelDestroyed,
    ChannelHangupRequest,
    ChannelStateChange,
    Dial,
    Event,
    OtherEvent,
    StasisEnd,
    StasisStart,
    parse_event,
)
from dialguard.ari.listener import EventListener, jittered_backoff

__all__ = [
    "ApplicationReplaced",
    "AriAuthError",
    "AriBadRequest",
    "AriClient",
    "AriConflict",
    "AriError",
    "AriNotFound",
    "AriUnavailable",
    "Channel",
    "ChannelCreated",
    "ChannelDestroyed",
    "ChannelGone",
    "ChannelHangupRequest",
    "ChannelStateChange",
    "Dial",
    "DialplanTargetNotFound",
    "Event",
    "EventListener",
    "HangupReason",
    "MalformedEvent",
    "NotInStasis",
    "OtherEvent",
    "StasisEnd",
    "StasisStart",
    "WrongState",
    "jittered_backoff",
    "parse_event",
]
