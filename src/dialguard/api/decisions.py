"""Decisions: ``POST /v1/check`` (dry run), ``POST /v1/decide`` (records), ``GET /v1/decisions``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dialguard.api.bodies import int_value, json_object, read_json, text_field, time_value
from dialguard.api.context import answer, deps
from dialguard.api.errors import BadRequest
from dialguard.numbers import try_normalise
from dialguard.policy.codes import Rule
from dialguard.policy.model import Decision, DecisionRequest, LogQuery

RULE_FILTERS = frozenset({r.value for r in Rule} | {"none"})


def decision_json(decision: Decision) -> dict[str, Any]:
    return {**decision.as_json(), "facts": decision.facts}


async def _decide(request: web.Request, record: bool) -> web.Response:
    d = deps(request)
    body = json_object(await read_json(request, d.max_body))
    asked = DecisionRequest(
        caller_id=text_field(body, "caller_id", required=True) or "",
        destination=text_field(body, "destination", required=True) or "",
        campaign=text_field(body, "campaign") or None,
        at=time_value(text_field(body, "at"), "at"),
        record=record,
        source="api",
    )
    return answer(decision_json(await d.decider.decide(asked)))


async def check(request: web.Request) -> web.Response:
    return await _decide(request, record=False)


async def decide(request: web.Request) -> web.Response:
    return await _decide(request, record=True)


def log_query(request: web.Request, *, with_rule: bool) -> LogQuery:
    """The filters of a log listing; numbers are matched in their E.164 form."""
    q = request.query
    region = deps(request).default_region
    rule = q.get("rule") or None
    if rule is not None and (not with_rule or rule not in RULE_FILTERS):
        raise BadRequest(f"rule must be one of {', '.join(sorted(RULE_FILTERS))}")
    cursor = q.get("cursor") or None
    if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
        raise BadRequest("cursor must be a cursor returned by a previous page")

    def num(name: str) -> str | None:
        text = q.get(name) or None
        return (try_normalise(text, region) or text) if text else None

    return LogQuery(
        destination=num("destination"),
        caller_id=num("caller_id"),
        campaign=q.get("campaign") or None,
        since=time_value(q.get("since"), "since"),
        until=time_value(q.get("until"), "until"),
        rule=rule,
        source=q.get("source") or None,
        before_id=int(cursor) if cursor else None,
        limit=int_value(q.get("limit"), "limit", low=1, high=1000, default=100),
    )


def page(rows: list[dict[str, Any]], query: LogQuery) -> str | None:
    return str(rows[-1]["id"]) if len(rows) == query.limit and rows else None


async def list_decisions(request: web.Request) -> web.Response:
    query = log_query(request, with_rule=True)
    rows = await deps(request).audit.decisions(query)
    for row in rows:
        row.pop("spool_id", None)
        row["verdict"] = "allow" if row.get("allowed") else "deny"
    return answer({"decisions": rows, "next_cursor": page(rows, query)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/check", check)
    app.router.add_post("/v1/decide", decide)
    app.router.add_get("/v1/decisions", list_decisions)
