"""The gate end to end in one process: fake Asterisk over real HTTP and websockets, the real
service wiring (app.Service), and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from dialguard.app import Service, Stores
from dialguard.config import load_settings
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import Call, FakeAsterisk, Outcome

CALLER = "2125550100"


@asynccontextmanager
async def running_service(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, **env: str
) -> AsyncIterator[Service]:
    settings = load_settings(
        None,
        {
            "DIALGUARD_ARI_URL": fake.base_url,
            "DIALGUARD_ARI_PASSWORD": "dialguard",
            "DIALGUARD_API_LISTEN": "127.0.0.1:0",
            "DIALGUARD_METRICS_LISTEN": "127.0.0.1:0",
            "DIALGUARD_DATA_DIR": str(tmp_path),
            # The fake puts calls through at once; keep calling hours out of these tests.
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            **env,
        },
    )
    service = Service(settings, Stores.on(pool), drain_timeout=5.0)
    await service.start()
    try:
        await fake.wait_for(lambda: service.gate.ready, timeout=5.0)
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)


def decisions_where(pool: asyncpg.Pool) -> Callable[..., Any]:
    async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    return fetch


def _stasis_id(call: Call) -> str:
    assert call.stasis is not None
    return call.stasis.id


def hangups_of(fake: FakeAsterisk, channel_id: str) -> list[Any]:
    """The hang-up requests the gate sent for a channel, first first."""
    return [
        r for r in fake.requests if r.method == "DELETE" and r.path == f"/channels/{channel_id}"
    ]


def vars_set(fake: FakeAsterisk, channel_id: str) -> dict[str, str]:
    return {
        r.query["variable"]: r.query.get("value", "")
        for r in fake.requests
        if r.method == "POST" and r.path == f"/channels/{channel_id}/variable"
    }


async def test_allowed_call_is_continued_with_channel_variables_and_its_outcome_recorded(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.set_outcome("2122641234", Outcome.answered(0.2))
    async with running_service(pool, fake, tmp_path) as service:
        call = await fake.originate_outbound("2122641234", CALLER, variables={"CAMPAIGN": "spring"})
        stasis = _stasis_id(call)
        continued = await fake.wait_for(
            lambda: [r for r in fake.requests if r.path == f"/channels/{stasis}/continue"]
        )
        assert continued[0].query.get("label") == "allowed"
        variables = vars_set(fake, stasis)
        assert variables["DIALGUARD_DECISION"] == "allow"
        fetch = decisions_where(pool)
        rows = await fetch("SELECT * FROM decisions")
        assert len(rows) == 1 and rows[0]["allowed"] and rows[0]["campaign"] == "spring"
        assert variables["DIALGUARD_DECISION_ID"] == str(rows[0]["id"])
        assert rows[0]["channel_id"] == stasis and rows[0]["source"] == "gate"

        async def outcome() -> Any:
            (row,) = await fetch("SELECT outcome, answered_seconds, cause FROM decisions")
            return row if row["outcome"] else None

        row = await _poll(outcome)
        assert row["outcome"] == "answered" and row["cause"] == 16
        assert service.gate.decided == 1
    assert fake.protocol_violations == []


async def test_a_variable_that_fails_to_set_leaves_the_allowed_call_going_and_is_logged(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The variables go in one pipelined write with the continue: the first one fails, and
    # the verdict stands without it.
    fake.fail_requests("POST", "/channels/*/variable", 1, status=500)
    fake.set_outcome("2122641234", Outcome.answered(0.1))
    async with running_service(pool, fake, tmp_path):
        call = await fake.originate_outbound("2122641234", CALLER)
        stasis = _stasis_id(call)
        continued = await fake.wait_for(
            lambda: [r for r in fake.requests if r.path == f"/channels/{stasis}/continue"]
        )
        sets = [r for r in fake.requests if r.path == f"/channels/{stasis}/variable"]
        assert [(r.query["variable"], r.status) for r in sets] == [
            ("DIALGUARD_DECISION", 500),
            ("DIALGUARD_DECISION_ID", 204),
        ]
        # In the order written: both sets before the continue.
        assert max(r.seq for r in sets) < continued[0].seq
        fetch = decisions_where(pool)

        async def outcome() -> Any:
            (row,) = await fetch("SELECT outcome FROM decisions")
            return row if row["outcome"] else None

        row = await _poll(outcome)
    assert row["outcome"] == "answered"
    assert f"channel {stasis}: POST /channels/{stasis}/variable failed" in caplog.text


async def test_denied_call_is_hung_up_with_cause_21_and_rule_variable(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    await BlacklistStore(pool).add_number("+12122641234")
    auth = {"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")}
    async with (
        running_service(pool, fake, tmp_path),
        aiohttp.ClientSession(headers=auth) as session,
        # A channel hung up in Stasis ends after it left the application: only an observer
        # that hears every channel sees it destroyed.
        session.ws_connect(f"{fake.base_url}/events?app=observer&subscribeAll=true"),
    ):
        await fake.wait_for(lambda: fake.app_connected("observer"))
        call = await fake.originate_outbound("2122641234", CALLER)
        stasis = _stasis_id(call)
        hangups = await fake.wait_for(lambda: hangups_of(fake, stasis))
        assert hangups[0].query == {"reason_code": "21"}
        assert vars_set(fake, stasis) == {
            "DIALGUARD_DECISION": "deny",
            "DIALGUARD_RULE": "blacklisted",
        }
        destroyed = await fake.wait_for_event("ChannelDestroyed", channel_id=stasis)
        assert destroyed.event["cause"] == 21
    assert fake.protocol_violations == []


async def test_deny_label_continues_to_the_announcement_instead_of_hanging_up(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    async with running_service(pool, fake, tmp_path, DIALGUARD_GATE_DENY_LABEL="denied"):
        call = await fake.originate_outbound("2122641234", CALLER)  # caller ID not registered
        stasis = _stasis_id(call)
        continued = await fake.wait_for(
            lambda: [r for r in fake.requests if r.path == f"/channels/{stasis}/continue"]
        )
        assert continued[0].query.get("label") == "denied"
        assert vars_set(fake, stasis)["DIALGUARD_RULE"] == "callerid_unknown"


async def test_second_call_inside_the_interval_is_denied(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    async with running_service(pool, fake, tmp_path):
        first = await fake.originate_outbound("2122641234", CALLER)
        await fake.wait_for(lambda: vars_set(fake, _stasis_id(first)))
        second = await fake.originate_outbound("2122641234", CALLER)
        await fake.wait_for(lambda: "DIALGUARD_RULE" in vars_set(fake, _stasis_id(second)))
        assert vars_set(fake, _stasis_id(second))["DIALGUARD_RULE"] == ("destination_interval")


@pytest.mark.parametrize(
    ("outcome", "expected", "cause", "sip"),
    [
        (Outcome.busy(), "busy", 17, 486),
        (Outcome.rejected(), "carrier_rejected", 21, None),
        (Outcome.sip(603), "carrier_rejected", 21, 603),
        (Outcome.sip(608), "carrier_rejected", 127, 608),
        (Outcome.congestion(), "congestion", 34, 503),
    ],
)
async def test_trunk_outcomes_are_recorded_from_channel_destroyed(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    outcome: Outcome,
    expected: str,
    cause: int,
    sip: int | None,
) -> None:
    fake.set_outcome("2122641234", outcome)
    fetch = decisions_where(pool)
    async with running_service(pool, fake, tmp_path):
        await fake.originate_outbound("2122641234", CALLER)

        async def recorded() -> Any:
            rows = await fetch("SELECT outcome, cause, sip_code FROM decisions")
            return rows[0] if rows and rows[0]["outcome"] else None

        row = await _poll(recorded)
    assert (row["outcome"], row["cause"], row["sip_code"]) == (expected, cause, sip)


async def _poll(check: Callable[[], Any], within: float = 5.0) -> Any:
    import asyncio

    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.02)


async def test_missing_allow_label_is_reported_and_the_call_fails_closed(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    async with running_service(pool, fake, tmp_path, DIALGUARD_GATE_ALLOW_LABEL="alowed") as svc:
        call = await fake.originate_outbound("2122641234", CALLER)
        stasis = _stasis_id(call)
        hangups = await fake.wait_for(lambda: hangups_of(fake, stasis))
        assert hangups[0].query == {"reason_code": "21"}
        value = svc.registry.get_sample_value("dialguard_dialplan_misconfigured_total")
        assert value == 1.0


async def test_a_call_that_cannot_be_decided_is_hung_up(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running_service(pool, fake, tmp_path) as svc:

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in deciding")

        monkeypatch.setattr(svc.decider, "decide", broken)
        call = await fake.originate_outbound("2122641234", CALLER)
        stasis = _stasis_id(call)
        hangups = await fake.wait_for(lambda: hangups_of(fake, stasis))
        assert hangups[0].query == {"reason_code": "21"}
        assert not [r for r in fake.requests if r.path == f"/channels/{stasis}/continue"]


async def test_application_replaced_marks_the_instance_not_ready(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    import aiohttp

    async with running_service(pool, fake, tmp_path) as service:
        assert service.gate.ready
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"{fake.base_url}/events?app=dialguard",
                headers={"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")},
            )
            await fake.wait_for(lambda: not service.gate.ready)
            assert service.readiness()[1]["replaced"] is True
            await ws.close()
