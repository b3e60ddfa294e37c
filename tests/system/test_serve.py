"""The `dialguard serve` process end to end: fake Asterisk, admin API health, metrics, signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from dialguard.store.callerids import CallerIdStore
from dialguard.testing import Call, FakeAsterisk
from dialguard.testing.polling import stderr_once_exited
from dialguard.testing.polling import wait_ready as serve_ready

DIALGUARD = str(Path(sys.executable).parent / "dialguard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, proc: asyncio.subprocess.Process, api: str, metrics: str) -> None:
        self.proc = proc
        self.api = api
        self.metrics = metrics


@asynccontextmanager
async def serve_process(
    db_dsn: str, fake: FakeAsterisk, tmp_path: Path, **extra: str
) -> AsyncIterator[ServeProcess]:
    api_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DIALGUARD_DATABASE_URL": db_dsn,
        "DIALGUARD_DATA_DIR": str(tmp_path),
        "DIALGUARD_ARI_URL": fake.base_url,
        "DIALGUARD_ARI_PASSWORD": "dialguard",
        "DIALGUARD_API_LISTEN": f"127.0.0.1:{api_port}",
        "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
        **extra,
    }
    proc = await asyncio.create_subprocess_exec(
        DIALGUARD, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    server = ServeProcess(proc, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}")
    try:
        await wait_ready(server)
        yield server
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_ready(server: ServeProcess, within: float = 20.0) -> None:
    await serve_ready(server.api, lambda: stderr_once_exited(server.proc), within, 0.1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


def answered(fake: FakeAsterisk, call: Call) -> str | None:
    assert call.stasis is not None
    for r in fake.requests:
        if r.path == f"/channels/{call.stasis.id}/continue":
            return str(r.query.get("label"))
        if r.method == "DELETE" and r.path == f"/channels/{call.stasis.id}":
            return "hangup"
    return None


async def test_serve_gates_calls_and_exports_metrics(
    pool: asyncpg.Pool, db_dsn: str, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    async with serve_process(db_dsn, fake, tmp_path) as server:
        allowed = await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(lambda: answered(fake, allowed))
        denied = await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(lambda: answered(fake, denied))
        assert answered(fake, allowed) == "allowed"
        assert answered(fake, denied) == "hangup"
        async with aiohttp.ClientSession() as session:
            async with session.get(server.metrics + "/metrics") as resp:
                text = await resp.text()
            async with session.get(server.api + "/healthz") as resp:
                assert resp.status == 200
        assert (
            'dialguard_decisions_total{campaign="default",rule="none",verdict="allow"} 1.0' in text
        )
        assert (
            'dialguard_decisions_total{campaign="default",rule="destination_interval",'
            'verdict="deny"} 1.0' in text
        )
        assert "dialguard_ari_connected 1.0" in text
        # Two decisions, one after the other: each went to the database alone.
        assert 'dialguard_decision_batch_size_bucket{le="1.0"} 2.0' in text
        # serve froze its start-up objects with a full collection, and measured it.
        assert re.search(r'dialguard_gc_pause_seconds_count\{generation="2"\} [1-9]', text)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0


async def test_sigterm_finishes_decisions_in_flight(
    pool: asyncpg.Pool, db_dsn: str, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    async with serve_process(db_dsn, fake, tmp_path) as server:
        fake.set_rest_delay(1.0)  # every command answer takes a second: decisions are in flight
        calls = [await fake.originate_outbound(f"21226412{i:02d}", "2125550100") for i in range(5)]
        await fake.wait_for(
            lambda: (
                len([r for r in fake.requests if r.path.endswith("/variable")]) > 0
                or any(e.type == "StasisStart" for e in fake.events_sent)
            ),
            timeout=5,
        )
        await asyncio.sleep(0.2)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 20) == 0
    assert all(answered(fake, c) == "allowed" for c in calls), "every call in flight answered"


async def test_fatal_start_up_problem_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    env = {**os.environ, "DIALGUARD_GATE_FAIL_MODE": "sideways", "DIALGUARD_API_LISTEN": "x"}
    proc = await asyncio.create_subprocess_exec(
        DIALGUARD, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 2, "one line per problem, every problem at once"
    assert any("DIALGUARD_GATE_FAIL_MODE" in line for line in lines)
    assert "Traceback" not in err.decode()


async def test_port_in_use_is_one_line_and_exit_1(db_dsn: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "DIALGUARD_DATABASE_URL": db_dsn,
            "DIALGUARD_DATA_DIR": str(tmp_path),
            "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{port}",
            "DIALGUARD_API_LISTEN": f"127.0.0.1:{free_port()}",
            "DIALGUARD_ARI_URL": "http://127.0.0.1:9/ari",
        }
        proc = await asyncio.create_subprocess_exec(
            DIALGUARD,
            "serve",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    assert "cannot listen" in text


async def test_sighup_reloads_profiles_for_the_next_decision(
    pool: asyncpg.Pool, db_dsn: str, fake: FakeAsterisk, tmp_path: Path
) -> None:
    await CallerIdStore(pool).add("+12125550100", None)
    config = tmp_path / "dialguard.toml"
    config.write_text('[profiles.default]\ndestination_min_interval = "4h"\n')
    async with serve_process(db_dsn, fake, tmp_path, DIALGUARD_CONFIG=str(config)) as server:
        first = await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(lambda: answered(fake, first))
        second = await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(lambda: answered(fake, second))
        assert answered(fake, second) == "hangup"
        config.write_text('[profiles.default]\ndestination_min_interval = "off"\n')
        server.proc.send_signal(signal.SIGHUP)
        assert server.proc.stderr is not None
        async with asyncio.timeout(10):
            while b"profiles reloaded" not in await server.proc.stderr.readline():
                pass
        third = await fake.originate_outbound("2122641234", "2125550100")
        await fake.wait_for(lambda: answered(fake, third))
        assert answered(fake, third) == "allowed"
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0
