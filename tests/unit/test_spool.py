"""The fail-open spool keeps every allowed decision until it is written back."""

from __future__ import annotations

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
