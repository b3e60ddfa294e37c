"""The ARI events websocket: connect, hand every event over, reconnect forever.

Delivery contract:
- `on_event(event)` is synchronous and must not block: the reader calls it inline for every
  event, in arrival order. Whoever needs I/O schedules a task of its own.
- After each (re)connect, `on_connect()` is awaited before any event of that connection is
  delivered. Events that arrive meanwhile are buffered (the socket keeps being read) and
  delivered in order as soon as `on_connect()` returns or fails, so nothing is lost. Every
  event waits for it, so `on_connect()` should return quickly and start long or retried work
  (subscriptions, reconciliation) as a task of its own that it owns; otherwise new calls wait
  behind it. Asterisk does not replay StasisStart for channels that were parked while we were
  away; GET /channels finds them. A channel can show up both in that listing and in the
  events: dedupe by channel id.
- `on_disconnect()` is called once for each connection that ends, before the next attempt.

`subscribe_all` is False by default: the application then receives events for its own Stasis
channels and for sources it subscribed to (e.g. "endpoint:PJSIP/carrier"), not every channel
on the system. True, as the lab recordings used, multiplies the traffic by every call the PBX
carries, none of which dialguard needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from dialguard.ari.client import ari_base_url, basic_auth_header
from dialguard.ari.errors import MalformedEvent
from dialguard.ari.events import Event, parse_event

log = logging.getLogger(__name__)

_TYPE_VALUE = re.compile(r'\s*:\s*"([A-Za-z]+)"')


def top_level_type(text: str) -> str | None:
    """An event's "type", read off its JSON text without decoding it; None when unsure.

    Most of what subscribeAll brings (ChannelVarset, ChannelDialplan, ...) is of no interest,
    and decoding it would be most of the listener's work. The first `"type"` in
    the text is the event's own type key when no object opens before it (so it is not nested)
    and no backslash precedes it (so it does not sit inside a string), in a text that is an
    object; a quoted word followed by a colon is a key. Anything else answers None, and the
    event is decoded to be sure.
    """
    key = text.find('"type"')
    if key <= 0 or text[key - 1] == "\\":
        return None
    opening = text.find("{")
    if opening < 0 or text[:opening].strip() or text.find("{", opening + 1, key) >= 0:
        return None
    value = _TYPE_VALUE.match(text, key + 6)
    return value.group(1) if value is not None else None


# The type reported to on_received for a message that is not an object with a string "type".
UNTYPED = "untyped"

OnEvent = Callable[[Event], None]
OnConnect = Callable[[], Awaitable[None]]
OnDisconnect = Callable[[], None]
Backoff = Callable[[int], float]


def jittered_backoff(
    base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None
) -> Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n)).

    Full jitter spreads the reconnects of many instances after an Asterisk restart.
    """
    source = rng or random.Random()

    def delay(attempt: int) -> float:
        return source.uniform(0.0, min(cap, base * (2.0 ** min(attempt, 32))))

    return delay


class EventListener:
    """Owns the events websocket of one ARI application and the task that reads it.

    `start()` launches the background task; `stop()` cancels it and waits for it, closing the
    socket. Session ownership is as for AriClient: a passed `session` stays open, one created
    here is closed by `stop()`.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app: str,
        *,
        on_event: OnEvent,
        on_connect: OnConnect | None = None,
        on_disconnect: OnDisconnect | None = None,
        subscribe_all: bool = False,
        session: aiohttp.ClientSession | None = None,
        heartbeat: float = 10.0,
        connect_timeout: float = 5.0,
        on_connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        types: frozenset[str] | None = None,
        on_received: Callable[[str], None] | None = None,
    ) -> None:
        base = ari_base_url(base_url)
        self._url = base.with_path(base.raw_path + "/events", encoded=True).with_query(
            {"app": app, "subscribeAll": "true" if subscribe_all else "false"}
        )
        self._auth_header = basic_auth_header(username, password)
        self.app = app
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._session = session
        self._owns_session = session is None
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._on_connect_timeout = on_connect_timeout
        self._backoff = backoff or jittered_backoff()
        # With subscribeAll the app hears every channel on the PBX: events of other types are
        # dropped before they are parsed into objects nobody reads.
        self._types = types
        # Told each message's event type (UNTYPED when it has none), delivered or dropped.
        self._on_received: Callable[[str], None] = on_received or _ignore
        self._task: asyncio.Task[None] | None = None
        self._buffer: list[Event] | None = None
        self._connected = asyncio.Event()
        self.connections = 0

    @property
    def connected(self) -> bool:
        """True while the websocket is open (before and after on_connect completes)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Wait until a websocket is open (wrap in asyncio.timeout to bound it)."""
        await self._connected.wait()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("listener already started")
        self._task = asyncio.create_task(self._run(), name=f"ari-events-{self.app}")

    async def stop(self) -> None:
        """Cancel the reader, close the socket and an owned session; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                if await self._connect_and_read():
                    attempt = 0
            except asyncio.CancelledError:
                raise
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    log.error("ARI events: authentication refused for app %s", self.app)
                else:
                    log.warning(
                        "ARI events: handshake refused (%s) for app %s", exc.status, self.app
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning(
                    "ARI events: cannot connect (%s) for app %s", type(exc).__name__, self.app
                )
            delay = self._backoff(attempt)
            attempt += 1
            log.info("ARI events: reconnecting app %s in %.2f s", self.app, delay)
            await asyncio.sleep(delay)

    async def _connect_and_read(self) -> bool:
        """One connection's life. Returns True when a socket was opened (resets the backoff)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with asyncio.timeout(self._connect_timeout):
            ws = await self._session.ws_connect(
                self._url,
                headers={"Authorization": self._auth_header},
                # Pings find a half-open TCP connection that would otherwise stay silent.
                heartbeat=self._heartbeat,
            )
        self.connections += 1
        self._buffer = []
        self._connected.set()
        log.info("ARI events: connected app %s", self.app)
        reader = asyncio.create_task(self._read(ws), name=f"ari-events-read-{self.app}")
        try:
            await self._run_on_connect()
            self._flush_buffer()
            await reader
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            # Deliver what arrived even if the socket died during on_connect: those are real
            # events (a ChannelDestroyed lost here would leave an outcome unrecorded).
            self._flush_buffer()
            self._connected.clear()
            await ws.close()
            log.warning("ARI events: disconnected app %s", self.app)
            self._notify_disconnect()
        return True

    async def _run_on_connect(self) -> None:
        if self._on_connect is None:
            return
        try:
            async with asyncio.timeout(self._on_connect_timeout):
                await self._on_connect()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket is fine; failing here must not stop event delivery. on_connect
            # owns its retries.
            log.exception("ARI events: on_connect failed for app %s", self.app)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._handle_text(msg.data)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                log.warning("ARI events: socket error for app %s: %s", self.app, ws.exception())
                return

    def _handle_text(self, text: str) -> None:
        log.debug("ARI event: %s", text)
        known = top_level_type(text)
        if known is not None and self._types is not None and known not in self._types:
            self._on_received(known)
            return
        try:
            raw: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("ARI events: skipped a message that is not JSON (%d bytes)", len(text))
            self._on_received(UNTYPED)
            return
        self._on_received(known or _raw_type(raw))
        if (
            known is None
            and self._types is not None
            and isinstance(raw, dict)
            and raw.get("type") not in self._types
        ):
            return
        try:
            event = parse_event(raw)
        except MalformedEvent as exc:
            log.warning(
                "ARI events: skipped malformed %s event (channel %s): %s",
                _raw_type(raw),
                _raw_channel_id(raw),
                exc.message,
            )
            return
        if self._buffer is not None:
            self._buffer.append(event)
        else:
            self._deliver(event)

    def _flush_buffer(self) -> None:
        buffered, self._buffer = self._buffer, None
        for event in buffered or ():
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:
            # One bad handler call must not take the reader (and every later call) down.
            log.exception(
                "ARI events: on_event failed for %s (channel %s)",
                type(event).__name__,
                getattr(getattr(event, "channel", None), "id", None),
            )

    def _notify_disconnect(self) -> None:
        if self._on_disconnect is None:
            return
        try:
            self._on_disconnect()
        except Exception:
            log.exception("ARI events: on_disconnect failed for app %s", self.app)


def _ignore(_: str) -> None:
    pass


def _raw_type(raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        return str(raw["type"])
    return UNTYPED


def _raw_channel_id(raw: Any) -> str | None:
    if isinstance(raw, dict):
        channel = raw.get("channel")
        if isinstance(channel, dict) and isinstance(channel.get("id"), str):
            return str(channel["id"])
    return None
