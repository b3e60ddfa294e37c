"""The ARI life cycle through trouble: a subscription or a reconciliation that fails on connect
is retried until it succeeds, new calls are decided while a reconciliation runs, and the parked
channels are decided oldest first. Fake Asterisk over real websockets, real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from dialguard.app import Service, Stores
from dialguard.config import load_settings
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import Call, FakeAsterisk, Outcome
from dialguard.testing.records import RecordedRequest
from tests.integration.real_asterisk_support import poll_async
from tests.integration.test_gate import CALLER, _stasis_id

SUBSCRIPTION = "/applications/dialguard/subscription"
EVENT_FILTER = "/applications/dialguard/eventFilter"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)


@asynccontextmanager
async def started(pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path) -> AsyncIterator[Service]:
    """The service, started; unlike running_service, it does not wait for readiness."""
    settings = load_settings(
        None,
        {
            "DIALGUARD_ARI_URL": fake.base_url,
            "DIALGUARD_ARI_PASSWORD": "dialguard",
            "DIALGUARD_API_LISTEN": "127.0.0.1:0",
            "DIALGUARD_METRICS_LISTEN": "127.0.0.1:0",
            "DIALGUARD_DATA_DIR": str(tmp_path),
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS": "off",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT": "off",
            "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
        },
    )
    service = Service(settings, Stores.on(pool), drain_timeout=5.0)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def ari_time(at: datetime) -> str:
    """A time written as Asterisk writes it: 2026-11-28T14:48:08.106+0000."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def background_errors(service: Service, task: str) -> float:
    value = service.registry.get_sample_value("dialguard_background_errors_total", {"task": task})
    assert value is not None, f"dialguard_background_errors_total{{task={task!r}}} exists"
    return value


def first_request_seq(fake: FakeAsterisk, channel_id: str) -> int | None:
    for r in fake.requests:
        if r.path == f"/channels/{channel_id}" or r.path.startswith(f"/channels/{channel_id}/"):
            return r.seq
    return None


def verdict_seq(fake: FakeAsterisk, channel_id: str) -> int | None:
    """The sequence number of the request that answered the channel, None before."""
    for r in fake.requests:
        if r.path == f"/channels/{channel_id}/continue" or (
            r.method == "DELETE" and r.path == f"/channels/{channel_id}"
        ):
            return r.seq
    return None


async def park_calls(fake: FakeAsterisk, count: int) -> list[Call]:
    """A previous dialguard holds the app, receives the StasisStarts and dies without
    answering: the channels stay parked in Stasis."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"{fake.base_url}/events?app=dialguard&subscribeAll=true",
            headers={"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")},
        )
        calls = [await fake.originate_outbound(f"21226{i:05d}", CALLER) for i in range(count)]
        for call in calls:
            await fake.wait_for_event("StasisStart", channel_id=_stasis_id(call))
        await fake.drop_websocket("dialguard", abort=True)
        await ws.close()
    return calls


async def test_a_failing_trunk_subscription_is_retried_until_ready(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.fail_requests("POST", SUBSCRIPTION, 3)
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.status()["reconciled"], timeout=5.0)
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        attempts = [r for r in fake.requests if r.path == SUBSCRIPTION]
        assert [r.status for r in attempts] == [500, 500, 500, 200]
        assert background_errors(service, "ari_subscribe") == 3
        assert background_errors(service, "ari_reconcile") == 0


async def test_readiness_waits_for_the_subscription(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.fail_requests("POST", SUBSCRIPTION, 1_000_000)
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: background_errors(service, "ari_subscribe") >= 2, timeout=5.0)
        assert service.gate.status()["ari_connected"]
        assert not service.gate.ready, "without the trunk subscription outcomes would be lost"
        # Calls are decided all the same while the subscription is retried.
        call = await fake.originate_outbound("2122649999", CALLER)
        await fake.wait_for(lambda: verdict_seq(fake, _stasis_id(call)), timeout=5.0)
        fake.fail_requests("POST", SUBSCRIPTION, 0)
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)


async def test_the_event_filter_is_retried_while_asterisk_is_unavailable(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.fail_requests("PUT", EVENT_FILTER, 2, status=503)
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        attempts = [r.status for r in fake.requests if r.path == EVENT_FILTER]
        assert attempts == [503, 503, 200]
        auth = {"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")}
        async with (
            aiohttp.ClientSession(headers=auth) as session,
            session.get(f"{fake.base_url}/applications/dialguard") as response,
        ):
            application = await response.json()
    assert {e["type"] for e in application["events_allowed"]} == service.gate.events


async def test_an_asterisk_without_the_event_filter_is_served_all_the_same(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Asterisk before 16.3 has no eventFilter resource: 404, and every event type comes in.
    fake.fail_requests("PUT", EVENT_FILTER, 1_000_000, status=404)
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        call = await fake.originate_outbound("2122649999", CALLER)
        await fake.wait_for(lambda: verdict_seq(fake, _stasis_id(call)), timeout=5.0)
    assert "Asterisk refused the event filter" in caplog.text
    assert background_errors(service, "ari_subscribe") == 0


async def test_an_allowed_call_whose_subscription_went_with_the_websocket_is_followed_again(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    """With subscribe_all false the gate follows each allowed channel; a websocket lost between
    that subscription and the continue takes it along (the fake drops the application with its
    socket), and the Dial that ties the call to its trunk leg then reaches nobody. After the
    reconnect the gate follows its calls still up again, and the call's outcome is recorded:
    from its trunk leg when the renewed subscription came before the Dial, else from the
    dialling channel's own end. The call stays up 3 s, so that it is still up on a slow run."""
    fake.set_outcome("2122645555", Outcome.answered(3.0))
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        # Each request now takes 0.4 s: the verdict's four, pipelined, end 1.6 s after it.
        fake.set_rest_delay(0.4)
        call = await fake.originate_outbound("2122645555", CALLER)
        stasis = _stasis_id(call)
        follow = f"channel:{stasis}"

        def subscriptions() -> list[RecordedRequest]:
            return [r for r in fake.requests if r.query.get("eventSource") == follow]

        await fake.wait_for(subscriptions, timeout=5.0)
        # Subscribed; the continue (and so the Dial) is still 0.4 s away.
        await fake.drop_websocket("dialguard", abort=True)
        fake.set_rest_delay(0)
        await fake.wait_for(lambda: len(subscriptions()) == 2, timeout=5.0)

        async def outcome() -> str | None:
            async with pool.acquire() as conn:
                return await conn.fetchval(  # type: ignore[no-any-return]
                    "SELECT outcome FROM decisions WHERE channel_id = $1", stasis
                )

        assert await poll_async(outcome, within=15.0) in {"answered", "failed"}


async def test_a_failing_reconciliation_is_retried_and_the_parked_call_decided(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    (parked,) = await park_calls(fake, 1)
    fake.fail_requests("GET", "/channels", 2, status=503)
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        assert verdict_seq(fake, _stasis_id(parked)) is not None
        listings = [r.status for r in fake.requests if r.method == "GET" and r.path == "/channels"]
        assert listings == [503, 503, 200]
        assert background_errors(service, "ari_reconcile") == 2


async def test_new_calls_are_decided_while_the_reconciliation_runs(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    parked = await park_calls(fake, 3)
    for call in parked:
        # Asterisk is slow to answer about the parked channels: the reconciliation takes
        # seconds, as it does with a backlog of parked channels.
        fake.set_rest_delay(1.5, channel_id=_stasis_id(call))
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: fake.app_connected("dialguard"), timeout=5.0)
        fresh = await fake.originate_outbound("2122648888", CALLER)
        answered = await fake.wait_for(lambda: verdict_seq(fake, _stasis_id(fresh)), timeout=1.0)
        assert answered
        assert not service.gate.status()["reconciled"], "the reconciliation is still running"
        assert all(verdict_seq(fake, _stasis_id(c)) is None for c in parked)
        await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
        assert all(verdict_seq(fake, _stasis_id(c)) for c in parked)
    continued = [r for r in fake.requests if r.path == f"/channels/{_stasis_id(fresh)}/continue"]
    assert len(continued) == 1, "the new call was decided once, not again by the reconciliation"


async def test_parked_channels_are_decided_oldest_first(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    calls = await park_calls(fake, 24)
    # Asterisk lists channels in no particular order: here the youngest first (the fake lists
    # them in creation order, so the later-created are stamped as the older).
    base = datetime.now(UTC) - timedelta(seconds=10)
    by_id = {ch.id: ch for ch in fake.channels}
    for i, call in enumerate(calls):
        stamp = base + timedelta(milliseconds=100 * (len(calls) - i))
        by_id[_stasis_id(call)].creationtime = ari_time(stamp)
        fake.set_rest_delay(0.2, channel_id=_stasis_id(call))
    oldest = [_stasis_id(c) for c in calls[-8:]]  # created last, but stamped the oldest
    youngest = [_stasis_id(c) for c in calls[:8]]
    async with started(pool, fake, tmp_path) as service:
        await fake.wait_for(lambda: service.gate.ready, timeout=15.0)
        answered = [verdict_seq(fake, cid) for cid in oldest]
        touched = [first_request_seq(fake, cid) for cid in youngest]
    assert all(answered) and all(touched)
    assert max(a for a in answered if a) < min(t for t in touched if t), (
        "every one of the oldest parked channels was answered before the youngest were touched"
    )
