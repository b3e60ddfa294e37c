"""Blacklist: numbers and prefixes one by one (GET/PUT/DELETE), and bulk CSV import into COPY.

An import keeps its good rows: rows are copied in chunks, each in its own transaction; bad lines
are reported with their numbers; a body that breaks off as malformed CSV answers 400 with the
fault's position and what was imported before it. The CSV columns are those of
``dialguard blacklist import`` (:mod:`dialguard.blacklist_csv`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dialguard.api.bodies import csv_records, json_object, read_json, text_field, time_value
from dialguard.api.context import answer, deps, number, prefix
from dialguard.api.errors import BadRequest, MalformedBody, NotFound
from dialguard.api.ports import StageRow
from dialguard.blacklist_csv import NUMBER_COLUMNS, OPTIONAL_COLUMNS, number_row
from dialguard.numbers import InvalidNumber
from dialguard.policy.feedback import ImportSummary

CHUNK = 50_000


def _value(request: web.Request) -> tuple[str, bool]:
    """The path's number or prefix, normalised, and whether it is a prefix."""
    if request.match_info.get("prefix") is not None:
        return prefix(request.match_info["prefix"]), True
    return number(request.match_info["number"], request), False


async def get_entry(request: web.Request) -> web.Response:
    value, is_prefix = _value(request)
    campaign = request.query.get("campaign", "")
    bl = deps(request).blacklist
    row = await (bl.get_prefix if is_prefix else bl.get_number)(value, campaign)
    if row is None:
        raise NotFound(f"{value} is not on the {'campaign' if campaign else 'global'} blacklist")
    return answer(row)


async def put_entry(request: web.Request) -> web.Response:
    d = deps(request)
    value, is_prefix = _value(request)
    body = json_object(await read_json(request, d.max_body)) if request.body_exists else {}
    add = d.blacklist.add_prefix if is_prefix else d.blacklist.add_number
    row = await add(
        value,
        campaign=text_field(body, "campaign") or request.query.get("campaign", ""),
        source=text_field(body, "source") or "manual",
        reason=text_field(body, "reason"),
        expires_at=time_value(text_field(body, "expires_at"), "expires_at"),
        replace=_flag(body, "replace"),
    )
    return answer(row)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


async def delete_entry(request: web.Request) -> web.Response:
    value, is_prefix = _value(request)
    campaign = request.query.get("campaign", "")
    bl = deps(request).blacklist
    if not await (bl.remove_prefix if is_prefix else bl.remove_number)(value, campaign):
        raise NotFound(f"{value} is not on the {'campaign' if campaign else 'global'} blacklist")
    return web.Response(status=204)


async def import_entries(request: web.Request) -> web.Response:
    """CSV: ``number`` (or value, destination) then optional campaign, source, reason,
    expires_at; without a header, one number a line. ``?source=`` for rows without one."""
    d = deps(request)
    source = request.query.get("source") or "import"
    summary = ImportSummary()
    columns: list[str] | None = None
    rows: list[StageRow] = []
    try:
        async for batch in csv_records(request):
            for line, fields in batch:
                if columns is None:
                    columns = _columns(fields, line, summary)
                    if columns[0] == "":
                        columns[0] = "number"
                        continue
                try:
                    values = dict(zip(columns, fields, strict=False))
                    rows.append(number_row(values, columns[0], d.default_region, source))
                except (InvalidNumber, ValueError) as exc:
                    summary.error(line, str(exc))
            if len(rows) >= CHUNK:
                summary.imported += await d.blacklist.import_chunk(rows)
                rows = []
        if rows:
            summary.imported += await d.blacklist.import_chunk(rows)
    except MalformedBody as exc:
        exc.extra["summary"] = _summary(summary)
        raise
    return answer(_summary(summary))


def _columns(first: list[str], line: int, summary: ImportSummary) -> list[str]:
    """The columns from a header line (its first column marked '' to skip it), else the
    headerless layout."""
    cells = [c.strip().lower() for c in first]
    if cells[0] not in NUMBER_COLUMNS:
        return ["number", *OPTIONAL_COLUMNS]
    unknown = [c for c in cells[1:] if c not in OPTIONAL_COLUMNS]
    if unknown:
        summary.error(line, f"unknown columns {unknown}")
    return ["", *cells[1:]]


def _summary(summary: ImportSummary) -> dict[str, Any]:
    full = summary.as_json()
    return {k: full[k] for k in ("imported", "bad_rows", "errors", "errors_truncated")}


def add_routes(app: web.Application) -> None:
    for path in ("/v1/blacklist/numbers/{number}", "/v1/blacklist/prefixes/{prefix}"):
        app.router.add_get(path, get_entry)
        app.router.add_put(path, put_entry)
        app.router.add_delete(path, delete_entry)
    app.router.add_post("/v1/blacklist/import", import_entries)
