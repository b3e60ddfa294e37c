"""A fake Asterisk ARI server that behaves like the recorded Asterisk 22.10.1.

It serves the ARI REST resources and the events websocket on 127.0.0.1, validates every request
against the bundled ARI definitions, and plays calls the way the lab recordings show. Tests,
benchmarks and `dialguard demo` drive it through the methods below.

    async with FakeAsterisk("dialguard", "secret") as fake:
        call = await fake.originate_outbound("15550100", "4930123456")
        ...
        assert fake.protocol_violations == []
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from dialguard.testing.apps import AppRegistry, AppSocket
from dialguard.testing.ari_definitions import AriDefinitions, MethodNotAllowed, RouteNotFound
from dialguard.testing.channels import Call, FakeChannel, Via
from dialguard.testing.outcomes import Outcome
from dialguard.testing.pbx import Pbx, PbxConfig
from dialguard.testing.polling import poll_until
from dialguard.testing.records import ProtocolViolation, RecordedRequest, SentEvent
from dialguard.testing.records import Sequence as Counter
from dialguard.testing.rest import SELF_CHECKED, handler_for

log = logging.getLogger(__name__)

T = TypeVar("T")

_AUTH_REQUIRED = {"message": "Authentication required"}
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'}


class FakeAsterisk:
    """An ARI server on 127.0.0.1 with scripted telephony behind it.

    Lifecycle: `await start()` binds a free port (or `port`) and `await stop()` cancels every
    running call, closes the websockets and the server; `async with` does both. The instance
    owns everything it starts.

    Options: `trunk_endpoints` are the carrier endpoints (the first is what the dialplan
    dials); `app` is the application the dialplan's Stasis() names; `keep_dial_cause` makes the
    outbound halves end with the trunk's cause instead of the plain-Hangup() 16 the lab showed
    after busy/congestion; `verbose_events=False` leaves out the events dialguard ignores
    (ChannelDialplan, ChannelVarset, caller-ID updates), for benchmarks; `stasis_args` are the
    Stasis() argument templates (${EXTEN}, ${CALLERID(num)}, ${CALLERID(name)}, ${VAR});
    `channelvars` mirrors ari.conf `channelvars` (listed variables appear in snapshots);
    `default_outcome` is what the carrier does for numbers without `set_outcome`.

    For benchmarks only, where the fake stands in for a C Asterisk and its own CPU is noise:
    `validate_requests=False` skips checking each request against the ARI definitions
    (`protocol_violations` then stays empty), and `keep_records=False` keeps neither `requests`,
    `events_sent` nor `calls`. Tests keep both defaults.
    """

    def __init__(
        self,
        username: str = "dialguard",
        password: str = "dialguard",
        *,
        trunk_endpoints: Sequence[str] = ("PJSIP/carrier",),
        app: str = "dialguard",
        outbound_context: str = "outbound",
        keep_dial_cause: bool = False,
        verbose_events: bool = True,
        stasis_args: Sequence[str] = ("${EXTEN}", "${CALLERID(num)}"),
        channelvars: Sequence[str] = (),
        default_outcome: Outcome | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        validate_requests: bool = True,
        keep_records: bool = True,
    ) -> None:
        if not trunk_endpoints:
            raise ValueError("at least one trunk endpoint is needed")
        self._credentials = f"{username}:{password}".encode()
        self._host = host
        self._port = port
        self._sequence = Counter()
        self._validate = validate_requests
        self._keep_records = keep_records
        self._apps = AppRegistry(self._sequence, record=keep_records)
        self._pbx = Pbx(
            PbxConfig(
                app=app,
                outbound_context=outbound_context,
                trunk_endpoints=tuple(trunk_endpoints),
                keep_dial_cause=keep_dial_cause,
                verbose_events=verbose_events,
                stasis_args=tuple(stasis_args),
                channelvars=tuple(channelvars),
                default_outcome=default_outcome or Outcome.answered(),
            ),
            self._apps,
            keep_calls=keep_records,
        )
        self._definitions = AriDefinitions.load()
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._delays: dict[str | None, float] = {}
        self._failures: dict[tuple[str, str], list[int]] = {}
        self.requests: list[RecordedRequest] = []
        self.protocol_violations: list[ProtocolViolation] = []

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/ari/events", self._events_socket)
        app.router.add_route("GET", "/ari/api-docs/{name}", self._api_docs)
        app.router.add_route("*", "/ari/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        address = self._runner.addresses[0]
        self._bound_port = int(address[1])
        log.info("fake ARI listening on %s", self.base_url)

    async def stop(self) -> None:
        await self._pbx.shutdown()
        for sock in list(self._apps.sockets):
            await sock.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAsterisk:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("FakeAsterisk is not started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        """The ARI base URL, "http://127.0.0.1:PORT/ari"."""
        return f"http://{self._host}:{self.port}/ari"

    # -- what happened -----------------------------------------------------------------------

    @property
    def events_sent(self) -> list[SentEvent]:
        """Every event written to any websocket, in order."""
        return self._apps.events_sent

    def events(
        self, type: str | None = None, *, app: str | None = None, channel_id: str | None = None
    ) -> list[SentEvent]:
        """The sent events filtered by type, receiving application and channel id."""
        return [
            e
            for e in self._apps.events_sent
            if (type is None or e.type == type)
            and (app is None or e.app == app)
            and (channel_id is None or e.channel_id == channel_id)
        ]

    @property
    def channels(self) -> list[FakeChannel]:
        """The live channels, in creation order."""
        return list(self._pbx.channels.values())

    @property
    def calls(self) -> list[Call]:
        return list(self._pbx.calls)

    def app_connected(self, app: str) -> bool:
        """True while a websocket holds `app` (what GET /applications/{app} shows)."""
        return self._apps.get(app) is not None

    # A per-call timeout keeps test code short; it is applied with asyncio.timeout inside.
    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 2.0,  # noqa: ASYNC109
        interval: float = 0.005,
    ) -> T:
        """Poll `predicate` until it returns something truthy; return it. TimeoutError after."""
        return await poll_until(predicate, timeout, interval)

    async def wait_for_event(
        self,
        type: str,
        *,
        app: str | None = None,
        channel_id: str | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> SentEvent:
        """The first sent event matching the filters, waiting for it if needed."""
        found = await self.wait_for(
            lambda: self.events(type, app=app, channel_id=channel_id), timeout=timeout
        )
        return found[0]

    # -- driving calls -----------------------------------------------------------------------

    def set_outcome(self, number: str, outcome: Outcome) -> None:
        """What the carrier does with calls to `number` from now on."""
        self._pbx.outcomes[number] = outcome

    def set_rest_delay(self, seconds: float, *, channel_id: str | None = None) -> None:
        """Delay REST answers by `seconds`: all of them, or those about one channel."""
        if seconds <= 0:
            self._delays.pop(channel_id, None)
        else:
            self._delays[channel_id] = seconds

    def fail_requests(self, method: str, path: str, times: int, *, status: int = 500) -> None:
        """Answer the next `times` requests of `method` to `path` (e.g. "/channels", or a
        pattern such as "/channels/*/variable") with `status`, as an Asterisk in trouble would,
        before they reach the simulation."""
        self._failures[(method.upper(), path)] = [times, status]

    def _failure_for(self, method: str, path: str) -> list[int] | None:
        exact = self._failures.get((method, path))
        if exact is not None:
            return exact
        for (failing_method, pattern), failure in self._failures.items():
            if failing_method == method and "*" in pattern and fnmatch.fnmatchcase(path, pattern):
                return failure
        return None

    async def originate_outbound(
        self,
        number: str,
        caller_id: str = "4930123456",
        *,
        caller_name: str = "Dialer",
        via: Via = "local",
        stasis_args: Sequence[str] | None = None,
        variables: dict[str, str] | None = None,
        outcome: Outcome | None = None,
        originate_timeout: float | None = 30.0,
    ) -> Call:
        """Place a call into the outbound context as the lab's dialer did.

        `via="local"` is an originate of Local/<number>@outbound (the ;2 half enters Stasis);
        `via="sip"` is a phone calling in over PJSIP. `stasis_args` overrides the Stasis()
        arguments; `variables` end up on the Stasis channel (for Local they are passed as
        inherited "_" variables of the originate). `originate_timeout` ends an
        unanswered Local call with cause 19, as the originate's timeout does (None: never).
        Returns once the channels exist; StasisStart follows at once.
        """
        inherited = {
            k if via == "sip" or k.startswith("_") else f"_{k}": v
            for k, v in (variables or {}).items()
        }
        call = self._pbx.start_outbound(
            number,
            caller_id,
            caller_name=caller_name,
            via=via,
            outcome=outcome,
            variables=inherited,
            stasis_args=tuple(stasis_args) if stasis_args is not None else None,
            originate_timeout=originate_timeout,
        )
        await asyncio.wait_for(call.created.wait(), 5.0)
        return call

    async def originate_direct_to_trunk(
        self,
        number: str,
        caller_id: str = "4930123456",
        *,
        caller_name: str = "Dialer",
        outcome: Outcome | None = None,
    ) -> Call:
        """A call straight to the trunk that never passed the gate (what the bypass detector
        must catch): a PJSIP channel on the first trunk endpoint, no Stasis."""
        call = self._pbx.start_direct(
            number,
            caller_id,
            caller_name=caller_name,
            endpoint=self._pbx.config.trunk,
            outcome=outcome,
        )
        await asyncio.wait_for(call.created.wait(), 5.0)
        return call

    async def offer_calls(
        self,
        count: int,
        rate: float,
        *,
        number: Callable[[int], str] = lambda i: f"1555{i % 10_000_000:07d}",
        caller_id: Callable[[int], str] = lambda i: "4930123456",
    ) -> list[Call]:
        """Start `count` outbound calls at `rate` per second (benchmarks): N StasisStart/s."""
        calls: list[Call] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(await self.originate_outbound(number(i), caller_id(i)))
        return calls

    async def push_event(self, app: str, event: dict[str, Any] | str) -> None:
        """Send an event (or any raw text) to the socket holding `app`, as is.

        For tests of what a client does with events the scripted calls never produce,
        malformed ones included. Not recorded in `events_sent`.
        """
        text = event if isinstance(event, str) else json.dumps(event)
        if not await self._apps.send_raw(app, text):
            raise LookupError(f"no websocket holds {app!r}")

    async def drop_websocket(self, app: str, *, abort: bool = True) -> None:
        """Lose the socket holding `app`: a TCP abort (no close frame) or a clean close.

        Channels in the application's Stasis stay parked, as in the recordings.
        """
        held = self._apps.get(app)
        if held is None:
            raise LookupError(f"no websocket holds {app!r}")
        sock = held.socket
        self._apps.detach(sock)
        if abort and sock.transport is not None:
            sock.transport.abort()
        else:
            await sock.ws.close()

    # -- HTTP --------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            supplied = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(supplied, self._credentials)

    async def _events_socket(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if not self._authorized(request):
            return self._answer(request, "/events", query, None, 401, _AUTH_REQUIRED)
        op, _ = self._definitions.match("GET", "/events")
        violations = self._definitions.validate(op, query, None)
        if violations:
            self._violation(request.method, "/events", violations[0].message)
            return self._answer(
                request, "/events", query, None, 400, {"message": violations[0].message}
            )
        ws = web.WebSocketResponse(autoping=True)
        if not ws.can_prepare(request).ok:
            return self._answer(
                request, "/events", query, None, 400, {"message": "Websocket upgrade required"}
            )
        await ws.prepare(request)
        self._record(request.method, "/events", query, None, 101, None)
        sock = AppSocket(
            app=query["app"],
            ws=ws,
            transport=request.transport,
            subscribe_all=query.get("subscribeAll") == "true",
        )
        await self._apps.attach(sock)
        try:
            async for _ in ws:
                pass  # ARI sends nothing useful client -> server; just keep reading.
        finally:
            self._apps.detach(sock)
        return ws

    async def _api_docs(self, request: web.Request) -> web.StreamResponse:
        """The Swagger documents, as Asterisk serves them below /ari/api-docs/."""
        path = request.path[len("/ari") :]
        if not self._authorized(request):
            return self._answer(request, path, dict(request.query), None, 401, _AUTH_REQUIRED)
        document = self._definitions.document(request.match_info["name"])
        if document is None:
            return self._answer(
                request, path, dict(request.query), None, 404, {"message": "Resource not found"}
            )
        self._record(request.method, path, dict(request.query), None, 200, None)
        return web.Response(body=document, content_type="application/json")

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = request.path[len("/ari") :] or "/"
        query = dict(request.query)
        body: Any = None
        if request.can_read_body:
            text = await request.text()
            if text.strip():
                try:
                    body = json.loads(text)
                except ValueError:
                    self._violation(request.method, path, "body is not JSON")
                    return self._answer(
                        request, path, query, text, 400, {"message": "Invalid JSON"}
                    )
        if not self._authorized(request):
            return self._answer(request, path, query, body, 401, _AUTH_REQUIRED)
        await self._delay_for(path)
        failure = self._failure_for(request.method, path)
        if failure is not None and failure[0] > 0:
            failure[0] -= 1
            return self._answer(request, path, query, body, failure[1], {"message": "Failed"})
        try:
            op, path_params = self._definitions.match(request.method, path)
        except RouteNotFound as exc:
            self._violation(request.method, path, str(exc))
            return self._answer(request, path, query, body, 404, {"message": "Resource not found"})
        except MethodNotAllowed as exc:
            self._violation(request.method, path, str(exc))
            return self._answer(request, path, query, body, 405, {"message": "Invalid method"})
        violations = self._definitions.validate(op, query, body) if self._validate else []
        for v in violations:
            self._violation(request.method, path, v.message)
        unhandled = [v for v in violations if (op.nickname, v.param) not in SELF_CHECKED]
        if unhandled:
            return self._answer(request, path, query, body, 400, {"message": unhandled[0].message})
        handler = handler_for(op.template, op.nickname)
        if handler is None:
            return self._answer(
                request, path, query, body, 501, {"message": f"{op.nickname} is not simulated"}
            )
        params: dict[str, Any] = dict(query)
        if isinstance(body, dict):
            # Asterisk reads the query first, then lets the JSON body override it
            # (ast_ari_channels_originate_parse_body runs on the body afterwards).
            params.update(body)
        status, payload = await handler(self._pbx, path_params, params)
        return self._answer(request, path, query, body, status, payload)

    async def _delay_for(self, path: str) -> None:
        delay = self._delays.get(None, 0.0)
        for channel_id, seconds in self._delays.items():
            about = f"/channels/{channel_id}"
            if channel_id is not None and (path == about or path.startswith(about + "/")):
                delay = max(delay, seconds)
        if delay > 0:
            await asyncio.sleep(delay)

    def _answer(
        self,
        request: web.Request,
        path: str,
        query: dict[str, str],
        body: Any,
        status: int,
        payload: Any,
    ) -> web.Response:
        self._record(request.method, path, query, body, status, payload)
        headers = _WWW_AUTHENTICATE if status == 401 else None
        if status == 204:
            return web.Response(status=204)
        return web.json_response(payload, status=status, headers=headers)

    def _record(
        self, method: str, path: str, query: dict[str, str], body: Any, status: int, response: Any
    ) -> None:
        if self._keep_records:
            self.requests.append(
                RecordedRequest(self._sequence.next(), method, path, query, body, status, response)
            )

    def _violation(self, method: str, path: str, message: str) -> None:
        log.warning("fake ARI: protocol violation: %s %s: %s", method, path, message)
        self.protocol_violations.append(ProtocolViolation(method, path, message))
