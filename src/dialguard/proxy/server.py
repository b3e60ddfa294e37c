"""The ARI proxy: Asterisk's REST and events surface on dialguard's own address.

A dialer points its ARI base URL here and changes nothing else but its credentials (the
dialers' own, not Asterisk's). Requests are routed by what they do:

- originations to a trunk are decided first (:mod:`dialguard.proxy.gatekeeper`);
- the events websocket is relayed both ways (:mod:`dialguard.proxy.relay`);
- everything else is forwarded untouched (:mod:`dialguard.proxy.upstream`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from dialguard.proxy.auth import DialerCredentials, unauthorized, without_api_key
from dialguard.proxy.gatekeeper import Decide, Gatekeeper, TrunkLinks
from dialguard.proxy.origination import ari_segments, route_of
from dialguard.proxy.relay import EventsRelay
from dialguard.proxy.upstream import Upstream, UpstreamUnavailable, json_error

log = logging.getLogger(__name__)

_PREFIX = "/ari"


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """`trunk_patterns` match ARI endpoints (named group ``destination``); `trunks` are the
    trunk endpoints ("PJSIP/carrier") whose channels a ``/dial`` may concern."""

    listen: tuple[str, int]
    username: str
    password: str
    trunk_patterns: tuple[re.Pattern[str], ...]
    campaign_variable: str
    ari_url: str
    ari_username: str
    ari_password: str
    trunks: tuple[str, ...]
    connect_timeout: float = 2.0
    read_timeout: float = 30.0
    shutdown_timeout: float = 5.0


class AriProxy:
    """Owns its HTTP server, its session to Asterisk and the relayed websockets.

    :meth:`start` binds the listen address; :meth:`stop` closes the relayed websockets, lets
    requests in flight finish (up to ``shutdown_timeout``), then closes the session.
    """

    def __init__(
        self,
        config: ProxyConfig,
        decider: Decide,
        links: TrunkLinks,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._config = config
        self._credentials = DialerCredentials(config.username, config.password)
        self._upstream = Upstream(
            config.ari_url,
            config.ari_username,
            config.ari_password,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
        )
        self.gatekeeper = Gatekeeper(
            decider,
            links,
            self._upstream,
            trunk_patterns=config.trunk_patterns,
            campaign_variable=config.campaign_variable,
            trunk_channel_prefixes=tuple(t + "-" for t in config.trunks),
            clock=clock,
        )
        self.relay = EventsRelay(self._upstream)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the ARI proxy is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """The ARI base URL dialers use, "http://HOST:PORT/ari"."""
        return f"http://{self._config.listen[0]}:{self.port}{_PREFIX}"

    async def start(self) -> None:
        await self._upstream.start()
        app = web.Application()
        app.router.add_route("*", _PREFIX, self._handle)
        app.router.add_route("*", _PREFIX + "/{tail:.*}", self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_proxied)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._config.shutdown_timeout,
        )
        await self._runner.setup()
        host, port = self._config.listen
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError:
            await self.stop()
            raise
        self._port = int(self._runner.addresses[0][1])
        log.info("ARI proxy listening on %s, forwarding to %s", self.base_url, self._config.ari_url)

    async def stop(self) -> None:
        await self.relay.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._upstream.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self._credentials.admit(request):
            # Never the credentials, never the query (an api_key may be in it).
            log.warning(
                "proxy: refused %s %s from %s: wrong or missing dialer credentials",
                request.method,
                request.path,
                request.remote,
            )
            return unauthorized()
        raw_path = request.raw_path.partition("?")[0].removeprefix(_PREFIX)
        if any(segment in (".", "..") for segment in raw_path.split("/")):
            # No ARI client needs them, and passed on they could reach past /ari on
            # Asterisk's HTTP server with dialguard's credentials.
            return json_error(400, "dialguard: dot segments are not accepted in ARI paths")
        tail = _raw_tail(request)
        try:
            if _is_websocket_upgrade(request) and ari_segments(raw_path) == ["events"]:
                return await self.relay.open(request, tail)
            # Routed on the raw path, read as Asterisk reads it, not on aiohttp's decoding.
            route = route_of(request.method, raw_path)
            if route is None:
                return await self._upstream.forward(request, tail)
            return await self.gatekeeper.handle(request, route, tail)
        except UpstreamUnavailable as exc:
            return exc.response()

    async def _not_proxied(self, request: web.Request) -> web.StreamResponse:
        return json_error(404, f"dialguard: only {_PREFIX}/ is proxied")


def _raw_tail(request: web.Request) -> str:
    """The raw path and query below /ari, byte for byte, minus any api_key."""
    path, sep, query = request.raw_path.partition("?")
    tail = path[len(_PREFIX) :] if path.startswith(_PREFIX) else path
    query = without_api_key(query) if sep else ""
    return tail + ("?" + query if query else "")


def _is_websocket_upgrade(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"
