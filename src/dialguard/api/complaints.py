"""Complaints: ``POST /v1/complaints``, ``GET /v1/complaints``, ``POST /v1/complaints/import``.

An import keeps its good rows: each batch is recorded in its own transaction, bad lines are
reported with their numbers, and a body that breaks off as malformed CSV answers 400 with the
fault's position and what was imported before it.
"""

from __future__ import annotations

from aiohttp import web

from dialguard.api.bodies import csv_records, json_object, read_json, text_field, time_value
from dialguard.api.context import answer, deps
from dialguard.api.decisions import log_query, page
from dialguard.api.errors import BadRequest, MalformedBody
from dialguard.policy.feedback import ComplaintRequest, ImportSummary

DESTINATION_COLUMNS = ("destination", "number")
KNOWN_COLUMNS = frozenset({*DESTINATION_COLUMNS, "caller_id", "campaign", "source", "at", "text"})


async def add_complaint(request: web.Request) -> web.Response:
    d = deps(request)
    body = json_object(await read_json(request, d.max_body))
    recorded = await d.feedback.complain(
        ComplaintRequest(
            destination=text_field(body, "destination", required=True) or "",
            source=text_field(body, "source", required=True) or "",
            caller_id=text_field(body, "caller_id") or None,
            campaign=text_field(body, "campaign") or None,
            at=time_value(text_field(body, "at"), "at"),
            text=text_field(body, "text"),
        )
    )
    return answer(recorded.as_json(), status=200 if recorded.duplicate else 201)


async def list_complaints(request: web.Request) -> web.Response:
    query = log_query(request, with_rule=False)
    rows = await deps(request).audit.complaints(query)
    return answer({"complaints": rows, "next_cursor": page(rows, query)})


async def import_complaints(request: web.Request) -> web.Response:
    """CSV with a header: ``destination`` and any of caller_id, campaign, source, at, text;
    ``?source=`` names the source of rows that have none."""
    d = deps(request)
    default_source = request.query.get("source") or None
    summary = ImportSummary()
    header: list[str] | None = None
    try:
        async for batch in csv_records(request, batch=1000):
            if header is None:
                (_, first), batch = batch[0], batch[1:]
                header = _header(first)
            records = [(line, dict(zip(header, fields, strict=False))) for line, fields in batch]
            await d.feedback.import_records(records, summary, default_source=default_source)
    except MalformedBody as exc:
        exc.extra["summary"] = summary.as_json()
        raise
    if header is None:
        raise BadRequest("the CSV is empty; expected a header line with a destination column")
    return answer(summary.as_json())


def _header(first: list[str]) -> list[str]:
    header = [cell.strip().lower() for cell in first]
    if not any(c in DESTINATION_COLUMNS for c in header):
        raise BadRequest("line 1: the header needs a destination column", line=1)
    unknown = [c for c in header if c not in KNOWN_COLUMNS]
    if unknown:
        raise BadRequest(f"line 1: unknown columns {unknown}", line=1)
    return header


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/complaints", add_complaint)
    app.router.add_get("/v1/complaints", list_complaints)
    app.router.add_post("/v1/complaints/import", import_complaints)
