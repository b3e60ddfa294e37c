"""The Asterisk behind the proxy: requests forwarded over one keep-alive session.

Bytes pass unchanged both ways: no decompression, no redirects followed, no cookies kept,
no default headers added. Only the hop-by-hop headers and the credentials change: the
dialer's are dropped, dialguard's ARI credentials are sent instead. When Asterisk cannot be
reached the caller gets :class:`UpstreamUnavailable`, raised within the connect timeout.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from dialguard.ari.client import ari_base_url, basic_auth_header

log = logging.getLogger(__name__)

# Answers up to this size are read whole and sent with one write; larger ones, or ones of
# unknown length, are streamed as they arrive.
BUFFER_LIMIT = 64 * 1024

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set anew on each leg: the target host, dialguard's credentials, the body's framing.
_REQUEST_OWN = frozenset({"host", "authorization", "content-length", "expect"})
_WEBSOCKET_OWN = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
_NO_BODY_STATUSES = frozenset({204, 304})
KEEPALIVE_SECONDS = 10.0


class UpstreamUnavailable(Exception):
    """Asterisk could not be reached or broke off: answered to the dialer as ARI errors are."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        return json_error(self.status, self.message)


def json_error(status: int, message: str) -> web.Response:
    """An ARI-style error: ``{"message": ...}``, compact as Asterisk writes it."""
    body = json.dumps({"message": message}, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type="application/json")


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer from Asterisk, to look into before it is passed on unchanged."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def response(self) -> web.Response:
        body = None if self.status in _NO_BODY_STATUSES else self.body
        return web.Response(status=self.status, reason=self.reason, headers=self.headers, body=body)


class Upstream:
    """Owns one aiohttp session to Asterisk: :meth:`start` opens it, :meth:`close` closes it."""

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
    ) -> None:
        base = ari_base_url(base_url)
        self._origin = str(base.origin())
        self._base_path = base.raw_path.rstrip("/")
        self._authorization = basic_auth_header(username, password)
        # Only the TCP connect is bounded by connect_timeout: waiting for a pooled connection
        # under load is not Asterisk being away.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._read_timeout = read_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # Idle connections are dropped before Asterisk's own keep-alive (15 s by default)
            # would close them under a request.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream session not started")
        return self._session

    @property
    def authorization(self) -> str:
        return self._authorization

    def url(self, tail: str) -> URL:
        """Asterisk's URL for a raw path-and-query below /ari ("/channels?x=1"), unencoded."""
        return URL(self._origin + self._base_path + tail, encoded=True)

    # -- forwarding ----------------------------------------------------------------------------

    async def forward(
        self, request: web.Request, tail: str, body: bytes | None = None
    ) -> web.StreamResponse:
        """Send the dialer's request on and stream Asterisk's answer back as it comes."""
        headers = request_headers(request.headers, self._authorization)
        data: Any = body
        if body is None and request.body_exists:
            if request.content_length is not None and request.content_length <= BUFFER_LIMIT:
                data = await request.read()
            else:
                data = request.content
                if request.content_length is not None:
                    headers["Content-Length"] = str(request.content_length)
        upstream = await self._send(request.method, tail, headers, data)
        try:
            length = upstream.content_length
            if (
                upstream.status in _NO_BODY_STATUSES
                or request.method == "HEAD"
                or (length is not None and length <= BUFFER_LIMIT)
            ):
                payload = await self._read(upstream)
                return Answer(
                    upstream.status, upstream.reason, response_headers(upstream.headers), payload
                ).response()
            return await self._stream(request, upstream)
        finally:
            upstream.release()

    async def exchange(self, request: web.Request, tail: str, body: bytes) -> Answer:
        """Send the dialer's request on and return Asterisk's whole answer."""
        headers = request_headers(request.headers, self._authorization)
        upstream = await self._send(request.method, tail, headers, body)
        try:
            payload = await self._read(upstream)
        finally:
            upstream.release()
        return Answer(upstream.status, upstream.reason, response_headers(upstream.headers), payload)

    async def get_json(self, path: str) -> tuple[int, Any]:
        """GET a resource below /ari with dialguard's credentials: (status, parsed JSON)."""
        headers = CIMultiDict({"Authorization": self._authorization})
        upstream = await self._send("GET", path, headers, None)
        try:
            payload = await self._read(upstream)
        finally:
            upstream.release()
        try:
            return upstream.status, json.loads(payload) if payload else None
        except ValueError:
            return upstream.status, None

    async def _send(
        self, method: str, tail: str, headers: CIMultiDict[str], data: Any
    ) -> aiohttp.ClientResponse:
        # A pooled connection that Asterisk closed just as it was reused is retried once by
        # aiohttp itself for idempotent methods (RFC 9112 §9.3.1); a POST is never sent twice.
        try:
            return await self.session.request(
                method, self.url(tail), headers=headers, data=data, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            log.warning("proxy: cannot reach Asterisk ARI at %s: %s", self._origin, exc)
            raise UpstreamUnavailable(503, "dialguard: Asterisk ARI is unreachable") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._no_answer(method, tail, exc) from exc

    async def _read(self, upstream: aiohttp.ClientResponse) -> bytes:
        try:
            return await upstream.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._no_answer(upstream.method, upstream.url.raw_path, exc) from exc

    def _no_answer(self, method: str, tail: str, exc: BaseException) -> UpstreamUnavailable:
        reason = type(exc).__name__
        log.warning("proxy: Asterisk ARI broke off %s %s: %s", method, tail.split("?")[0], reason)
        if isinstance(exc, TimeoutError):
            message = f"dialguard: Asterisk ARI did not answer within {self._read_timeout:g} s"
        else:
            message = "dialguard: Asterisk ARI broke off the answer"
        return UpstreamUnavailable(502, message)

    async def _stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=response_headers(upstream.headers),
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is gone already: cutting the connection is the only honest signal.
            log.warning("proxy: Asterisk ARI broke off a streamed answer: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response


def request_headers(
    incoming: CIMultiDictProxy[str] | CIMultiDict[str],
    authorization: str,
    *,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The dialer's headers as sent on to Asterisk, with dialguard's credentials."""
    drop = _HOP_BY_HOP | _REQUEST_OWN | (_WEBSOCKET_OWN if websocket else frozenset())
    drop |= _connection_tokens(incoming)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in drop:
            headers.add(name, value)
    headers["Authorization"] = authorization
    return headers


def response_headers(incoming: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Asterisk's headers as passed back; framing headers are set by our own response."""
    drop = _HOP_BY_HOP | {"content-length"} | _connection_tokens(incoming)
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if name.lower() not in drop:
            headers.add(name, value)
    return headers


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)
