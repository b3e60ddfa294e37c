"""The bypass detector: a call on the trunk that no allowed decision explains (neither the
dialplan gate nor the ARI proxy) is counted, logged, and with ``gate.enforce_gate`` hung up
with cause 21. Through the fake Asterisk, the real service and PostgreSQL.

The detector judges a trunk channel after ``ungated_grace`` (2 s), so these tests take seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from dialguard.app import Service
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import FakeAsterisk, Outcome
from tests.integration.test_gate import CALLER, running_service
from tests.integration.test_proxy_originations import (
    ASTERISK_AUTH,
    DESTINATION,
    DIALER_AUTH,
    TRUNK_ENDPOINT,
    proxied_service,
    proxy_url,
    recorded_outcome,
    requests_to,
    ungated,
)

GRACE = 2.0  # GateConfig.ungated_grace
ENFORCE = {"DIALGUARD_GATE_ENFORCE_GATE": "true"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)


async def counted(service: Service, value: float = 1.0, within: float = GRACE + 3.0) -> None:
    """Wait until the ungated-calls counter reaches `value`."""
    async with asyncio.timeout(within):
        while True:
            if ungated(service) >= value:
                return
            await asyncio.sleep(0.05)


def hangups_of(fake: FakeAsterisk, channel_id: str) -> list[dict[str, str]]:
    return [r.query for r in requests_to(fake, "DELETE", f"/channels/{channel_id}")]


async def test_direct_trunk_origination_is_counted_and_logged_with_channel_name_and_caller_id(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_service(pool, fake, tmp_path) as service:
        call = await fake.originate_direct_to_trunk(
            DESTINATION, CALLER, outcome=Outcome.answered(GRACE + 1.5)
        )
        assert call.trunk is not None
        await counted(service)
        assert hangups_of(fake, call.trunk.id) == [], "only counted without enforcement"
    (line,) = [r.getMessage() for r in caplog.records if "ungated call" in r.getMessage()]
    assert call.trunk.name in line and CALLER in line
    assert ungated(service) == 1


async def test_with_enforcement_a_direct_trunk_origination_is_hung_up_with_cause_21(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    async with running_service(pool, fake, tmp_path, **ENFORCE) as service:
        call = await fake.originate_direct_to_trunk(
            DESTINATION, CALLER, outcome=Outcome.answered(30.0)
        )
        assert call.trunk is not None
        destroyed = await fake.wait_for_event(
            "ChannelDestroyed", channel_id=call.trunk.id, timeout=GRACE + 3.0
        )
        assert destroyed.event["cause"] == 21
        assert hangups_of(fake, call.trunk.id) == [{"reason_code": "21"}]
        assert ungated(service) == 1


async def test_proxy_allowed_trunk_origination_is_not_ungated_and_its_outcome_is_recorded(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.set_outcome(DESTINATION, Outcome.answered(GRACE + 1.0))
    async with (
        proxied_service(pool, fake, tmp_path, **ENFORCE) as service,
        aiohttp.ClientSession(headers=DIALER_AUTH) as dialer,
    ):
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={"endpoint": TRUNK_ENDPOINT, "extension": "s", "callerId": CALLER},
        ) as resp:
            assert resp.status == 200
            channel_id = (await resp.json())["id"]
        outcome = await recorded_outcome(pool)
        assert (outcome["outcome"], outcome["cause"]) == ("answered", 16)
        assert outcome["answered_seconds"] >= GRACE
        assert ungated(service) == 0
        assert hangups_of(fake, channel_id) == []


async def test_gate_allowed_calls_trunk_leg_is_not_ungated(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, registered: None
) -> None:
    fake.set_outcome(DESTINATION, Outcome.answered(GRACE + 1.0))
    async with running_service(pool, fake, tmp_path, **ENFORCE) as service:
        call = await fake.originate_outbound(DESTINATION, CALLER)
        await asyncio.wait_for(call.ended.wait(), GRACE + 4.0)
        assert call.trunk is not None and call.causes()[call.trunk.name] == 16
        assert ungated(service) == 0


async def test_a_created_channel_is_judged_only_once_it_is_dialed_straight_to_asterisk(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    fake.set_outcome(DESTINATION, Outcome.answered(30.0))
    async with (
        running_service(pool, fake, tmp_path, **ENFORCE) as service,
        aiohttp.ClientSession(headers=ASTERISK_AUTH) as direct,
    ):
        app = await direct.ws_connect(f"{fake.base_url}/events?app=dialer")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        async with direct.post(
            f"{fake.base_url}/channels/create", json={"endpoint": TRUNK_ENDPOINT, "app": "dialer"}
        ) as resp:
            channel_id = (await resp.json())["id"]
        await asyncio.sleep(GRACE + 0.5)  # created, not dialed: no call placed yet
        assert ungated(service) == 0
        async with direct.post(f"{fake.base_url}/channels/{channel_id}/dial") as resp:
            assert resp.status == 204
        await counted(service, within=2 * GRACE + 2.0)
        destroyed = await fake.wait_for_event("ChannelDestroyed", channel_id=channel_id)
        assert destroyed.event["cause"] == 21
        await app.close()


async def test_a_direct_trunk_call_that_ends_within_the_grace_time_is_still_counted(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_service(pool, fake, tmp_path, **ENFORCE) as service:
        call = await fake.originate_direct_to_trunk(DESTINATION, CALLER, outcome=Outcome.sip(603))
        assert call.trunk is not None
        await asyncio.wait_for(call.ended.wait(), 2.0)
        await counted(service)
        assert hangups_of(fake, call.trunk.id) == [], "nothing left to hang up"
    (line,) = [r.getMessage() for r in caplog.records if "ungated call" in r.getMessage()]
    assert call.trunk.name in line and "already ended" in line
    assert ungated(service) == 1


async def test_a_created_channel_hung_up_before_any_dial_placed_no_call(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path
) -> None:
    async with (
        running_service(pool, fake, tmp_path, **ENFORCE) as service,
        aiohttp.ClientSession(headers=ASTERISK_AUTH) as direct,
    ):
        app = await direct.ws_connect(f"{fake.base_url}/events?app=dialer")
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        async with direct.post(
            f"{fake.base_url}/channels/create", json={"endpoint": TRUNK_ENDPOINT, "app": "dialer"}
        ) as resp:
            channel_id = (await resp.json())["id"]
        async with direct.delete(f"{fake.base_url}/channels/{channel_id}") as resp:
            assert resp.status == 204
        await fake.wait_for_event("ChannelDestroyed", channel_id=channel_id)
        await asyncio.sleep(GRACE + 0.5)  # the whole grace time passes with nothing counted
        assert ungated(service) == 0
        await app.close()
