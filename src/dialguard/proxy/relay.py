"""The events websocket, relayed between a dialer and Asterisk in both directions.

Frames pass as they are: text and binary messages, pings and pongs (answered by the far end,
not by the proxy, so a dialer's ping still proves Asterisk is there), and close frames with
their code and reason. A side lost without a close frame is mirrored: the dialer's connection
is cut when Asterisk's was, and Asterisk is told "going away" when the dialer vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from dialguard.proxy.upstream import Upstream, json_error, request_headers

log = logging.getLogger(__name__)

Side = Literal["dialer", "asterisk"]
AnyWebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse

# Codes that describe a closure but may not be sent in a close frame (RFC 6455 §7.4.1).
_UNSENDABLE = frozenset({0, 1005, 1006, 1015})


@dataclass(frozen=True, slots=True)
class _End:
    """How one direction ended: a close frame (code, reason) or a lost side."""

    code: int | None
    reason: str
    lost: Side | None = None


class EventsRelay:
    """Owns every relayed socket pair; :meth:`close_all` ends them (on stop)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream
        self._open: set[_Pair] = set()

    def __len__(self) -> int:
        return len(self._open)

    async def open(self, request: web.Request, tail: str) -> web.StreamResponse:
        """Connect to Asterisk first, so that a refusal reaches the dialer as an HTTP answer."""
        protocols = tuple(
            p.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",")
            if p.strip()
        )
        try:
            asterisk = await self._upstream.session.ws_connect(
                self._upstream.url(tail),
                headers=request_headers(
                    request.headers, self._upstream.authorization, websocket=True
                ),
                protocols=protocols,
                autoclose=False,
                autoping=False,
                max_msg_size=0,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            log.warning("proxy: Asterisk refused the events websocket: HTTP %s", exc.status)
            if exc.status == 401:
                return json_error(401, "Authentication required")
            return json_error(
                exc.status, f"dialguard: Asterisk refused the events websocket (HTTP {exc.status})"
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            log.warning("proxy: cannot reach Asterisk ARI for the events websocket: %s", exc)
            return json_error(503, "dialguard: Asterisk ARI is unreachable")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("proxy: events websocket handshake failed: %s", type(exc).__name__)
            return json_error(502, "dialguard: Asterisk ARI broke off the answer")
        dialer = web.WebSocketResponse(
            protocols=(asterisk.protocol,) if asterisk.protocol else (),
            autoclose=False,
            autoping=False,
            max_msg_size=0,
            compress=False,
        )
        try:
            await dialer.prepare(request)
        except BaseException:
            await asterisk.close(code=WSCloseCode.GOING_AWAY)
            raise
        pair = _Pair(dialer, asterisk, request)
        self._open.add(pair)
        try:
            await pair.run()
        finally:
            self._open.discard(pair)
        return dialer

    async def close_all(self) -> None:
        await asyncio.gather(*(pair.stop() for pair in list(self._open)), return_exceptions=True)


class _Pair:
    """One dialer socket and its Asterisk socket, pumped by two tasks."""

    def __init__(
        self,
        dialer: web.WebSocketResponse,
        asterisk: aiohttp.ClientWebSocketResponse,
        request: web.Request,
    ) -> None:
        self._dialer = dialer
        self._asterisk = asterisk
        self._request = request
        self._pumps: list[asyncio.Task[_End]] = []
        self._stopping = False

    async def run(self) -> None:
        down = asyncio.create_task(self._pump(self._asterisk, self._dialer, "asterisk", "dialer"))
        up = asyncio.create_task(self._pump(self._dialer, self._asterisk, "dialer", "asterisk"))
        self._pumps = [down, up]
        try:
            done, _ = await asyncio.wait(self._pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.stop()
            raise
        await self._cancel_pumps()
        if self._stopping:
            return
        first = done.pop()
        end = first.result()
        source: Side = "asterisk" if first is down else "dialer"
        await self._finish(end, source)

    async def stop(self) -> None:
        """dialguard is stopping: both sides are told it is going away."""
        if self._stopping:
            return
        self._stopping = True
        await self._cancel_pumps()
        for ws in (self._dialer, self._asterisk):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dialguard is stopping")

    async def _cancel_pumps(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _finish(self, end: _End, source: Side) -> None:
        if end.lost == "asterisk":
            log.info("proxy: Asterisk's events websocket was lost; cutting the dialer's")
            await _quietly_close(self._asterisk, WSCloseCode.GOING_AWAY, "")
            if self._request.transport is not None:
                self._request.transport.abort()
            return
        if end.lost == "dialer":
            await _quietly_close(self._asterisk, WSCloseCode.GOING_AWAY, "")
            await _quietly_close(self._dialer, WSCloseCode.GOING_AWAY, "")
            return
        code = end.code if end.code is not None and end.code not in _UNSENDABLE else 1000
        other = self._dialer if source == "asterisk" else self._asterisk
        origin = self._asterisk if source == "asterisk" else self._dialer
        # Pass the close on, then complete the closing handshake with its sender.
        await _quietly_close(other, code, end.reason)
        await _quietly_close(origin, code, end.reason)

    @staticmethod
    async def _pump(source: AnyWebSocket, sink: AnyWebSocket, src: Side, dst: Side) -> _End:
        while True:
            msg = await source.receive()
            try:
                if msg.type is WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                elif msg.type is WSMsgType.PING:
                    await sink.ping(msg.data)
                elif msg.type is WSMsgType.PONG:
                    await sink.pong(msg.data)
                elif msg.type is WSMsgType.CLOSE:
                    return _End(int(msg.data or 0), str(msg.extra or ""))
                else:
                    return _End(None, "", lost=src)  # CLOSING, CLOSED, ERROR: no close frame
            except (ConnectionError, RuntimeError, aiohttp.ClientError):
                return _End(None, "", lost=dst)


async def _quietly_close(ws: AnyWebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=code, message=reason.encode())
