"""What the fake saw and sent, in one order, for tests to assert on."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One REST request and its answer. `seq` orders it against events (taken at answer)."""

    seq: int
    method: str
    path: str  # below /ari, e.g. "/channels/1795877288.3/continue"
    query: dict[str, str]
    body: Any
    status: int
    response: Any


@dataclass(frozen=True, slots=True)
class SentEvent:
    """One event written to one websocket. `app` is the receiving socket's application."""

    seq: int
    app: str
    event: dict[str, Any] = field(hash=False)

    @property
    def type(self) -> str:
        return str(self.event["type"])

    @property
    def channel_id(self) -> str | None:
        channel = self.event.get("channel")
        return channel.get("id") if isinstance(channel, dict) else None

    @property
    def channel_name(self) -> str | None:
        channel = self.event.get("channel")
        return channel.get("name") if isinstance(channel, dict) else None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A request the ARI definitions do not allow. A correct client never causes one."""

    method: str
    path: str
    message: str


class Sequence:
    """One counter shared by requests and events so their relative order can be asserted."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def next(self) -> int:
        return next(self._counter)
