"""Originations through the ARI proxy: an ARI dialer talks to dialguard as it would to
Asterisk; the fake Asterisk, the service wiring and PostgreSQL are real, over real sockets."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from yarl import URL

from dialguard.app import Service
from dialguard.policy.codes import Rule
from dialguard.policy.evidence import explain
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.testing import FakeAsterisk, Outcome
from tests.integration.test_gate import CALLER, _poll, decisions_where, running_service

DESTINATION = "2122641234"
TRUNK_ENDPOINT = f"PJSIP/{DESTINATION}@carrier"
DIALER_AUTH = {"Authorization": aiohttp.encode_basic_auth("dialer", "dialer-secret")}
ASTERISK_AUTH = {"Authorization": aiohttp.encode_basic_auth("dialguard", "dialguard")}
PROXY_ENV = {
    "DIALGUARD_PROXY_LISTEN": "127.0.0.1:0",
    "DIALGUARD_PROXY_USERNAME": "dialer",
    "DIALGUARD_PROXY_PASSWORD": "dialer-secret",
}


@asynccontextmanager
async def proxied_service(
    pool: asyncpg.Pool, fake: FakeAsterisk, tmp_path: Path, **env: str
) -> AsyncIterator[Service]:
    async with running_service(pool, fake, tmp_path, **PROXY_ENV, **env) as service:
        assert service.proxy is not None
        yield service


def proxy_url(service: Service) -> str:
    assert service.proxy is not None
    return service.proxy.base_url


@pytest.fixture
async def fake() -> AsyncIterator[FakeAsterisk]:
    async with FakeAsterisk(stasis_args=("${CAMPAIGN}",), keep_dial_cause=True) as f:
        yield f


@pytest.fixture
async def registered(pool: asyncpg.Pool) -> None:
    await CallerIdStore(pool).add("+12125550100", None)


@pytest.fixture
async def dialer() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=DIALER_AUTH) as session:
        yield session


def requests_to(fake: FakeAsterisk, method: str, path: str) -> list[Any]:
    return [r for r in fake.requests if r.method == method and r.path == path]


async def decision_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await decisions_where(pool)("SELECT * FROM decisions ORDER BY id")
    return rows


async def recorded_outcome(pool: asyncpg.Pool) -> asyncpg.Record:
    async def check() -> asyncpg.Record | None:
        rows = await decision_rows(pool)
        return rows[0] if rows and rows[0]["outcome"] else None

    row: asyncpg.Record = await _poll(check)
    return row


def ungated(service: Service) -> float:
    return service.registry.get_sample_value("dialguard_ungated_calls_total") or 0.0


# -- POST /channels and /channels/{channelId} ---------------------------------------------------


async def test_allowed_originate_in_the_query_string_reaches_asterisk_and_its_answer_comes_back(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    fake.set_outcome(DESTINATION, Outcome.answered(0.2))
    async with proxied_service(pool, fake, tmp_path) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={
                "endpoint": TRUNK_ENDPOINT,
                "extension": "s",
                "context": "default",
                "callerId": f'"Dialer" <{CALLER}>',
            },
        ) as resp:
            status, body = resp.status, await resp.read()
            content_type = resp.headers["Content-Type"]
        assert status == 200 and content_type.startswith("application/json")
        (originate,) = requests_to(fake, "POST", "/channels")
        assert json.loads(body) == originate.response
        assert originate.query["callerId"] == f'"Dialer" <{CALLER}>'
        (row,) = await decision_rows(pool)
        assert row["allowed"] and row["source"] == "proxy"
        assert (row["destination"], row["caller_id"]) == ("+12122641234", "+12125550100")
        # Asterisk named the channel in its answer; the audit trail links the decision to it.
        assert row["campaign"] == "default" and row["channel_id"] == json.loads(body)["id"]
        outcome = await recorded_outcome(pool)
        assert (outcome["outcome"], outcome["cause"]) == ("answered", 16)
        assert ungated(service) == 0
    assert fake.protocol_violations == []


async def test_allowed_originate_with_a_json_body_takes_campaign_and_channel_id_from_it(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    fake.set_outcome(DESTINATION, Outcome.busy())
    async with proxied_service(pool, fake, tmp_path) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            json={
                "endpoint": TRUNK_ENDPOINT,
                "app": "dialer",
                "callerId": CALLER,
                "channelId": "dialer-call-1",
                "variables": {"CAMPAIGN": "spring"},
            },
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["id"] == "dialer-call-1"
        (row,) = await decision_rows(pool)
        assert row["allowed"] and row["campaign"] == "spring"
        assert row["channel_id"] == "dialer-call-1"
        outcome = await recorded_outcome(pool)
        assert (outcome["outcome"], outcome["cause"], outcome["sip_code"]) == ("busy", 17, 486)
    assert fake.protocol_violations == []


async def test_originate_with_the_channel_id_in_the_path_is_decided_for_that_channel(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    async with proxied_service(pool, fake, tmp_path) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels/chosen-id-7",
            params={"endpoint": TRUNK_ENDPOINT, "extension": "s", "callerId": CALLER},
        ) as resp:
            assert resp.status == 200
        (row,) = await decision_rows(pool)
        assert row["allowed"] and row["channel_id"] == "chosen-id-7"
        assert (await recorded_outcome(pool))["outcome"] == "answered"


async def test_denied_originate_answers_403_with_rule_and_evidence_and_never_reaches_asterisk(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    await BlacklistStore(pool).add_number("+12122641234")
    async with proxied_service(pool, fake, tmp_path) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            json={"endpoint": TRUNK_ENDPOINT, "extension": "s", "callerId": CALLER},
        ) as resp:
            status, document = resp.status, await resp.json()
        assert status == 403
        assert document["message"].startswith("dialguard: blacklisted: ")
        (row,) = await decision_rows(pool)
        assert not row["allowed"] and row["rule"] == "blacklisted"
        assert document["message"] == f"dialguard: blacklisted: {_evidence(row)}"
    assert requests_to(fake, "POST", "/channels") == []


@pytest.mark.parametrize("spelling", ["/channels//extra", "/%63hannels", "/channels/call%2F1"])
async def test_an_origination_is_decided_however_its_path_is_spelled(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
    spelling: str,
) -> None:
    await BlacklistStore(pool).add_number("+12122641234")
    async with proxied_service(pool, fake, tmp_path) as service:
        url = URL(proxy_url(service) + spelling, encoded=True)
        async with dialer.post(
            url, json={"endpoint": TRUNK_ENDPOINT, "extension": "s", "callerId": CALLER}
        ) as resp:
            assert resp.status == 403
    assert [r for r in fake.requests if r.method == "POST" and "channels" in r.path] == []


async def test_unregistered_caller_id_in_the_variables_overrides_the_callerid_parameter(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    async with (
        proxied_service(pool, fake, tmp_path) as service,
        dialer.post(
            f"{proxy_url(service)}/channels",
            json={
                "endpoint": TRUNK_ENDPOINT,
                "extension": "s",
                "callerId": CALLER,
                # Asterisk applies the variables after callerId: this is the number shown.
                "variables": {"CONNECTEDLINE(num)": "2125559999"},
            },
        ) as resp,
    ):
        assert resp.status == 403
        assert (await resp.json())["message"].startswith("dialguard: callerid_unknown: ")
    assert requests_to(fake, "POST", "/channels") == []


async def test_local_channel_origination_is_forwarded_undecided_and_the_gate_decides_it(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    async with proxied_service(pool, fake, tmp_path) as service:
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={
                "endpoint": f"Local/{DESTINATION}@outbound",
                "extension": DESTINATION,
                "context": "dialer-entry",
                "callerId": f'"Dialer" <{CALLER}>',
            },
        ) as resp:
            assert resp.status == 200
        await _poll(lambda: _any_decision(pool))
        (row,) = await decision_rows(pool)
        assert row["source"] == "gate" and row["allowed"]
    assert fake.protocol_violations == []


async def test_allowed_originate_that_asterisk_refuses_is_returned_as_is_and_recorded_failed(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    async with proxied_service(pool, fake, tmp_path) as service:
        # Neither app nor extension: Asterisk refuses the shape after the decision allowed it.
        async with dialer.post(
            f"{proxy_url(service)}/channels",
            params={"endpoint": TRUNK_ENDPOINT, "callerId": CALLER},
        ) as resp:
            status, document = resp.status, await resp.json()
        assert (status, document) == (
            400,
            {"message": "Application or extension must be specified"},
        )
        outcome = await recorded_outcome(pool)
        assert outcome["allowed"] and outcome["outcome"] == "failed"


# -- POST /channels/create, then /channels/{channelId}/dial ------------------------------------


@asynccontextmanager
async def dialer_app(dialer: aiohttp.ClientSession, service: Service) -> AsyncIterator[Any]:
    """The dialer's own ARI application, held through the proxy (created channels wait in it)."""
    ws = await dialer.ws_connect(f"{proxy_url(service)}/events?app=dialer")
    try:
        yield ws
    finally:
        await ws.close()


async def _create(dialer: aiohttp.ClientSession, service: Service, **variables: str) -> str:
    async with dialer.post(
        f"{proxy_url(service)}/channels/create",
        json={"endpoint": TRUNK_ENDPOINT, "app": "dialer", "variables": variables},
    ) as resp:
        assert resp.status == 200
        channel_id: str = (await resp.json())["id"]
        return channel_id


async def test_create_is_not_decided_and_its_dial_is_decided_on_what_the_create_said(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    fake.set_outcome(DESTINATION, Outcome.answered(0.1))
    async with (
        proxied_service(pool, fake, tmp_path, DIALGUARD_GATE_ENFORCE_GATE="true") as service,
        dialer_app(dialer, service),
    ):
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        channel_id = await _create(
            dialer, service, **{"CALLERID(num)": CALLER, "CAMPAIGN": "autumn"}
        )
        assert await decision_rows(pool) == []
        async with dialer.post(f"{proxy_url(service)}/channels/{channel_id}/dial") as resp:
            assert resp.status == 204
        (row,) = await decision_rows(pool)
        assert row["allowed"] and row["channel_id"] == channel_id
        assert (row["destination"], row["campaign"]) == ("+12122641234", "autumn")
        outcome = await recorded_outcome(pool)
        assert outcome["outcome"] == "answered"
        assert ungated(service) == 0
    assert fake.protocol_violations == []


async def test_denied_dial_answers_403_and_the_created_channel_is_never_dialed(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    await BlacklistStore(pool).add_number("+12122641234")
    async with proxied_service(pool, fake, tmp_path) as service, dialer_app(dialer, service):
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        channel_id = await _create(dialer, service, **{"CALLERID(num)": CALLER})
        async with dialer.post(f"{proxy_url(service)}/channels/{channel_id}/dial") as resp:
            assert resp.status == 403
            assert (await resp.json())["message"].startswith("dialguard: blacklisted: ")
        assert requests_to(fake, "POST", f"/channels/{channel_id}/dial") == []
        async with dialer.delete(f"{proxy_url(service)}/channels/{channel_id}") as resp:
            assert resp.status == 204


async def test_dial_of_a_trunk_channel_created_behind_dialguards_back_is_denied_as_unknown(
    pool: asyncpg.Pool,
    fake: FakeAsterisk,
    tmp_path: Path,
    registered: None,
    dialer: aiohttp.ClientSession,
) -> None:
    async with proxied_service(pool, fake, tmp_path) as service, dialer_app(dialer, service):
        await fake.wait_for(lambda: fake.app_connected("dialer"))
        async with (
            aiohttp.ClientSession(headers=ASTERISK_AUTH) as direct,
            direct.post(
                f"{fake.base_url}/channels/create",
                json={"endpoint": TRUNK_ENDPOINT, "app": "dialer"},
            ) as resp,
        ):
            channel_id = (await resp.json())["id"]
        async with dialer.post(f"{proxy_url(service)}/channels/{channel_id}/dial") as resp:
            assert resp.status == 403
            assert (await resp.json())["message"].startswith("dialguard: invalid_number: ")
    assert requests_to(fake, "POST", f"/channels/{channel_id}/dial") == []


def _evidence(row: asyncpg.Record) -> str:
    return explain(Rule(row["rule"]), dict(row["facts"]))


async def _any_decision(pool: asyncpg.Pool) -> bool:
    return bool(await decision_rows(pool))
