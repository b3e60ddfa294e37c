"""ARI applications of the fake: which websocket holds which name, and who gets which event.

Routing follows Asterisk: a socket opened with subscribeAll=true sees every channel event; any
other socket sees events of channels in its application's Stasis, of channels it subscribed to,
and of channels on endpoints it subscribed to ("endpoint:PJSIP/carrier"). StasisStart and
StasisEnd go only to the application concerned. An application's eventFilter (allowed and
disallowed types) applies to everything it is sent, as Asterisk's does. A second socket for the
same name replaces the first, which gets ApplicationReplaced and then nothing, and is not
closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from dialguard.testing.channels import FakeChannel, ari_now
from dialguard.testing.records import SentEvent, Sequence

log = logging.getLogger(__name__)

ASTERISK_ID = "02:fc:00:00:00:01"
EVENT_SOURCE_SCHEMES = ("channel:", "bridge:", "endpoint:", "deviceState:")


@dataclass(eq=False)
class AppSocket:
    """One events websocket, as the fake's server side holds it."""

    app: str
    ws: web.WebSocketResponse
    transport: asyncio.Transport | None
    subscribe_all: bool
    replaced: bool = False


@dataclass(eq=False)
class App:
    """An application that currently has a socket. It ceases to exist with that socket."""

    name: str
    socket: AppSocket
    sources: set[str] = field(default_factory=set)
    # The eventFilter's lists of types; an empty allowed list allows every type.
    allowed: frozenset[str] = frozenset()
    disallowed: frozenset[str] = frozenset()

    def sends(self, event_type: str) -> bool:
        if event_type in self.disallowed:
            return False
        return not self.allowed or event_type in self.allowed

    def wants(self, channel: FakeChannel) -> bool:
        if self.socket.subscribe_all or channel.stasis_app == self.name:
            return True
        if f"channel:{channel.id}" in self.sources:
            return True
        if channel.endpoint is None:
            return False
        tech = channel.endpoint.split("/", 1)[0]
        return f"endpoint:{channel.endpoint}" in self.sources or f"endpoint:{tech}" in self.sources

    def to_json(self, stasis_channel_ids: list[str]) -> dict[str, Any]:
        if self.socket.subscribe_all:
            return {
                "name": self.name,
                "channel_ids": ["__AST_CHANNEL_ALL_TOPIC"],
                "bridge_ids": ["__AST_BRIDGE_ALL_TOPIC"],
                "endpoint_ids": ["__AST_ENDPOINT_ALL_TOPIC"],
                "device_names": ["__AST_DEVICE_STATE_ALL_TOPIC"],
                **self._filter_json(),
            }
        by_scheme: dict[str, list[str]] = {scheme: [] for scheme in EVENT_SOURCE_SCHEMES}
        for source in sorted(self.sources):
            scheme, _, name = source.partition(":")
            by_scheme[scheme + ":"].append(name)
        return {
            "name": self.name,
            "channel_ids": stasis_channel_ids + by_scheme["channel:"],
            "bridge_ids": by_scheme["bridge:"],
            "endpoint_ids": by_scheme["endpoint:"],
            "device_names": by_scheme["deviceState:"],
            **self._filter_json(),
        }

    def _filter_json(self) -> dict[str, list[dict[str, str]]]:
        return {
            "events_allowed": [{"type": t} for t in sorted(self.allowed)],
            "events_disallowed": [{"type": t} for t in sorted(self.disallowed)],
        }


class AppRegistry:
    """Owns the application table and writes events to sockets, recording each one sent.

    With `record=False` (benchmarks) nothing is kept: `events_sent` stays empty.
    """

    def __init__(self, sequence: Sequence, *, record: bool = True) -> None:
        self._sequence = sequence
        self._record = record
        self.apps: dict[str, App] = {}
        self.sockets: list[AppSocket] = []
        self.events_sent: list[SentEvent] = []

    def get(self, name: str) -> App | None:
        return self.apps.get(name)

    async def attach(self, sock: AppSocket) -> None:
        """Register a new socket; an older socket for the same name is replaced."""
        self.sockets.append(sock)
        old = self.apps.get(sock.app)
        if old is None:
            self.apps[sock.app] = App(sock.app, sock)
            return
        # Asterisk keeps the application object (and its subscriptions) and swaps the socket.
        old.socket.replaced = True
        replaced = build_event("ApplicationReplaced")
        await self._send(old.socket, replaced)
        old.socket = sock

    def detach(self, sock: AppSocket) -> None:
        """A socket is gone. If it held its application, the application is gone too."""
        if sock in self.sockets:
            self.sockets.remove(sock)
        app = self.apps.get(sock.app)
        if app is not None and app.socket is sock:
            del self.apps[sock.app]

    async def publish(self, event: dict[str, Any], channels: Iterable[FakeChannel]) -> None:
        """Send a channel event to every application interested in one of `channels`."""
        related = list(channels)
        for app in list(self.apps.values()):
            if app.sends(event["type"]) and any(app.wants(ch) for ch in related):
                await self._send(app.socket, event)

    async def send_to_app(self, name: str, event: dict[str, Any]) -> bool:
        """Send to one application only (StasisStart/End). False when it has no socket."""
        app = self.apps.get(name)
        if app is None:
            return False
        if app.sends(event["type"]):
            await self._send(app.socket, event)
        return True

    async def send_raw(self, name: str, text: str) -> bool:
        """Write arbitrary text to an application's socket (to test malformed input)."""
        app = self.apps.get(name)
        if app is None:
            return False
        await app.socket.ws.send_str(text)
        return True

    async def _send(self, sock: AppSocket, event: dict[str, Any]) -> None:
        payload = {**event, "asterisk_id": ASTERISK_ID, "application": sock.app}
        if sock.ws.closed:
            self.detach(sock)
            return
        try:
            # Compact, as Asterisk writes events unless ari.conf asks for pretty JSON.
            await sock.ws.send_str(orjson.dumps(payload).decode())
        except (ConnectionError, RuntimeError) as exc:
            log.debug("fake ARI: send to %s failed: %s", sock.app, exc)
            self.detach(sock)
            return
        if self._record:
            self.events_sent.append(SentEvent(self._sequence.next(), sock.app, payload))


def build_event(event_type: str, **fields: Any) -> dict[str, Any]:
    """An event body in Asterisk's key order (type, timestamp, fields); routing adds the rest."""
    return {"type": event_type, "timestamp": ari_now(), **fields}
