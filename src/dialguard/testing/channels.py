"""Channels and calls inside the fake, and their ARI JSON snapshots."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from dialguard.testing.outcomes import Outcome

Via = Literal["local", "sip"]


class _MillisecondClock:
    """Formats the current millisecond once: every event and snapshot of a call asks for it."""

    def __init__(self) -> None:
        self._millisecond = -1
        self._text = ""

    def now(self) -> str:
        millisecond = time.time_ns() // 1_000_000
        if millisecond != self._millisecond:
            at = datetime.fromtimestamp(millisecond / 1000, UTC)
            self._text = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millisecond % 1000:03d}+0000"
            self._millisecond = millisecond
        return self._text


_CLOCK = _MillisecondClock()


def ari_now() -> str:
    """Now, written the way Asterisk writes event timestamps: 2026-11-28T14:48:08.106+0000."""
    return _CLOCK.now()


_CALLER_ID = re.compile(r'^\s*"?(?P<name>[^"<]*?)"?\s*<(?P<number>[^>]*)>\s*$')


def parse_caller_id(text: str) -> tuple[str, str]:
    """'"Dialer" <4930123456>' -> ("Dialer", "4930123456"); a bare number has no name."""
    m = _CALLER_ID.match(text)
    if m:
        return m.group("name").strip(), m.group("number").strip()
    return "", text.strip()


@dataclass(eq=False)
class FakeChannel:
    """One channel. `stasis_app` is the application whose Stasis() it is in, if any."""

    id: str
    name: str
    state: str
    context: str
    exten: str
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    caller_name: str = ""
    caller_number: str = ""
    connected_name: str = ""
    connected_number: str = ""
    protocol_id: str = ""
    creationtime: str = field(default_factory=ari_now)
    endpoint: str | None = None  # "PJSIP/carrier": what endpoint subscriptions match
    dialed: str = ""  # the number a channel made by POST /channels/create calls once dialed
    variables: dict[str, str] = field(default_factory=dict)
    stasis_app: str | None = None
    stasis_args: tuple[str, ...] = ()
    destroyed: bool = False
    hangup_cause: int = 0
    call: Call | None = None

    def snapshot(self, channelvars: tuple[str, ...] = ()) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": self.protocol_id,
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": self.connected_name, "number": self.connected_number},
            "accountcode": "",
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": self.creationtime,
            "language": "en",
        }
        if channelvars:
            # Asterisk adds this key only when ari.conf lists channelvars.
            snap["channelvars"] = {name: self.variables.get(name, "") for name in channelvars}
        return snap

    def set_dialplan(self, priority: int, app_name: str, app_data: str) -> None:
        self.priority = priority
        self.app_name = app_name
        self.app_data = app_data


@dataclass(eq=False)
class Call:
    """One call the fake carries: its channels, scripted outcome and the task driving it.

    For `via="local"`, `originated` is Local ;1 (what POST /channels returns) and `stasis` is
    Local ;2 (the half that runs the dialplan). For `via="sip"`, `stasis` is the inbound
    PJSIP channel and `originated` is None. `trunk` is the carrier leg once dialed.
    """

    number: str
    caller_id: str
    caller_name: str
    via: Via
    outcome: Outcome
    originate_context: str = "dialer-entry"
    originate_exten: str = ""
    originated: FakeChannel | None = None
    stasis: FakeChannel | None = None
    trunk: FakeChannel | None = None
    answered: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    created: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    timer: asyncio.Task[None] | None = None

    @property
    def channels(self) -> list[FakeChannel]:
        return [c for c in (self.originated, self.stasis, self.trunk) if c is not None]

    def causes(self) -> dict[str, int]:
        """Channel name -> hangup cause of every destroyed channel of this call."""
        return {c.name: c.hangup_cause for c in self.channels if c.destroyed}


class ChannelIds:
    """Allocates unique ids ("1795877288.2") and technology sequence numbers like Asterisk."""

    def __init__(self) -> None:
        self._epoch = int(time.time())
        self._uid = itertools.count(2)
        self._local = itertools.count(1)
        self._pjsip = itertools.count(1)

    def unique_id(self) -> str:
        return f"{self._epoch}.{next(self._uid)}"

    def local_names(self, number: str, context: str) -> tuple[str, str]:
        base = f"Local/{number}@{context}-{next(self._local):08x}"
        return f"{base};1", f"{base};2"

    def pjsip_name(self, endpoint: str) -> str:
        return f"PJSIP/{endpoint}-{next(self._pjsip):08x}"
