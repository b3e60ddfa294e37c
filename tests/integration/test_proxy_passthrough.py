"""Everything that is not an origination passes the ARI proxy untouched; the dialers' own
credentials guard it; an Asterisk that is away or silent gives a prompt ARI-style error."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from dialguard.policy.model import Decision, DecisionRequest
from dialguard.proxy import AriProxy, ProxyConfig
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import FakeAsterisk
from tests.integration.test_gate import CALLER
from tests.integration.test_proxy_originations import (
    ASTERISK_AUTH,
    DIALER_AUTH,
    TRUNK_ENDPOINT,
    proxied_service,
    proxy_url,
    recorded_outcome,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk() as f:
        yield f


@pytest.fixture
async def sessions() -> AsyncIterator[tuple[aiohttp.ClientSession, aiohttp.ClientSession]]:
    """(dialer through the proxy, the same client straight to Asterisk)."""
    async with (
        aiohttp.ClientSession(headers=DIALER_AUTH, auto_decompress=False) as dialer,
        aiohttp.ClientSession(headers=ASTERISK_AUTH, auto_decompress=False) as direct,
    ):
        yield dialer, direct


class NeverAsked:
    """A decider and outcome tracker for a proxy that must not decide anything."""

    async def decide(self, request: DecisionRequest) -> Decision:
        raise AssertionError("nothing here is an origination to decide")

    def allowed_trunk(
        self, channel_id: str, decision_id: int | None, campaign: str, caller_id: str
    ) -> None:
        raise AssertionError("nothing to link")

    def not_placed(
        self,
        decision_id: int | None,
        campaign: str,
        caller_id: str,
        at: datetime,
        *,
        channel_id: str | None = None,
    ) -> None:
        raise AssertionError("nothing to record")


@asynccontextmanager
async def standalone_proxy(ari_url: str, **options: Any) -> AsyncIterator[AriProxy]:
    """The proxy alone, in front of `ari_url`, with a decider that is never asked."""
    config = ProxyConfig(
        listen=("127.0.0.1", 0),
        username="dialer",
        password="dialer-secret",
        trunk_patterns=(re.compile(r"^PJSIP/(?P<destination>[^@]+)@carrier$"),),
        campaign_variable="CAMPAIGN",
        ari_url=ari_url,
        ari_username="dialguard",
        ari_password="dialguard",
        trunks=("PJSIP/carrier",),
        **options,
    )
    never = NeverAsked()
    proxy = AriProxy(config, never, never)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def exchange(
    session: aiohttp.ClientSession, method: str, url: str | URL, **kw: Any
) -> tuple[int, bytes, str | None]:
    async with session.request(method, url, **kw) as resp:
        return resp.status, await resp.read(), resp.headers.get("Content-Type")


# -- pass-through ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "tail", "options"),
    [
        ("GET", "/endpoints", {}),
        ("GET", "/endpoints/PJSIP/carrier", {}),
        ("GET", "/applications/dialer", {}),
        ("GET", "/channels/no-such-channel", {}),
        ("DELETE", "/channels/no-such-channel?reason=no%5Fanswer", {}),
        ("PUT", "/channels", {}),
        ("GET", "/no/such/resource", {}),
        ("POST", "/channels/no-such-channel/continue", {"json": {"label": "allowed"}}),
        ("POST", "/channels/no-such-channel/variable?variable=A&value=b%20c", {}),
        ("GET", "/api-docs/channels.json", {}),
        ("GET", "/api-docs/endpoints.json", {}),
    ],
)
async def test_non_origination_requests_pass_byte_for_byte_with_asterisks_status(
    fake: FakeAsterisk,
    sessions: tuple[aiohttp.ClientSession, aiohttp.ClientSession],
    method: str,
    tail: str,
    options: dict[str, Any],
) -> None:
    dialer, direct = sessions
    async with standalone_proxy(fake.base_url) as proxy:
        through = await exchange(dialer, method, proxy.base_url + tail, **options)
        straight = await exchange(direct, method, fake.base_url + tail, **options)
    assert through == straight
    seen = [(r.method, r.path, r.query, r.body) for r in fake.requests]
    assert seen[0] == seen[1], "Asterisk saw the same request both ways"


async def test_a_streamed_answer_larger_than_the_buffer_arrives_whole(
    fake: FakeAsterisk, sessions: tuple[aiohttp.ClientSession, aiohttp.ClientSession]
) -> None:
    dialer, _ = sessions
    async with standalone_proxy(fake.base_url) as proxy:
        status, body, _ = await exchange(dialer, "GET", f"{proxy.base_url}/api-docs/channels.json")
    expected = fake._definitions.document("channels.json")
    assert status == 200 and expected is not None and len(expected) > 64 * 1024
    assert body == expected


async def test_dialer_credentials_in_api_key_are_accepted_and_never_reach_asterisk(
    fake: FakeAsterisk,
) -> None:
    async with standalone_proxy(fake.base_url) as proxy, aiohttp.ClientSession() as anonymous:
        status, _, _ = await exchange(
            anonymous, "GET", f"{proxy.base_url}/endpoints?api_key=dialer:dialer-secret"
        )
    assert status == 200
    (seen,) = [r for r in fake.requests if r.path == "/endpoints"]
    assert seen.query == {} and seen.status == 200


async def test_an_origination_with_an_unreadable_body_is_refused_like_asterisk_and_kept_back(
    fake: FakeAsterisk, sessions: tuple[aiohttp.ClientSession, aiohttp.ClientSession]
) -> None:
    dialer, _ = sessions
    async with standalone_proxy(fake.base_url) as proxy:
        status, body, _ = await exchange(
            dialer,
            "POST",
            f"{proxy.base_url}/channels",
            data=b'{"endpoint": "PJSIP/2122641234@carrier"',
            headers={"Content-Type": "application/json"},
        )
    assert (status, body) == (400, b'{"message":"Error parsing request body"}')
    assert fake.requests == []


# -- the dialers' credentials ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": aiohttp.encode_basic_auth("dialer", "wrong-secret")},
        # Asterisk's own credentials are not the dialers': they open nothing here.
        ASTERISK_AUTH,
        {"Authorization": "Bearer dialer-secret"},
        {"Authorization": "Basic !!not-base64!!"},
    ],
)
async def test_wrong_or_missing_dialer_credentials_get_asterisks_401(
    fake: FakeAsterisk, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession() as client,
        client.get(f"{proxy.base_url}/channels", headers=headers) as resp,
    ):
        status, body = resp.status, await resp.read()
        challenge = resp.headers.get("WWW-Authenticate", "")
        content_type = resp.headers.get("Content-Type", "")
    assert status == 401 and body == b'{"message":"Authentication required"}'
    assert challenge.startswith("Basic realm=") and content_type.startswith("application/json")
    assert [r for r in fake.requests if r.path == "/channels"] == []
    assert "refused GET /ari/channels" in caplog.text
    for secret in (
        "wrong-secret",
        "dialer-secret",
        base64.b64encode(b"dialer:wrong-secret").decode(),
    ):
        assert secret not in caplog.text


async def test_wrong_dialer_credentials_cannot_open_the_events_websocket(
    fake: FakeAsterisk,
) -> None:
    async with standalone_proxy(fake.base_url) as proxy, aiohttp.ClientSession() as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(
                f"{proxy.base_url}/events?app=dialer",
                headers={"Authorization": aiohttp.encode_basic_auth("dialer", "nope")},
            )
    assert refused.value.status == 401
    assert not fake.app_connected("dialer")


async def test_paths_outside_ari_are_not_proxied(fake: FakeAsterisk) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as client,
    ):
        outside, _, _ = await exchange(client, "GET", f"http://127.0.0.1:{proxy.port}/httpstatus")
        climbing, _, _ = await exchange(
            client, "GET", URL(f"{proxy.base_url}/../httpstatus", encoded=True)
        )
    assert (outside, climbing) == (404, 400)
    assert fake.requests == []


# -- Asterisk away or silent ---------------------------------------------------------------------


async def test_asterisk_down_gives_a_prompt_503_with_a_json_message() -> None:
    port = _free_port()
    async with (
        standalone_proxy(f"http://127.0.0.1:{port}/ari") as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        started = time.monotonic()
        async with dialer.get(f"{proxy.base_url}/channels") as resp:
            status, document = resp.status, await resp.json()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
    assert status == 503 and document["message"].startswith("dialguard: ")
    assert refused.value.status == 503
    assert time.monotonic() - started < 2.0


async def test_asterisk_that_accepts_but_never_answers_gives_a_502_after_the_read_timeout() -> None:
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # keep the connection open, say nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            standalone_proxy(f"http://127.0.0.1:{port}/ari", read_timeout=0.3) as proxy,
            aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
        ):
            started = time.monotonic()
            async with dialer.get(f"{proxy.base_url}/channels") as resp:
                status, document = resp.status, await resp.json()
            elapsed = time.monotonic() - started
    finally:
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()
    assert status == 502 and "did not answer" in document["message"]
    assert elapsed < 2.0


class ForgetfulAsterisk:
    """Answers the first request on each connection, keeps it open, then drops it unanswered
    on the next one: what a keep-alive connection closed by Asterisk as it is reused looks like.
    """

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.split(b"\r\n", 1)[0])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
        )
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()


async def test_a_keep_alive_connection_asterisk_dropped_is_retried_only_when_idempotent() -> None:
    asterisk = ForgetfulAsterisk()
    await asterisk.start()
    try:
        async with (
            standalone_proxy(f"http://127.0.0.1:{asterisk.port}/ari") as proxy,
            aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
        ):
            first = await exchange(dialer, "GET", f"{proxy.base_url}/channels")
            second = await exchange(dialer, "GET", f"{proxy.base_url}/channels")
            dropped, _, _ = await exchange(dialer, "POST", f"{proxy.base_url}/channels/x/ring")
    finally:
        await asterisk.stop()
    assert first[0] == second[0] == 200 and second[1] == b"[]"
    assert dropped == 502, "a request that may have acted is not sent twice"


async def test_allowed_originate_while_asterisk_is_down_answers_503_and_is_recorded_failed(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    async with (
        proxied_service(pool, fake, tmp_path) as service,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        await fake.stop()
        started = time.monotonic()
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={"endpoint": TRUNK_ENDPOINT, "extension": "s", "callerId": CALLER},
        ) as resp:
            status, document = resp.status, await resp.json()
        assert time.monotonic() - started < 2.0
        assert status == 503 and document == {"message": "dialguard: Asterisk ARI is unreachable"}
        outcome = await recorded_outcome(pool)
        assert outcome["allowed"] and outcome["outcome"] == "failed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
