"""The admin API, route by route: happy paths and their errors (401, 400 with position, 404,
409, 413), through ``Service.build_api`` on a real socket and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from dialguard.store.callerids import CallerIdStore
from tests.integration.api_harness import AUTH, TOKEN, api_client
from tests.support import NOON_NY, daytime_block

CID = "+12125550100"
DEST = "+12122641234"
Client = TestClient[Any, Any]


@pytest.fixture
async def api(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[Client]:
    await CallerIdStore(pool).add(CID, None)
    async with api_client(pool, tmp_path, API_TOKEN=TOKEN) as client:
        yield client


async def call(api: Client, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    headers = {**AUTH, **kw.pop("headers", {})}
    async with api.request(method, path, headers=headers, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


def error_code(body: Any) -> str:
    return str(body["error"]["code"])


# -- authentication --------------------------------------------------------------------------


async def test_missing_or_wrong_token_is_401_and_the_token_is_never_logged(
    api: Client, caplog: pytest.LogCaptureFixture
) -> None:
    async with api.get("/v1/callerids") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert error_code(await resp.json()) == "unauthorized"
    wrong = {"Authorization": "Bearer not-the-token-xyz"}
    async with api.get("/v1/callerids", headers=wrong) as resp:
        assert resp.status == 401
    assert "refused GET /v1/callerids" in caplog.text
    assert "not-the-token-xyz" not in caplog.text and TOKEN not in caplog.text


async def test_probes_and_the_openapi_document_need_no_token(api: Client) -> None:
    for path in ("/healthz", "/v1/openapi.json"):
        async with api.get(path) as resp:
            assert resp.status == 200, path
    async with api.get("/readyz") as resp:
        assert resp.status == 503, "not connected to Asterisk: not ready, but answering"


async def test_without_a_token_configured_loopback_needs_none(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async with api_client(pool, tmp_path) as client, client.get("/v1/callerids") as resp:
        assert resp.status == 200


# -- decisions -------------------------------------------------------------------------------


async def test_check_is_a_dry_run_and_decide_records(api: Client) -> None:
    body = {"caller_id": CID, "destination": daytime_block() + "1234"}
    status, checked = await call(api, "POST", "/v1/check", json=body)
    assert status == 200 and checked["verdict"] == "allow" and checked["decision_id"] is None
    assert set(checked) >= {"verdict", "rule", "evidence", "decision_id"}
    status, decided = await call(api, "POST", "/v1/decide", json=body)
    assert status == 200 and decided["verdict"] == "allow" and decided["decision_id"]
    status, again = await call(api, "POST", "/v1/decide", json=body)
    assert status == 200, "a deny is a result, not an error"
    assert (again["verdict"], again["rule"]) == ("deny", "destination_interval")
    assert again["callable_at"] is not None


async def test_a_recorded_decision_at_another_time_is_refused(api: Client) -> None:
    dest = daytime_block() + "1234"
    status, decided = await call(
        api, "POST", "/v1/decide", json={"caller_id": CID, "destination": dest}
    )
    assert status == 200 and decided["verdict"] == "allow"
    # Backdated past the 4 h interval: it would be allowed if a client could say when it is.
    backdated = (datetime.now(UTC) - timedelta(hours=5)).isoformat()
    body = {"caller_id": CID, "destination": dest, "at": backdated}
    status, refused = await call(api, "POST", "/v1/decide", json=body)
    assert status == 400 and error_code(refused) == "time_refused"
    assert "check --at" in refused["error"]["message"] and "replay" in refused["error"]["message"]
    # As a dry run the same time is fine: an "as of" question.
    status, checked = await call(api, "POST", "/v1/check", json=body)
    assert status == 200 and checked["decision_id"] is None
    # A time within the tolerance is "now": recorded, and judged on the database's clock.
    body["at"] = datetime.now(UTC).isoformat()
    status, again = await call(api, "POST", "/v1/decide", json=body)
    assert status == 200 and again["rule"] == "destination_interval"


async def test_decide_rejects_bad_bodies_with_their_position(api: Client) -> None:
    bad = b'{"caller_id": "+12125550100",\n  "destination": }'
    status, body = await call(
        api, "POST", "/v1/check", data=bad, headers={"Content-Type": "application/json"}
    )
    assert status == 400 and error_code(body) == "malformed_body"
    assert (body["error"]["line"], body["error"]["column"]) == (2, 18)
    status, body = await call(api, "POST", "/v1/check", json={"destination": DEST})
    assert status == 400 and "caller_id" in body["error"]["message"]
    status, body = await call(api, "POST", "/v1/check", json=[1, 2])
    assert status == 400
    status, body = await call(
        api, "POST", "/v1/check", json={"caller_id": CID, "destination": DEST, "at": "noon"}
    )
    assert status == 400 and "at" in body["error"]["message"]


async def test_json_bodies_over_max_body_are_413(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with api_client(pool, tmp_path, API_MAX_BODY="200") as client:
        big = {"caller_id": CID, "destination": DEST, "padding": "x" * 300}
        async with client.post("/v1/check", json=big) as resp:
            assert resp.status == 413 and error_code(await resp.json()) == "body_too_large"

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"caller_id": "' + b"1" * 300 + b'"}'

        headers = {"Content-Type": "application/json"}
        async with client.post("/v1/check", data=chunked(), headers=headers) as resp:
            assert resp.status == 413, "no Content-Length: counted while reading"


async def test_decisions_are_listed_newest_first_filtered_and_paged(api: Client) -> None:
    block = daytime_block()
    for i in range(3):
        body = {"caller_id": CID, "destination": f"{block}000{i}"}
        await call(api, "POST", "/v1/decide", json=body)
    status, page = await call(api, "GET", "/v1/decisions", params={"limit": "2"})
    assert status == 200 and len(page["decisions"]) == 2 and page["next_cursor"]
    assert page["decisions"][0]["destination"] == f"{block}0002"
    status, rest = await call(
        api, "GET", "/v1/decisions", params={"limit": "2", "cursor": page["next_cursor"]}
    )
    assert [d["destination"] for d in rest["decisions"]] == [f"{block}0000"]
    assert rest["next_cursor"] is None
    status, one = await call(
        api, "GET", "/v1/decisions", params={"destination": f"{block}0001", "rule": "none"}
    )
    assert [d["verdict"] for d in one["decisions"]] == ["allow"]
    status, body = await call(api, "GET", "/v1/decisions", params={"rule": "nonsense"})
    assert status == 400
    status, body = await call(api, "GET", "/v1/decisions", params={"since": "yesterday"})
    assert status == 400


# -- complaints ------------------------------------------------------------------------------


async def test_complaint_is_201_with_its_effects_and_blacklists(api: Client) -> None:
    body = {"destination": DEST, "caller_id": CID, "source": "carrier", "text": "rude"}
    status, recorded = await call(api, "POST", "/v1/complaints", json=body)
    assert status == 201 and recorded["id"]
    assert recorded["effects"] == {
        "blacklisted": True,
        "callerid_rested": False,
        "campaign_paused": False,
    }
    status, entry = await call(api, "GET", f"/v1/blacklist/numbers/{DEST}")
    assert status == 200 and entry["source"] == "complaint"
    status, listed = await call(api, "GET", "/v1/complaints", params={"caller_id": CID})
    assert status == 200 and listed["complaints"][0]["destination"] == DEST


async def test_duplicate_complaint_answers_200_with_the_first_id(api: Client) -> None:
    body = {"destination": DEST, "source": "12321", "at": NOON_NY.isoformat()}
    _, first = await call(api, "POST", "/v1/complaints", json=body)
    status, again = await call(api, "POST", "/v1/complaints", json=body)
    assert status == 200 and again["duplicate"] and again["id"] == first["id"]


async def test_invalid_complaint_names_the_field(api: Client) -> None:
    status, body = await call(
        api, "POST", "/v1/complaints", json={"destination": DEST, "source": "gossip"}
    )
    assert status == 400 and body["error"]["field"] == "source"
    status, body = await call(api, "POST", "/v1/complaints", json={"destination": "12"})
    assert status == 400


async def test_complaint_import_keeps_good_rows_and_reports_bad_lines(api: Client) -> None:
    csv = (
        "destination,caller_id,source,at\n"
        f"{DEST},{CID},carrier,2026-03-10T15:00:00Z\n"
        "not-a-number,,carrier,\n"
        "+12122641235,,crm,2026-03-10T16:00:00Z\n"
        "+12122641236,,crm,yesterday\n"
    )
    status, summary = await call(
        api, "POST", "/v1/complaints/import", data=csv, headers={"Content-Type": "text/csv"}
    )
    assert status == 200
    assert (summary["imported"], summary["bad_rows"]) == (2, 2)
    assert [e["line"] for e in summary["errors"]] == [3, 5]
    assert summary["effects"]["blacklisted"] == 2


async def test_malformed_csv_is_400_with_line_and_column(api: Client) -> None:
    csv = 'destination,source\n+12122641234,carrier\n"+12122641235"x,crm\n'
    status, body = await call(
        api, "POST", "/v1/complaints/import", data=csv, headers={"Content-Type": "text/csv"}
    )
    assert status == 400 and error_code(body) == "malformed_body"
    assert (body["error"]["line"], body["error"]["column"]) == (3, 15)
    assert body["error"]["summary"]["imported"] == 0, "the fault is in the first batch"
    status, body = await call(
        api,
        "POST",
        "/v1/complaints/import",
        data=b"destination,source\n+1212264\xff1234,crm\n",
        headers={"Content-Type": "text/csv"},
    )
    assert status == 400 and (body["error"]["line"], body["error"]["column"]) == (2, 9)


# -- blacklist -------------------------------------------------------------------------------


async def test_blacklist_number_put_get_delete(api: Client) -> None:
    path = "/v1/blacklist/numbers/(212)%20264-1234"
    status, _ = await call(api, "GET", path)
    assert status == 404
    status, row = await call(
        api, "PUT", path, json={"reason": "asked", "expires_at": "2030-01-01T00:00:00Z"}
    )
    assert status == 200 and row["number"] == DEST and row["reason"] == "asked"
    status, row = await call(api, "GET", path)
    assert status == 200 and row["expires_at"].startswith("2030-01-01")
    status, _ = await call(api, "DELETE", path)
    assert status == 204
    status, _ = await call(api, "DELETE", path)
    assert status == 404
    status, _ = await call(api, "GET", "/v1/blacklist/numbers/12")
    assert status == 400


async def test_blacklist_put_never_shortens_an_entry_and_refuses_a_past_expiry(
    api: Client,
) -> None:
    path = "/v1/blacklist/prefixes/+1718264"
    status, row = await call(api, "PUT", path, json={"expires_at": "2037-01-01T00:00:00Z"})
    assert status == 200
    # A past expiry (2020 typed for 2027): refused, and the entry is untouched.
    status, body = await call(api, "PUT", path, json={"expires_at": "2020-01-01T00:00:00Z"})
    assert status == 400 and error_code(body) == "invalid_value"
    assert "already past" in body["error"]["message"]
    status, row = await call(api, "PUT", path, json={"expires_at": "2031-01-01T00:00:00Z"})
    assert status == 200 and row["expires_at"].startswith("2037-01-01"), "the later expiry wins"
    status, row = await call(
        api, "PUT", path, json={"expires_at": "2031-01-01T00:00:00Z", "replace": True}
    )
    assert status == 200 and row["expires_at"].startswith("2031-01-01")
    status, body = await call(api, "PUT", path, json={"replace": "yes"})
    assert status == 400 and "replace" in body["error"]["message"]


async def test_blacklist_prefix_put_get_delete_per_campaign(api: Client) -> None:
    path = "/v1/blacklist/prefixes/+1718264"
    status, row = await call(api, "PUT", path, json={"campaign": "spring"})
    assert status == 200 and row["campaign"] == "spring"
    status, _ = await call(api, "GET", path)
    assert status == 404, "not on the global list"
    status, _ = await call(api, "GET", path, params={"campaign": "spring"})
    assert status == 200
    status, _ = await call(api, "DELETE", path, params={"campaign": "spring"})
    assert status == 204
    status, _ = await call(api, "PUT", "/v1/blacklist/prefixes/1718")
    assert status == 400


async def test_blacklist_import_streams_into_copy_and_reports_bad_lines(api: Client) -> None:
    csv = "number,reason\n+12122641234,asked\nbogus,x\n+1 212 264 1235,\n"
    status, summary = await call(
        api, "POST", "/v1/blacklist/import", data=csv, headers={"Content-Type": "text/csv"}
    )
    assert status == 200 and (summary["imported"], summary["bad_rows"]) == (2, 1)
    assert summary["errors"][0]["line"] == 3
    status, row = await call(api, "GET", "/v1/blacklist/numbers/+12122641235")
    assert status == 200 and row["source"] == "import"


# -- caller IDs ------------------------------------------------------------------------------


async def test_callerid_lifecycle_with_health(api: Client) -> None:
    status, row = await call(api, "POST", "/v1/callerids", json={"number": "(212) 555-0123"})
    assert status == 201 and row["number"] == "+12125550123"
    status, shown = await call(api, "GET", "/v1/callerids/+12125550123")
    assert status == 200 and shown["state"] == "active"
    assert shown["health"] == {
        "calls": 0,
        "answer_seizure_ratio": None,
        "short_call_share": None,
        "carrier_rejection_share": None,
        "complaints_24h": 0,
        "window": 1000,
    }
    status, rested = await call(api, "POST", "/v1/callerids/+12125550123/rest")
    assert status == 200 and (rested["state"], rested["reason"]) == ("rested", "manual")
    status, listed = await call(api, "GET", "/v1/callerids", params={"state": "rested"})
    assert [r["number"] for r in listed["callerids"]] == ["+12125550123"]
    status, _ = await call(api, "POST", "/v1/callerids/+12125550123/release")
    assert status == 200
    status, retired = await call(
        api, "POST", "/v1/callerids/+12125550123/retire", json={"reason": "returned"}
    )
    assert status == 200 and retired["state"] == "retired"
    status, body = await call(api, "POST", "/v1/callerids/+12125550123/release")
    assert status == 409 and error_code(body) == "conflict"


async def test_unknown_callerid_is_404(api: Client) -> None:
    for method, path in (
        ("GET", "/v1/callerids/+12125550199"),
        ("POST", "/v1/callerids/+12125550199/rest"),
    ):
        status, body = await call(api, method, path)
        assert status == 404 and error_code(body) == "not_found"
    status, _ = await call(api, "GET", "/v1/callerids", params={"state": "sleeping"})
    assert status == 400


async def test_callerid_health_counts_answers_short_calls_and_rejections(
    api: Client, pool: asyncpg.Pool
) -> None:
    rows = [
        (NOON_NY, CID, f"+1212300{i:04d}", "default", True, outcome, NOON_NY, secs, cause)
        for i, (outcome, secs, cause) in enumerate(
            [
                ("answered", 40, 16),
                ("answered", 3, 16),
                ("carrier_rejected", None, 21),
                ("no_answer", None, 19),
            ]
        )
    ]
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "decisions",
            records=rows,
            columns=[
                "at",
                "caller_id",
                "destination",
                "campaign",
                "allowed",
                "outcome",
                "outcome_at",
                "answered_seconds",
                "cause",
            ],
        )
    _, shown = await call(api, "GET", f"/v1/callerids/{CID}")
    health = shown["health"]
    assert health["calls"] == 4 and health["answer_seizure_ratio"] == 0.5
    assert health["short_call_share"] == 0.5 and health["carrier_rejection_share"] == 0.25


# -- campaigns -------------------------------------------------------------------------------


async def test_campaign_set_show_pause_resume(api: Client) -> None:
    status, row = await call(
        api,
        "PUT",
        "/v1/campaigns/spring",
        json={"profile": "b2b", "overrides": {"destination_min_interval": "2h"}},
    )
    assert status == 200 and row["profile"] == "b2b"
    status, shown = await call(api, "GET", "/v1/campaigns/spring")
    assert shown["overrides"] == {"destination_min_interval": "2h"}
    status, paused = await call(api, "POST", "/v1/campaigns/spring/pause", json={"reason": "x"})
    assert status == 200 and paused["paused"] and paused["pause_reason"] == "x"
    body = {"caller_id": CID, "destination": DEST, "campaign": "spring", "at": NOON_NY.isoformat()}
    _, denied = await call(api, "POST", "/v1/check", json=body)
    assert denied["rule"] == "campaign_paused"
    status, resumed = await call(api, "POST", "/v1/campaigns/spring/resume")
    assert status == 200 and not resumed["paused"]
    _, listed = await call(api, "GET", "/v1/campaigns")
    assert [c["name"] for c in listed["campaigns"]] == ["spring"]
    _, never = await call(api, "GET", "/v1/campaigns/autumn")
    assert never["profile"] == "default" and never["paused"] is False


async def test_campaign_set_reports_every_problem(api: Client) -> None:
    status, body = await call(
        api,
        "PUT",
        "/v1/campaigns/spring",
        json={"overrides": {"calling_hours": "late", "destination_caps": ["x"], "colour": 1}},
    )
    assert status == 400 and error_code(body) == "invalid_profile"
    problems = body["error"]["problems"]
    assert len(problems) == 3 and any("colour" in p for p in problems)
    status, body = await call(api, "PUT", "/v1/campaigns/spring", json={"profile": "nope"})
    assert status == 400 and "nope" in body["error"]["message"]
    status, _ = await call(api, "GET", "/v1/campaigns/spring")
    assert status == 200


async def test_unknown_route_and_method_answer_json_errors(api: Client) -> None:
    status, body = await call(api, "GET", "/v1/nothing")
    assert status == 404 and error_code(body) == "not_found"
    status, body = await call(api, "DELETE", "/v1/check")
    assert status == 405 and error_code(body) == "method_not_allowed"
