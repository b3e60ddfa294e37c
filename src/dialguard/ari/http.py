"""A small HTTP/1.1 keep-alive client for ARI REST, on asyncio protocols.

ARI requests are tiny and many (several per gated call), so the general-purpose client's
per-request machinery (URL objects, header multidicts, tracing hooks, response objects) cost more
CPU than the exchange itself. This client speaks only what ARI needs: one exchange at a time per
connection, a body sized by Content-Length (chunked answers are read too), keep-alive reuse
from a small pool, and a fresh connection when the server closed an idle one under us.

An exchange may pipeline several requests (HTTP/1.1, RFC 9112 section 9.3.2): a gated call's
variables and verdict go in one write, and Asterisk, which reads one connection's requests one
after the other, acts on them in that order. That is one round trip and one write instead of
one each per request; on a virtual machine the system calls are most of a request's cost.

Errors: every transport failure raises :class:`HttpTransportError`; the caller turns it into a
named ARI error. Timeouts are the caller's (``asyncio.timeout`` around :meth:`HttpPool.request`):
a request cancelled mid-way closes its connection, whose state is then unknown.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

# A response head larger than this is not an ARI answer: refuse it instead of buffering it.
MAX_HEAD_BYTES = 64 * 1024


class HttpTransportError(Exception):
    """The exchange failed below HTTP: refused, reset, closed early, or unparseable."""


class _ClosedBeforeAnswer(HttpTransportError):
    """The server closed the connection before the first byte of an answer."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one exchange at a time.

    An exchange may hold several requests, written at once (HTTP/1.1 pipelining): the server
    answers them in order, one after the other, on the same connection.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        # One future per request written and not yet answered, in the order written.
        self._waiters: deque[asyncio.Future[HttpResponse]] = deque()
        self._status = 0
        self._length = -1  # body bytes expected; -1 while unknown, -2 chunked, -3 until close
        self._head_end = -1
        self.keep_alive = True
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._waiters:
            # Nothing was asked: a server talking out of turn. The connection is unusable.
            self.close()
            return
        self._buffer += data
        try:
            while self._waiters and self._buffer and self._advance():
                pass
        except HttpTransportError as exc:
            self._fail(exc)
            self.close()

    def eof_received(self) -> bool | None:
        if self._waiters and self._length == -3 and self._head_end >= 0:
            self._complete(bytes(self._buffer[self._head_end :]), len(self._buffer))
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._waiters:
            return
        if self._length == -3 and self._head_end >= 0:
            self._complete(bytes(self._buffer[self._head_end :]), len(self._buffer))
        if self._buffer or self._head_end >= 0:
            self._fail(HttpTransportError("connection closed in the middle of the answer"))
        else:
            self._fail(_ClosedBeforeAnswer("connection closed before the answer"))

    # -- exchange -----------------------------------------------------------------------------

    def exchange(self, requests: Sequence[bytes]) -> list[asyncio.Future[HttpResponse]]:
        """Send whole requests in one write; each future resolves with its whole answer."""
        assert self._transport is not None and not self._waiters
        loop = asyncio.get_running_loop()
        waiters = [loop.create_future() for _ in requests]
        self._waiters.extend(waiters)
        self._buffer.clear()
        self._head_end = -1
        self._length = -1
        self._transport.write(b"".join(requests))
        return waiters

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def _advance(self) -> bool:
        """Read the answer at the front of the buffer; True once it was whole and handed over."""
        buffer = self._buffer
        if self._head_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise HttpTransportError("response head too large")
                return False
            self._read_head(bytes(buffer[:end]).decode("latin-1"))
            self._head_end = end + 4
        if self._length >= 0:
            stop = self._head_end + self._length
            if len(buffer) < stop:
                return False
            self._complete(bytes(buffer[self._head_end : stop]), stop)
            return True
        if self._length == -2:
            return self._read_chunks()
        return False  # the body runs until the server closes

    def _read_head(self, head: str) -> None:
        lines = head.split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpTransportError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
        self._status = int(code)
        self.keep_alive = version == "HTTP/1.1"
        length = -3
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                if not value.strip().isdigit():
                    raise HttpTransportError("bad Content-Length")
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                length = -2
            elif name == "connection":
                token = value.strip().lower()
                if token == "close":
                    self.keep_alive = False
                elif token == "keep-alive":
                    self.keep_alive = True
        if self._status in (204, 304) or 100 <= self._status < 200:
            length = 0
        if length == -3:
            self.keep_alive = False  # the body runs until the server closes
        self._length = length

    def _read_chunks(self) -> bool:
        buffer, position = self._buffer, self._head_end
        parts: list[bytes] = []
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return False
            size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpTransportError("bad chunk size") from None
            if size == 0:
                # No trailers from ARI: the terminating CRLF follows at once.
                if len(buffer) < line_end + 4:
                    return False
                self._complete(b"".join(parts), line_end + 4)
                return True
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return False
            parts.append(bytes(buffer[start : start + size]))
            position = start + size + 2

    def _complete(self, body: bytes, consumed: int) -> None:
        """Hand the front answer over and drop its ``consumed`` bytes; the next may follow."""
        del self._buffer[:consumed]
        self._head_end = -1
        self._length = -1
        waiter = self._waiters.popleft()
        if not waiter.done():
            waiter.set_result(HttpResponse(self._status, body))

    def _fail(self, exc: HttpTransportError) -> None:
        """Fail every request still unanswered: after a broken answer, none can be read."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)


class HttpPool:
    """Keep-alive connections to one server, at most ``limit`` open at a time.

    Owns its connections: :meth:`close` closes the idle ones and makes every connection in use
    close when its exchange ends. Idle connections are dropped after ``idle_timeout`` seconds,
    before Asterisk's own keep-alive limit (15 s by default) would close them under a request.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        limit: int = 32,
        idle_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._idle_timeout = idle_timeout
        self._closed = False

    async def request(self, data: bytes) -> HttpResponse:
        """Send one serialised request and return the answer (HttpTransportError on failure)."""
        (answer,) = await self.request_in_order([data])
        if isinstance(answer, HttpTransportError):
            raise answer
        return answer

    async def request_in_order(
        self, requests: Sequence[bytes]
    ) -> list[HttpResponse | HttpTransportError]:
        """Send serialised requests on one connection in one write (pipelined), so the server
        acts on them in this order; their answers, or the failure of each one left unanswered.

        A failure before the first answer raises HttpTransportError, as :meth:`request` does.
        """
        if self._closed:
            raise HttpTransportError("client closed")
        async with self._slots:
            conn = self._take_idle()
            if conn is None:
                return await self._exchange(await self._connect(), requests)
            try:
                return await self._exchange(conn, requests)
            except _ClosedBeforeAnswer:
                # The server dropped the idle connection as we wrote: nothing was processed,
                # since no answer began. Once more on a fresh connection.
                return await self._exchange(await self._connect(), requests)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _take_idle(self) -> _Connection | None:
        cutoff = time.monotonic() - self._idle_timeout
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.idle_since > cutoff:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        except OSError as exc:
            raise HttpTransportError(f"{type(exc).__name__}: {exc}") from exc
        return conn

    async def _exchange(
        self, conn: _Connection, requests: Sequence[bytes]
    ) -> list[HttpResponse | HttpTransportError]:
        waiters = conn.exchange(requests)
        answers: list[HttpResponse | HttpTransportError] = []
        try:
            for waiter in waiters:
                try:
                    answers.append(await waiter)
                except _ClosedBeforeAnswer as exc:
                    if not answers:
                        raise
                    answers.append(HttpTransportError(str(exc)))
                except HttpTransportError as exc:
                    answers.append(exc)
        except BaseException:
            # A failure, a timeout or a cancellation: what is left on the wire is unknown.
            for waiter in waiters:
                waiter.cancel()
            conn.abort()
            raise
        failed = any(isinstance(answer, HttpTransportError) for answer in answers)
        if conn.keep_alive and not failed and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return answers
