"""Hostile CSV: a body or file whose quote never closes, or whose line never ends, is refused
quickly and in bounded memory, with the line named: 400 from the admin API (imports and
scrub), exit 2 from the CLI."""

from __future__ import annotations

import os
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.integration.api_harness import AUTH, api_client

DIALGUARD = Path(sys.executable).parent / "dialguard"
SIZE = 50 * 1024 * 1024
CSV_PATHS = ["/v1/blacklist/import", "/v1/complaints/import", "/v1/scrub?caller_id=%2B12125550100"]
# A header and one good row, then the hostile record on line 3.
OPEN_QUOTE = ('destination\n+12122641234\n"+1212', "2641234 and so on\n")
NO_LINE_END = ("destination\n+12122641234\n+1212", "1")


async def body(head: str, unit: str, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    """``size`` bytes made as they are sent: never held whole by the client either."""
    block = (unit * (65536 // len(unit) + 1))[:65536].encode()
    yield head.encode()
    sent[0] = len(head)
    while sent[0] < size:
        yield block
        sent[0] += len(block)


@pytest.mark.parametrize("path", CSV_PATHS)
@pytest.mark.parametrize("hostile", [OPEN_QUOTE, NO_LINE_END], ids=["open_quote", "no_line_end"])
async def test_a_50_mb_body_that_never_ends_its_record_is_refused_quickly_in_bounded_memory(
    pool: asyncpg.Pool, tmp_path: Path, path: str, hostile: tuple[str, str]
) -> None:
    async with api_client(pool, tmp_path) as api:
        sent = [0]
        tracemalloc.start()
        try:
            started = time.perf_counter()
            response = await api.post(
                path,
                data=body(*hostile, SIZE, sent),
                headers={**AUTH, "Content-Type": "text/csv"},
            )
            answer = await response.json()
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert response.status == 400, answer
    error = answer["error"]
    assert error["code"] == "malformed_body"
    assert error["line"] == 3
    assert "line 3" in error["message"] and "longer than" in error["message"]
    assert seconds < 5.0, f"answered in {seconds:.2f} s"
    assert peak < 16 * 1024 * 1024, f"peak {peak:,} bytes traced"
    print(
        f"{path} {hostile[1][:8]!r}: 400 in {seconds:.3f} s after {sent[0] / 2**20:.1f} MiB"
        f" sent, peak {peak / 2**20:.1f} MiB traced"
    )


async def test_a_field_past_the_bound_is_refused_with_its_line_and_column(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    csv = "destination,reason\n+12122641234,ok\n+12122641235," + "x" * (200 * 1024) + "\n"
    async with api_client(pool, tmp_path) as api:
        response = await api.post(
            "/v1/blacklist/import", data=csv, headers={**AUTH, "Content-Type": "text/csv"}
        )
        answer = await response.json()
    assert response.status == 400
    assert (answer["error"]["line"], answer["error"]["column"]) == (3, 14)
    assert "field longer than" in answer["error"]["message"]


async def test_records_just_inside_the_bounds_are_taken(pool: asyncpg.Pool, tmp_path: Path) -> None:
    # A quoted reason over several lines, well within the bound, split across blocks.
    reason = "line one\nline two, with a comma\n" + "y" * 1000
    csv = f'destination,reason\n+12122641234,"{reason}"\n+12122641235,short\n'
    async with api_client(pool, tmp_path) as api:
        response = await api.post(
            "/v1/blacklist/import", data=csv, headers={**AUTH, "Content-Type": "text/csv"}
        )
        answer = await response.json()
    assert response.status == 200, answer
    assert answer["imported"] == 2


def write_hostile(path: Path, head: str, unit: str, size: int) -> None:
    block = unit * (65536 // len(unit) + 1)
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(head)
        written = len(head)
        while written < size:
            handle.write(block)
            written += len(block)


@pytest.mark.parametrize(
    "command",
    [("blacklist", "import"), ("complaints", "import"), ("scrub",)],
    ids=["blacklist_import", "complaints_import", "scrub"],
)
@pytest.mark.parametrize("hostile", [OPEN_QUOTE, NO_LINE_END], ids=["open_quote", "no_line_end"])
async def test_the_cli_refuses_a_hostile_file_with_the_line_and_exit_2(
    db_dsn: str, tmp_path: Path, command: tuple[str, ...], hostile: tuple[str, str]
) -> None:
    import asyncio

    leads = tmp_path / "hostile.csv"
    write_hostile(leads, *hostile, SIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    env["DIALGUARD_DATA_DIR"] = str(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        str(DIALGUARD),
        *command,
        str(leads),
        "--database",
        db_dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    started = time.perf_counter()
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    seconds = time.perf_counter() - started
    message = err.decode()
    assert proc.returncode == 2, message
    assert "line 3" in message and "longer than" in message, message
    assert "Traceback" not in message
    assert seconds < 10.0
