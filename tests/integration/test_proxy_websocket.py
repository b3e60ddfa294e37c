"""The events websocket through the ARI proxy: the dialer sees what Asterisk sends, frames and
close codes go both ways, pings are answered by the far end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from dialguard.testing import FakeAsterisk, Outcome
from tests.integration.test_proxy_originations import ASTERISK_AUTH, DIALER_AUTH
from tests.integration.test_proxy_passthrough import standalone_proxy


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk() as f:
        yield f


async def receive_texts(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    texts: list[str] = []
    async with asyncio.timeout(5.0):
        while len(texts) < count:
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            texts.append(msg.data)
    return texts


async def test_dialer_websocket_sees_the_events_asterisk_sends_in_the_same_order(
    fake: FakeAsterisk,
) -> None:
    fake.set_outcome("15550100", Outcome.answered(0.05))
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer&subscribeAll=true")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        call = await fake.originate_direct_to_trunk("15550100")
        await asyncio.wait_for(call.ended.wait(), 5.0)
        sent = [e.event for e in fake.events(app="dialer")]
        assert sent, "the call produced events for the dialer's application"
        received = await receive_texts(ws, len(sent))
        await ws.close()
    assert [json.loads(t) for t in received] == sent


async def test_asterisk_closing_the_socket_reaches_the_dialer_with_its_close_code(
    fake: FakeAsterisk,
) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        await fake.drop_websocket("dialer", abort=False)
        msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1000


async def test_asterisk_dropping_the_socket_cuts_the_dialers_connection(
    fake: FakeAsterisk,
) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        await fake.drop_websocket("dialer", abort=True)
        msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)
    assert ws.closed


async def test_dialer_closing_its_socket_releases_the_application_in_asterisk(
    fake: FakeAsterisk,
) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        await ws.close()
        await fake.wait_for(lambda: not fake.app_connected("dialer"))


async def test_asterisks_refusal_of_the_handshake_reaches_the_dialer(fake: FakeAsterisk) -> None:
    async with (
        standalone_proxy(fake.base_url) as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as through:
            await dialer.ws_connect(f"{proxy.base_url}/events")  # no app: Asterisk says 400
    async with aiohttp.ClientSession(headers=ASTERISK_AUTH) as direct:
        with pytest.raises(aiohttp.WSServerHandshakeError) as straight:
            await direct.ws_connect(f"{fake.base_url}/events")
    assert through.value.status == straight.value.status == 400


# -- both directions, against an echoing peer -----------------------------------------------------


class EchoAsterisk:
    """A websocket peer at /ari/events that echoes, records what it got, and closes on demand."""

    def __init__(self) -> None:
        self.received: list[tuple[WSMsgType, Any, Any]] = []
        self.socket: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ari/events", self._events)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _events(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False, protocols=("ari",))
        await ws.prepare(request)
        self.socket = ws
        async for msg in ws:
            self.received.append((msg.type, msg.data, msg.extra))
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo: " + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await ws.pong(msg.data)
        self.received.append((WSMsgType.CLOSE, ws.close_code, None))
        return ws


@pytest.fixture
async def echo() -> AsyncIterator[EchoAsterisk]:
    peer = EchoAsterisk()
    await peer.start()
    yield peer
    await peer.stop()


async def test_frames_pings_and_the_dialers_close_code_reach_asterisk(echo: EchoAsterisk) -> None:
    async with (
        standalone_proxy(f"http://127.0.0.1:{echo.port}/ari") as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(
            f"{proxy.base_url}/events?app=dialer", autoping=False, protocols=("ari",)
        )
        assert ws.protocol == "ari"
        await ws.send_str('{"type":"hello"}')
        assert (await ws.receive()).data == 'echo: {"type":"hello"}'
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive()).data == b"\x00\x01"
        await ws.ping(b"are you there")
        pong = await asyncio.wait_for(ws.receive(), 5.0)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
        await ws.close(code=4001, message=b"dialer done")
        await _until(lambda: echo.received and echo.received[-1][0] is WSMsgType.CLOSE)
    kinds = [(kind, data) for kind, data, _ in echo.received]
    assert (WSMsgType.PING, b"are you there") in kinds, "the ping went all the way"
    assert echo.received[-1][1] == 4001


async def test_asterisks_close_code_and_reason_reach_the_dialer(echo: EchoAsterisk) -> None:
    async with (
        standalone_proxy(f"http://127.0.0.1:{echo.port}/ari") as proxy,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
        await _until(lambda: echo.socket is not None)
        assert echo.socket is not None
        await echo.socket.close(code=4002, message=b"asterisk says bye")
        msg = await asyncio.wait_for(ws.receive(), 5.0)
    assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 4002, "asterisk says bye")


async def test_stopping_the_proxy_tells_both_sides_it_is_going_away(echo: EchoAsterisk) -> None:
    async with aiohttp.ClientSession(headers=DIALER_AUTH) as dialer:
        async with standalone_proxy(f"http://127.0.0.1:{echo.port}/ari") as proxy:
            ws = await dialer.ws_connect(f"{proxy.base_url}/events?app=dialer")
            await _until(lambda: echo.socket is not None)
        msg = await asyncio.wait_for(ws.receive(), 5.0)
        await _until(lambda: echo.received and echo.received[-1][0] is WSMsgType.CLOSE)
    assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
    assert echo.received[-1][1] == 1001


async def _until(check: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)
