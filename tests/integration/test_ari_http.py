"""The ARI keep-alive HTTP client against small scripted servers on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from dialguard.ari import AriClient, AriUnavailable, ChannelGone
from dialguard.ari.client import continue_request, hangup_request, set_variable_request
from dialguard.ari.http import HttpPool, HttpTransportError

Answer = Callable[[bytes], bytes | None]


class ScriptedServer:
    """Answers each request head with `answer(head)`; None closes the connection unanswered."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                self.heads.append(head)
                reply = self.answer(head)
                if reply is None:
                    writer.close()
                    return
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def ok(body: bytes = b'{"ok": true}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@contextlib.asynccontextmanager
async def serve(answer: Answer) -> AsyncIterator[tuple[ScriptedServer, int]]:
    server = ScriptedServer(answer)
    try:
        yield server, await server.start()
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[AriClient]:
    """A client of a server that runs `handle` on each connection, for exchanges the
    scripted server, which answers each request as it reads it, cannot play."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app", timeout=2) as ari:
            yield ari
    finally:
        server.close()
        await server.wait_closed()


async def test_requests_reuse_one_kept_alive_connection() -> None:
    async with serve(lambda head: ok()) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari:
            for _ in range(5):
                assert await ari.request("GET", "/channels") == {"ok": True}
        assert server.connections == 1
        assert server.heads[0].startswith(b"GET /ari/channels HTTP/1.1\r\n")
        assert b"Authorization: Basic dTpw\r\n" in server.heads[0]


async def test_an_idle_connection_closed_by_the_server_is_replaced_once() -> None:
    answered = 0

    def answer_once_per_connection(head: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return ok() if answered % 2 == 1 else None

    async with serve(answer_once_per_connection) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari:
            assert await ari.request("POST", "/channels/1.2/continue") == {"ok": True}
            assert await ari.request("POST", "/channels/1.2/continue") == {"ok": True}
        assert server.connections == 2
        assert b"Content-Length: 0\r\n" in server.heads[0]


async def test_connection_close_is_honoured() -> None:
    reply = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    async with serve(lambda head: reply) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari:
            assert await ari.request("DELETE", "/channels/1.2", {"reason_code": 21}) is None
            assert await ari.request("DELETE", "/channels/1.2", {"reason_code": 21}) is None
        assert server.connections == 2
        assert server.heads[0].startswith(b"DELETE /ari/channels/1.2?reason_code=21 HTTP/1.1\r\n")


async def test_a_chunked_answer_is_read_whole() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n[1, 2\r\n3;ext=1\r\n, 3\r\n1\r\n]\r\n0\r\n\r\n"
    )
    async with (
        serve(lambda head: reply) as (_, port),
        AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari,
    ):
        assert await ari.request("GET", "/channels") == [1, 2, 3]


async def test_an_answer_that_never_comes_times_out_and_the_connection_is_dropped() -> None:
    stall = asyncio.Event()

    def answer(head: bytes) -> bytes | None:
        return ok() if stall.is_set() else b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{"

    async with serve(answer) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app", timeout=0.2) as ari:
            with pytest.raises(AriUnavailable):
                await ari.request("GET", "/channels")
            stall.set()
            assert await ari.request("GET", "/channels") == {"ok": True}
        assert server.connections == 2


async def test_path_and_query_cannot_smuggle_header_lines() -> None:
    async with serve(lambda head: ok()) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari:
            await ari.request("GET", "/channels/a b\r\nX: y", {"variable": "A\r\nB"})
        first_line = server.heads[0].split(b"\r\n")[0]
        assert first_line == b"GET /ari/channels/a%20b%0D%0AX:%20y?variable=A%0D%0AB HTTP/1.1"


async def test_a_closed_pool_refuses_requests() -> None:
    pool = HttpPool("127.0.0.1", 9)
    await pool.close()
    with pytest.raises(HttpTransportError):
        await pool.request(b"GET / HTTP/1.1\r\n\r\n")


async def test_requests_in_order_are_written_at_once_and_answered_in_order() -> None:
    """The server reads all three requests before it answers any: a client that waited for
    each answer before the next request would stall here."""
    heads: list[bytes] = []
    connections = 0
    answers = [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b'HTTP/1.1 404 Not Found\r\nContent-Length: 27\r\n\r\n{"message": "Channel gone"}',
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[7]\n\r\n0\r\n\r\n",
    ]

    async def serve_three(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in answers:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
        for answer in answers:
            writer.write(answer)
        writer.close()
        await writer.wait_closed()

    async with raw_server(serve_three) as ari:
        results = await ari.request_in_order(
            [
                set_variable_request("1.2", "DIALGUARD_DECISION", "allow"),
                set_variable_request("1.3", "DIALGUARD_RULE", "blacklisted"),
                continue_request("1.2", label="allowed"),
            ]
        )
    assert connections == 1
    assert [h.split(b"\r\n")[0] for h in heads] == [
        b"POST /ari/channels/1.2/variable?variable=DIALGUARD_DECISION&value=allow HTTP/1.1",
        b"POST /ari/channels/1.3/variable?variable=DIALGUARD_RULE&value=blacklisted HTTP/1.1",
        b"POST /ari/channels/1.2/continue?label=allowed HTTP/1.1",
    ]
    assert results[0] is None
    assert isinstance(results[1], ChannelGone) and results[1].channel_id == "1.3"
    assert results[2] == [7]


async def test_requests_in_order_left_unanswered_fail_alone_and_the_next_exchange_reconnects() -> (
    None
):
    answered = 0

    def answer_one_then_close(head: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n" if answered != 2 else None

    async with serve(answer_one_then_close) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app", timeout=2) as ari:
            first, second = await ari.request_in_order(
                [
                    set_variable_request("1.2", "DIALGUARD_DECISION", "deny"),
                    hangup_request("1.2", reason_code=21),
                ]
            )
            assert first is None
            assert isinstance(second, AriUnavailable) and second.channel_id == "1.2"
            assert await ari.request_in_order([continue_request("1.4")]) == [None]
        assert server.connections == 2


async def test_requests_in_order_on_an_idle_connection_the_server_dropped_go_again_whole() -> None:
    answered = 0

    def close_the_kept_connection_once(head: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return None if answered == 2 else ok()

    async with serve(close_the_kept_connection_once) as (server, port):
        async with AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app", timeout=2) as ari:
            assert await ari.request("GET", "/channels") == {"ok": True}
            # The kept connection is closed unanswered: nothing was acted on, so both go again.
            results = await ari.request_in_order([continue_request("1.2"), continue_request("1.3")])
        assert results == [{"ok": True}, {"ok": True}]
        assert server.connections == 2
        targets = [head.split(b" ")[1] for head in server.heads]
        assert targets == [
            b"/ari/channels",
            b"/ari/channels/1.2/continue",
            b"/ari/channels/1.2/continue",
            b"/ari/channels/1.3/continue",
        ]


async def test_requests_in_order_read_answers_that_arrive_a_byte_at_a_time() -> None:
    answers = (
        b"HTTP/1.1 204 No Content\r\n\r\n"
        + ok(b'{"id": "1.2"}')
        + b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
    )

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await reader.readuntil(b"\r\n\r\n")
        for i in range(len(answers)):
            writer.write(answers[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()
        await writer.wait_closed()

    async with raw_server(trickle) as ari:
        results = await ari.request_in_order(
            [continue_request("1.2"), continue_request("1.3"), continue_request("1.4")]
        )
    assert results == [None, {"id": "1.2"}, []]


def test_the_client_runs_on_uvloop() -> None:
    # `dialguard serve` runs on uvloop, whose transports are not asyncio's classes.
    uvloop = pytest.importorskip("uvloop")

    async def exchange() -> object:
        async with (
            serve(lambda head: ok()) as (_, port),
            AriClient(f"http://127.0.0.1:{port}/ari", "u", "p", "app") as ari,
        ):
            return await ari.request("GET", "/channels")

    assert uvloop.run(exchange()) == {"ok": True}
