"""The fail-open spool keeps every allowed decision until it is written back."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dialguard.policy.codes import Verdict
from dialguard.policy.model import Decision
from dialguard.spool import Spool
from dialguard.store.decisions import SpooledDecision
from dialguard.store.errors import StoreUnavailable

AT = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def allowed(destination: str) -> Decision:
    return Decision(Verdict.ALLOW, None, "fail-open", None, "+12125550100", destination, "c", AT)


async def test_spooled_decisions_are_written_back_once_and_the_file_is_gone(tmp_path: Path) -> None:
    written: list[SpooledDecision] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, write_back)
    spool.append(allowed("+12122641234"), "gate", "chan-1")
    spool.append(allowed("+12122641235"), "gate", None)
    assert spool.pending() == 2
    assert await spool.flush() == 2
    assert [r.destination for r in written] == ["+12122641234", "+12122641235"]
    assert written[0].channel_id == "chan-1" and written[0].at == AT
    assert spool.pending() == 0
    assert await spool.flush() == 0


async def test_a_failed_write_back_keeps_everything_for_the_next_try(tmp_path: Path) -> None:
    attempts: list[int] = []

    async def down(rows: list[SpooledDecision]) -> None:
        attempts.append(len(rows))
        raise StoreUnavailable("still down")

    spool = Spool(tmp_path, down)
    spool.append(allowed("+12122641234"), "gate", None)
    with pytest.raises(StoreUnavailable):
        await spool.flush()
    spool.append(allowed("+12122641235"), "gate", None)  # arrives during the outage
    assert spool.pending() == 2
    written: list[SpooledDecision] = []

    async def up(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, up)
    await spool.flush()  # the file being replayed first
    await spool.flush()  # then what arrived meanwhile
    assert sorted(r.destination for r in written) == ["+12122641234", "+12122641235"]
    assert spool.pending() == 0


async def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    written: list[SpooledDecision] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, write_back)
    spool.append(allowed("+12122641234"), "gate", None)
    with (tmp_path / "pending.jsonl").open("a") as handle:
        handle.write('{"spool_id": "x", "at": ')
    await spool.flush()
    assert [r.destination for r in written] == ["+12122641234"]


async def test_a_slow_disk_does_not_hold_up_the_event_loop_and_order_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(0.2)  # a disk under load: on the writer's thread, never the loop's
        real_fsync(fd)

    monkeypatch.setattr("dialguard.spool.os.fsync", slow_fsync)
    written: list[SpooledDecision] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, write_back)
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - last)
            last = loop.time()

    beating = asyncio.create_task(heartbeat())
    started = loop.time()
    for i in range(50):
        spool.append(allowed(f"+121226412{i:02d}"), "gate", f"chan-{i}")
        await asyncio.sleep(0.002)
    appending = loop.time() - started
    assert await spool.durable(5.0)
    beating.cancel()
    assert appending < 0.5, "append returns at once, whatever the disk does"
    assert max(gaps) < 0.1, f"the loop kept turning while fsync slept (longest gap {max(gaps)})"
    assert spool.pending() == 50
    await spool.flush()
    assert [r.channel_id for r in written] == [f"chan-{i}" for i in range(50)]


async def test_a_failed_write_is_counted_and_retried_and_nothing_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    failures = 2

    def full_disk(fd: int) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("dialguard.spool.os.fsync", full_disk)
    errors: list[str] = []
    written: list[SpooledDecision] = []

    async def write_back(rows: list[SpooledDecision]) -> None:
        written.extend(rows)

    spool = Spool(tmp_path, write_back, on_error=errors.append)
    spool.append(allowed("+12122641234"), "gate", "chan-1")
    spool.append(allowed("+12122641235"), "gate", "chan-2")
    assert await spool.durable(5.0)
    assert errors == ["spool_write", "spool_write"]
    await spool.flush()
    # The failed group was taken back out of the file: each decision is there once, in order.
    assert [r.channel_id for r in written] == ["chan-1", "chan-2"]


async def test_durable_answers_false_when_the_disk_does_not_answer_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_fsync = os.fsync

    def stuck(fd: int) -> None:
        release.wait(5.0)
        real_fsync(fd)

    monkeypatch.setattr("dialguard.spool.os.fsync", stuck)

    async def write_back(rows: list[SpooledDecision]) -> None:
        return None

    spool = Spool(tmp_path, write_back)
    spool.append(allowed("+12122641234"), "gate", "chan-1")
    assert not await spool.durable(0.05)
    release.set()
    assert await spool.durable(5.0)
    await spool.stop()


async def test_write_back_errors_are_counted_and_the_loop_carries_on(tmp_path: Path) -> None:
    errors: list[str] = []
    written: list[SpooledDecision] = []
    failures = [StoreUnavailable("down"), RuntimeError("unexpected")]

    async def write_back(rows: list[SpooledDecision]) -> None:
        if failures:
            raise failures.pop(0)
        written.extend(rows)

    spool = Spool(tmp_path, write_back, interval=0.01, on_error=errors.append)
    spool.append(allowed("+12122641234"), "gate", "chan-1")
    running = asyncio.create_task(spool.write_back_forever())
    try:
        async with asyncio.timeout(5.0):
            while True:
                if written:
                    break
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert errors == ["spool_replay", "spool_replay"]
    assert [r.channel_id for r in written] == ["chan-1"]
    assert spool.pending() == 0
