"""A thin ARI REST client: the calls dialguard makes, with errors translated at the boundary.

Credentials travel only in the Authorization header; URLs and log lines never carry them.
Every method sends only what the ARI definitions allow for that resource, so a request that
Asterisk would reject for its shape cannot be built through the typed methods.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import orjson
from yarl import URL

from dialguard.ari.errors import AriConflict, AriError, AriUnavailable, error_from_response
from dialguard.ari.http import HttpPool, HttpResponse, HttpTransportError

log = logging.getLogger(__name__)

HangupReason = Literal[
    "normal",
    "busy",
    "congestion",
    "no_answer",
    "timeout",
    "rejected",
    "unallocated",
    "normal_unspecified",
    "number_incomplete",
    "codec_mismatch",
    "interworking",
    "failure",
    "answered_elsewhere",
]

Params = Mapping[str, str | int | bool | None]


def basic_auth_header(username: str, password: str) -> str:
    """The value of an HTTP Basic Authorization header (RFC 7617, UTF-8)."""
    if ":" in username:
        raise ValueError("an ARI username cannot contain ':'")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def ari_base_url(base_url: str) -> URL:
    """Validate an ARI base URL ("http://host:8088/ari"); credentials in it are refused."""
    url = URL(base_url.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("ARI URL must be http(s)://host[:port]/ari")
    if url.user is not None or url.password is not None:
        # A password in a URL ends up in logs and process listings: refuse it outright.
        raise ValueError("ARI URL must not carry credentials; pass username and password")
    return url


class AriClient:
    """REST calls to one Asterisk, for one ARI application.

    The client owns a small pool of keep-alive connections to Asterisk, opened on first use;
    `close()` (or leaving `async with`) closes it. Each request is bounded by `timeout`
    seconds; a timeout, a refused or reset connection or a 5xx raises `AriUnavailable`.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        app: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 32,
    ) -> None:
        self._base = ari_base_url(base_url)
        self.app = app
        self._timeout = timeout
        self._prefix = self._base.raw_path.rstrip("/")
        host = self._base.raw_host or ""
        port = self._base.port or (443 if self._base.scheme == "https" else 80)
        authority = self._base.raw_authority
        # Everything after the request line is the same for every request: built once.
        self._headers = (
            f"Host: {authority}\r\n"
            f"Authorization: {basic_auth_header(username, password)}\r\n"
            "User-Agent: dialguard\r\n"
            "Accept: application/json\r\n"
        ).encode("latin-1")
        self._pool = HttpPool(
            host.strip("[]"),
            port,
            tls=ssl.create_default_context() if self._base.scheme == "https" else None,
            limit=max_connections,
        )

    @property
    def base_url(self) -> str:
        return str(self._base)

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections; a request after this raises AriUnavailable."""
        await self._pool.close()

    async def request(
        self,
        method: str,
        path: str,
        params: Params | None = None,
        json: Any = None,
        *,
        channel_id: str | None = None,
    ) -> Any:
        """Send one request below the base URL (path like "/channels"); return the parsed JSON.

        Returns None for 204. `channel_id` names the channel the command acts on, so that a 404
        becomes ChannelGone and a 409 NotInStasis. None values in `params` are left out.
        """
        data = self._serialise(method, path, params, json)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.request(data)
        except (HttpTransportError, TimeoutError, OSError) as exc:
            raise _unavailable(method, path, exc, channel_id) from exc
        return _answer(method, path, response, channel_id)

    async def request_in_order(self, requests: Sequence[AriRequest]) -> list[Any | AriError]:
        """Send requests pipelined on one connection, in one write: Asterisk acts on them in
        this order, and they cost one round trip. Each request's parsed answer, or the error it
        raised (as :meth:`request` would), in the same order; nothing raises but a timeout or a
        failure before the first answer (AriUnavailable)."""
        if not requests:
            return []
        data = [self._serialise(r.method, r.path, r.params, None) for r in requests]
        try:
            async with asyncio.timeout(self._timeout):
                answers = await self._pool.request_in_order(data)
        except (HttpTransportError, TimeoutError, OSError) as exc:
            first = requests[0]
            raise _unavailable(first.method, first.path, exc, first.channel_id) from exc
        results: list[Any | AriError] = []
        for request, answer in zip(requests, answers, strict=True):
            try:
                if isinstance(answer, HttpTransportError):
                    raise _unavailable(request.method, request.path, answer, request.channel_id)
                results.append(_answer(request.method, request.path, answer, request.channel_id))
            except AriError as exc:
                results.append(exc)
        return results

    def _serialise(self, method: str, path: str, params: Params | None, json: Any) -> bytes:
        if method not in _METHODS:
            raise ValueError(f"not an ARI method: {method!r}")
        target = self._prefix + _quote_path(path)
        query = _encode_query(params)
        if query:
            target = f"{target}?{query}"
        if json is not None:
            payload = orjson.dumps(json)
            head = (
                f"{method} {target} HTTP/1.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
            )
            return head.encode("latin-1") + self._headers + b"\r\n" + payload
        # A POST without a body still states its length; some servers wait for one otherwise.
        length = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
        return f"{method} {target} HTTP/1.1\r\n{length}".encode("latin-1") + self._headers + b"\r\n"

    # -- channels ---------------------------------------------------------------------------

    async def continue_in_dialplan(
        self,
        channel_id: str,
        *,
        label: str | None = None,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
    ) -> None:
        """Let a channel leave Stasis and go on in the dialplan (next priority by default).

        Raises ChannelGone, NotInStasis, WrongState, or DialplanTargetNotFound for an unknown
        label. Beware: an unknown context/extension is accepted (204) and the channel then
        dies with cause 0; Asterisk does not tell.
        """
        await self.send(
            continue_request(
                channel_id, label=label, context=context, extension=extension, priority=priority
            )
        )

    async def hangup(
        self,
        channel_id: str,
        *,
        reason_code: int | None = None,
        reason: HangupReason | None = None,
    ) -> None:
        """Hang up a channel with a Q.850 `reason_code` (Asterisk 17+) or a named `reason`.

        Never both: Asterisk refuses the pair with 400, so this raises ValueError first.
        """
        await self.send(hangup_request(channel_id, reason_code=reason_code, reason=reason))

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        """Set a channel variable (the channel must be in Stasis, else NotInStasis)."""
        await self.send(set_variable_request(channel_id, name, value))

    async def send(self, request: AriRequest) -> Any:
        """Send one request made by the ``*_request`` functions below."""
        return await self.request(
            request.method, request.path, request.params, channel_id=request.channel_id
        )

    async def get_channel(self, channel_id: str) -> dict[str, Any]:
        """One channel snapshot; ChannelGone when it no longer exists."""
        result = await self.request("GET", f"/channels/{_seg(channel_id)}", channel_id=channel_id)
        return _expect_dict(result)

    async def list_channels(self) -> list[dict[str, Any]]:
        """Every channel Asterisk has now, including those parked in Stasis without a socket."""
        result = await self.request("GET", "/channels")
        if not isinstance(result, list):
            raise AriUnavailable("GET /channels did not return a list")
        return [c for c in result if isinstance(c, dict)]

    async def originate(
        self,
        endpoint: str,
        *,
        extension: str | None = None,
        context: str | None = None,
        priority: int | None = None,
        label: str | None = None,
        caller_id: str | None = None,
        dial_timeout: int | None = None,
        app: str | None = None,
        app_args: str | None = None,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST /channels: create a channel to `endpoint`, then a dialplan location or an app.

        `dial_timeout` is ARI's `timeout` (seconds to wait for an answer). Returns the new
        channel's snapshot (for Local channels the ;1 half).
        """
        params: dict[str, str | int | None] = {
            "endpoint": endpoint,
            "extension": extension,
            "context": context,
            "priority": priority,
            "label": label,
            "callerId": caller_id,
            "timeout": dial_timeout,
            "app": app,
            "appArgs": app_args,
            "channelId": channel_id,
            "otherChannelId": other_channel_id,
        }
        body = {"variables": dict(variables)} if variables else None
        return _expect_dict(await self.request("POST", "/channels", params, body))

    # -- events -----------------------------------------------------------------------------

    async def claim(self, channel_id: str) -> bool:
        """Claim a channel that StasisBroadcast offers (Asterisk 20.17+/22.7+) for our app.

        True when this claim won (204: our app receives its StasisStart), False when another
        application's came first (409). AriNotFound when the channel is gone or its broadcast
        is over (it timed out).
        """
        try:
            await self.request(
                "POST", "/events/claim", {"channelId": channel_id, "application": self.app}
            )
        except AriConflict:
            return False
        return True

    # -- applications -----------------------------------------------------------------------

    async def subscribe(self, event_source: str) -> dict[str, Any]:
        """Subscribe our application to an event source, e.g. "endpoint:PJSIP/carrier".

        Subscriptions belong to the application, which Asterisk drops with its last websocket:
        call this again after every (re)connect.
        """
        return _expect_dict(await self.send(self.subscribe_request(event_source)))

    def subscribe_request(self, event_source: str) -> AriRequest:
        return AriRequest(
            "POST", f"/applications/{_seg(self.app)}/subscription", {"eventSource": event_source}
        )

    async def filter_events(self, allowed: Iterable[str]) -> dict[str, Any]:
        """Ask Asterisk to send our application only these event types (PUT eventFilter,
        Asterisk 13.26+ and 16.3+). The filter belongs to the application, as its subscriptions
        do: set it again after every (re)connect."""
        body = {"allowed": [{"type": t} for t in sorted(allowed)], "disallowed": []}
        result = await self.request("PUT", f"/applications/{_seg(self.app)}/eventFilter", json=body)
        return _expect_dict(result)

    async def get_application(self) -> dict[str, Any]:
        """Our application's state; AriNotFound while no websocket holds it."""
        return _expect_dict(await self.request("GET", f"/applications/{_seg(self.app)}"))


@dataclass(frozen=True, slots=True)
class AriRequest:
    """One REST request, built but not sent: for :meth:`AriClient.request_in_order`.

    ``channel_id`` names the channel it acts on, so that its 404 becomes ChannelGone."""

    method: str
    path: str
    params: Params | None = None
    channel_id: str | None = None


def set_variable_request(channel_id: str, name: str, value: str) -> AriRequest:
    return AriRequest(
        "POST",
        f"/channels/{_seg(channel_id)}/variable",
        {"variable": name, "value": value},
        channel_id,
    )


def continue_request(
    channel_id: str,
    *,
    label: str | None = None,
    context: str | None = None,
    extension: str | None = None,
    priority: int | None = None,
) -> AriRequest:
    return AriRequest(
        "POST",
        f"/channels/{_seg(channel_id)}/continue",
        {"label": label, "context": context, "extension": extension, "priority": priority},
        channel_id,
    )


def hangup_request(
    channel_id: str, *, reason_code: int | None = None, reason: HangupReason | None = None
) -> AriRequest:
    if reason_code is not None and reason is not None:
        raise ValueError("give reason_code or reason, not both")
    return AriRequest(
        "DELETE",
        f"/channels/{_seg(channel_id)}",
        {"reason_code": reason_code, "reason": reason},
        channel_id,
    )


def _seg(value: str) -> str:
    """Quote one path segment so an id can never add path elements."""
    return quote(value, safe="")


# What ARI's REST resources answer to.
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})

# Characters a path may carry as they are (RFC 3986 pchar and "/"), "%" for what is already
# quoted. Anything else (spaces, CR, LF, "?", "#") is quoted so it cannot change the request.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def _quote_path(path: str) -> str:
    return quote(path, safe=_PATH_SAFE)


def _encode_query(params: Params | None) -> str:
    if not params:
        return ""
    parts: list[str] = []
    for key, value in params.items():
        if value is None:
            continue
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"{quote(key, safe='')}={quote(text, safe='/:,@')}")
    return "&".join(parts)


def _unavailable(
    method: str, path: str, exc: BaseException, channel_id: str | None
) -> AriUnavailable:
    log.warning("ARI %s %s failed: %s", method, path, type(exc).__name__)
    return AriUnavailable(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        channel_id=channel_id,
    )


def _answer(method: str, path: str, response: HttpResponse, channel_id: str | None) -> Any:
    """The parsed body of a 2xx answer; the named error of any other."""
    status = response.status
    body = _parse_body(status, response.body)
    if status >= 400:
        error = error_from_response(status, body, channel_id=channel_id)
        log.debug("ARI %s %s -> %s %s", method, path, status, error.message)
        raise error
    log.debug("ARI %s %s -> %s", method, path, status)
    return body


def _parse_body(status: int, body: bytes) -> Any:
    if status == 204 or not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"message": body.decode("utf-8", "replace").strip()}


def _expect_dict(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        raise AriUnavailable("ARI answered without a JSON object")
    return result
