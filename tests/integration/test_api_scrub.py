"""``POST /v1/scrub``: CSV and JSON, input order, rules and retry times; a million numbers
stream through without being held."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from tests.integration.api_harness import api_client

CID = "+12125550100"
Client = TestClient[Any, Any]
CSV = {"Content-Type": "text/csv"}
# A profile open all day, so that the verdicts do not depend on when the test runs.
ALL_DAY = {"PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00"}


@pytest.fixture
async def api(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Client]:
    await CallerIdStore(pool).add(CID, None)
    async with api_client(pool, tmp_path, **ALL_DAY) as client:
        yield client


def rows_of(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_csv_scrub_answers_every_row_in_input_order(api: Client, pool: asyncpg.Pool) -> None:
    await BlacklistStore(pool).add_number("+12122641234", source="registry")
    await BlacklistStore(pool).add_prefix("+1718264")
    async with api.post("/v1/decide", json={"caller_id": CID, "destination": "+12122641236"}):
        pass
    body = "destination,name\n+12122641234,a\n(212) 264-1235,b\nnonsense,c\n+17182641111,d\n"
    body += "+12122641236,e\n"
    async with api.post("/v1/scrub", data=body, headers=CSV) as resp:
        assert resp.status == 200 and resp.content_type == "text/csv"
        rows = rows_of(await resp.text())
    assert [(r["destination"], r["callable"], r["rule"]) for r in rows] == [
        ("+12122641234", "false", "blacklisted"),
        ("+12122641235", "true", ""),
        ("nonsense", "false", "invalid_number"),
        ("+17182641111", "false", "blacklisted"),
        ("+12122641236", "false", "destination_interval"),
    ]
    assert rows[4]["callable_at"], "the interval says when it lets go"


async def test_one_number_a_line_without_header(api: Client) -> None:
    async with api.post("/v1/scrub", data="+12122641234\r\n\r\n2122641235\r\n", headers=CSV) as r:
        rows = rows_of(await r.text())
    assert [r["destination"] for r in rows] == ["+12122641234", "+12122641235"]


async def test_json_scrub_answers_json(api: Client, pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).set_state(CID, "rested", "manual")
    body = {"numbers": ["+12122641234", "12"], "caller_id": CID}
    async with api.post("/v1/scrub", json=body) as resp:
        assert resp.status == 200
        results = (await resp.json())["results"]
    assert [(r["callable"], r["rule"]) for r in results] == [
        (False, "callerid_rested"),
        (False, "invalid_number"),
    ]
    async with api.post("/v1/scrub", json={"numbers": []}) as resp:
        assert (await resp.json()) == {"results": []}
    async with api.post("/v1/scrub", json={"numbers": [1]}) as resp:
        assert resp.status == 400


async def test_scrub_with_an_unregistered_caller_id_is_callerid_unknown(api: Client) -> None:
    async with api.post(
        "/v1/scrub", data="+12122641234\n", headers=CSV, params={"caller_id": "+12125550199"}
    ) as resp:
        assert rows_of(await resp.text())[0]["rule"] == "callerid_unknown"


async def test_malformed_csv_before_any_answer_is_400(api: Client) -> None:
    async with api.post("/v1/scrub", data='"+12122641234"x\n', headers=CSV) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert (error["line"], error["column"]) == (1, 15)
    async with api.post("/v1/scrub", data="a,b\n1,2\n", headers=CSV) as resp:
        assert resp.status == 400, "several columns and none of them the destination"


async def test_scrub_honours_calling_hours_with_the_opening_time(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # An hour of calling that is not the current hour in New York: closed now.
    hour = datetime.now(ZoneInfo("America/New_York")).hour
    start = (hour + 2) % 24 if (hour + 2) % 24 < 23 else 1
    env = {"PROFILES_DEFAULT_CALLING_HOURS": f"{start:02d}:00-{start + 1:02d}:00"}
    async with (
        api_client(pool, tmp_path, **env) as client,
        client.post("/v1/scrub", data="+12122641234\n", headers=CSV) as resp,
    ):
        row = rows_of(await resp.text())[0]
    assert (row["callable"], row["rule"]) == ("false", "calling_hours")
    opens = datetime.fromisoformat(row["callable_at"]).astimezone(ZoneInfo("America/New_York"))
    assert (opens.hour, opens.minute) == (start, 0)


@pytest.mark.slow
async def test_a_million_numbers_stream_through_without_being_held(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    total = 1_000_000
    first_answer = asyncio.Event()
    sent = 0

    async def upload() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"destination\n"
        for start in range(0, total, 10_000):
            if start == total // 5:
                # The rest of the upload waits until answers flow: a server that read the whole
                # body before answering would never get it, and the test would time out.
                await asyncio.wait_for(first_answer.wait(), timeout=60)
            lines = "".join(f"+1201{2000000 + i}\n" for i in range(start, start + 10_000))
            sent += 10_000
            yield lines.encode()

    received = 0
    tail = b""
    async with (
        api_client(pool, tmp_path, **ALL_DAY) as client,
        client.post("/v1/scrub", data=upload(), headers=CSV, timeout=None) as resp,
    ):
        assert resp.status == 200
        async for chunk in resp.content.iter_any():
            first_answer.set()
            received += chunk.count(b"\n")
            tail = (tail + chunk)[-200:]
    assert sent == total
    assert received == total + 1, "a header and one row per number"
    assert tail.endswith(f"+1201{2000000 + total - 1},true,,\n".encode())
    assert first_answer.is_set()
    # Keep the timing visible when run with -s: this is the API's end-to-end throughput.
    print(f"scrubbed {total:,} numbers through the API")


async def test_scrub_cancelled_by_the_client_stops_cleanly(api: Client) -> None:
    async def endless() -> AsyncIterator[bytes]:
        for i in range(200):
            yield "".join(f"+1201{2000000 + i * 1000 + j}\n" for j in range(1000)).encode()

    async with api.post("/v1/scrub", data=endless(), headers=CSV) as resp:
        await resp.content.readline()
    # The connection is gone; the server must still answer the next request.
    async with api.post("/v1/scrub", data="+12122641234\n", headers=CSV) as resp:
        assert resp.status == 200


async def test_malformed_line_after_answers_began_ends_the_csv_with_an_error_row(
    api: Client,
) -> None:
    good = "".join(f"+1201{2000000 + i}\n" for i in range(30_000))
    body = good + '"+12012000001"x\n' + "+12012000002\n"
    text = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with api.post("/v1/scrub", data=body, headers=CSV) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                text += chunk
    last = text.decode().rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("#error,30001,15,"), last
