"""``POST /v1/scrub``: which numbers are callable now, and why not, in the format they came in.

``text/csv`` (a ``destination`` or ``number`` column, or one number a line; ``?caller_id=`` and
``?campaign=`` as query parameters) is streamed both ways without a size limit: rows are answered
in input order as they are judged, while the upload is still arriving. JSON
(``{"numbers": [...], "caller_id"?, "campaign"?}``) is limited by ``api.max_body``.

Each row: ``destination`` (E.164, or the input when it is no valid number), ``callable``, ``rule``
(empty when callable), ``callable_at`` (when the rule lets go, where known). A fault found before
the first row is answered is a 400; a malformed line after that ends the CSV with a line
``#error,<line>,<column>,<message>`` and closes the connection without finishing the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from aiohttp import web

from dialguard.api.bodies import csv_records, json_object, read_json, text_field
from dialguard.api.context import deps
from dialguard.api.errors import BadRequest, MalformedBody, ResponseAbandoned
from dialguard.policy.codes import Rule
from dialguard.policy.scrub import ScrubRequest, ScrubRow

log = logging.getLogger(__name__)
CSV_HEADER = b"destination,callable,rule,callable_at\n"
NUMBER_COLUMNS = ("destination", "number", "phone", "value")
CHUNK = 5000
_NEEDS_QUOTES = frozenset(',"\r\n')


async def scrub(request: web.Request) -> web.StreamResponse:
    if request.content_type in ("application/json", ""):
        return await _scrub_json(request)
    options = ScrubRequest(
        caller_id=request.query.get("caller_id") or None,
        campaign=request.query.get("campaign") or None,
    )
    response: web.StreamResponse | None = None
    rows = deps(request).scrub.scrub(_csv_numbers(request), options)
    async with aclosing(rows):
        try:
            async for batch in rows:
                if response is None:
                    response = await _start(request, "text/csv; charset=utf-8", CSV_HEADER)
                await response.write(_csv(batch))
        except MalformedBody as exc:
            if response is None:
                raise
            log.warning("scrub broke off at line %s: %s", exc.line, exc)
            await response.write(_csv_error(exc))
            raise ResponseAbandoned(str(exc)) from exc
    if response is None:
        response = await _start(request, "text/csv; charset=utf-8", CSV_HEADER)
    await response.write_eof()
    return response


async def _csv_numbers(request: web.Request) -> AsyncIterator[list[str]]:
    column: int | None = None
    async for batch in csv_records(request, batch=CHUNK):
        if column is None:
            header = [cell.strip().lower() for cell in batch[0][1]]
            found = next((header.index(c) for c in NUMBER_COLUMNS if c in header), None)
            column = 0 if found is None else found
            if found is not None:
                batch = batch[1:]
            elif len(header) > 1:
                raise BadRequest("line 1: a CSV of several columns needs a destination column")
        yield [fields[column] if column < len(fields) else "" for _, fields in batch]


async def _scrub_json(request: web.Request) -> web.StreamResponse:
    d = deps(request)
    body = json_object(await read_json(request, d.max_body))
    numbers = body.get("numbers")
    if not isinstance(numbers, list):
        raise BadRequest("numbers must be an array of strings")
    for i, value in enumerate(numbers):
        if not isinstance(value, str):
            raise BadRequest(f"numbers[{i}] must be a string")
    options = ScrubRequest(text_field(body, "caller_id"), text_field(body, "campaign"))

    async def chunks() -> AsyncIterator[Sequence[str]]:
        for start in range(0, len(numbers), CHUNK):
            yield numbers[start : start + CHUNK]

    response = await _start(request, "application/json", b'{"results": [')
    first = True
    async with aclosing(d.scrub.scrub(chunks(), options)) as rows:
        async for batch in rows:
            text = ",".join(_json_row(row) for row in batch)
            await response.write(((text if first else "," + text) if text else "").encode())
            first = first and not text
    await response.write(b"]}")
    await response.write_eof()
    return response


async def _start(request: web.Request, content_type: str, head: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(head)
    return response


def _csv(batch: list[ScrubRow]) -> bytes:
    lines = []
    for row in batch:
        dest = row.destination
        # Only an invalid number is the raw input; an E.164 number needs no quoting.
        if row.rule is Rule.INVALID_NUMBER and _NEEDS_QUOTES.intersection(dest):
            dest = '"' + dest.replace('"', '""') + '"'
        rule = row.rule.value if row.rule is not None else ""
        at = row.callable_at.isoformat() if row.callable_at is not None else ""
        lines.append(f"{dest},{'true' if row.callable else 'false'},{rule},{at}\n")
    return "".join(lines).encode()


def _csv_error(exc: MalformedBody) -> bytes:
    message = str(exc).replace('"', '""')
    return f'#error,{exc.line},{exc.column},"{message}"\n'.encode()


def _json_row(row: ScrubRow) -> str:
    record: dict[str, Any] = {
        "destination": row.destination,
        "callable": row.callable,
        "rule": row.rule.value if row.rule is not None else None,
        "callable_at": row.callable_at.isoformat() if row.callable_at is not None else None,
    }
    return json.dumps(record)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/scrub", scrub)
