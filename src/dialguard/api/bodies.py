"""Request bodies: size-limited JSON, and CSV streamed record by record with line numbers.

A CSV body is never held whole: it is read in blocks, decoded incrementally and handed on in
batches of records, each with the line it starts on. A body that is not UTF-8, breaks the CSV
quoting rules or holds a record or field past the bounds of :mod:`dialguard.csv_input` raises
:class:`MalformedBody` with the line (and column) of the fault.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from aiohttp import web

from dialguard.api.errors import BadRequest, MalformedBody, TooLarge, UnsupportedMedia
from dialguard.csv_input import MAX_FIELD, MAX_RECORD, field_too_long, record_too_long
from dialguard.policy.values import ValueSyntaxError, parse_instant

BLOCK = 256 * 1024
Record = tuple[int, list[str]]
"""(line the record starts on, its fields)."""


async def read_json(request: web.Request, max_body: int) -> Any:
    """The JSON body, at most ``max_body`` bytes (413 above); 400 with the position if broken."""
    if request.content_type not in ("application/json", ""):
        raise UnsupportedMedia(f"expected application/json, got {request.content_type}")
    if request.content_length is not None and request.content_length > max_body:
        raise TooLarge(f"the body is {request.content_length} bytes; api.max_body is {max_body}")
    raw = await request.content.read(max_body + 1)
    while len(raw) <= max_body and not request.content.at_eof():
        more = await request.content.read(max_body + 1 - len(raw))
        if not more:
            break
        raw += more
    if len(raw) > max_body:
        raise TooLarge(f"the body is larger than api.max_body ({max_body} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = position(raw[: exc.start])
        raise MalformedBody("not UTF-8", line=line, column=column) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedBody(exc.msg, line=exc.lineno, column=exc.colno) from None


def position(prefix: bytes) -> tuple[int, int]:
    """(line, column) just after ``prefix``, both 1-based, columns in characters."""
    line = prefix.count(b"\n") + 1
    last = prefix[prefix.rfind(b"\n") + 1 :]
    return line, len(last.decode("utf-8", errors="replace")) + 1


def json_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def text_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if "\x00" in value:
        raise BadRequest(f"{name} holds a NUL character")
    if required and not value.strip():
        raise BadRequest(f"{name} must not be empty")
    return value


def time_value(text: str | None, name: str) -> datetime | None:
    """An ISO 8601 time with an offset, or None."""
    if text is None or text == "":
        return None
    try:
        return parse_instant(text)
    except ValueSyntaxError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def int_value(text: str | None, name: str, *, low: int, high: int, default: int) -> int:
    if text is None or text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(text)


async def csv_records(
    request: web.Request,
    *,
    batch: int = 5000,
    max_record: int = MAX_RECORD,
    max_field: int = MAX_FIELD,
) -> AsyncIterator[list[Record]]:
    """Batches of CSV records from the streamed body, blank lines skipped.

    A record (a line, or a quoted record over several) longer than ``max_record`` characters,
    or a field longer than ``max_field``, is refused with the line it starts on: a quote never
    closed or a line never ended is found once that much has arrived, not at the end of the
    body. Each character is scanned for record ends once, so an unfinished record costs no
    more per block as it grows.
    """
    if request.content_type not in ("text/csv", "text/plain", "application/csv"):
        raise UnsupportedMedia(f"expected text/csv, got {request.content_type}")
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending: list[str] = []  # the pieces of an unfinished record
    pending_len = 0
    quotes = 0  # quotes in ``pending``: an odd count is an open quoted field
    pending_line = 1  # the line ``pending`` starts on
    newlines = 0  # newlines in the bytes before the current block, for error positions
    head = b""  # bytes after the last of those newlines
    out: list[Record] = []
    async for block in request.content.iter_chunked(BLOCK):
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as exc:
            before = head + block[: max(exc.start, 0)]
            line, column = position(before)
            raise MalformedBody("not UTF-8", line=newlines + line, column=column) from None
        newlines += block.count(b"\n")
        cut_bytes = block.rfind(b"\n")
        head = block[cut_bytes + 1 :] if cut_bytes >= 0 else head + block
        first, cut, quotes = _record_ends(text, quotes)
        if cut == 0:
            pending.append(text)
            pending_len += len(text)
            if pending_len > max_record:
                raise MalformedBody(record_too_long(max_record), line=pending_line, column=1)
            continue
        if pending_len + first > max_record:
            raise MalformedBody(record_too_long(max_record), line=pending_line, column=1)
        pending.append(text[:cut])
        complete = "".join(pending)
        pending, pending_len = [text[cut:]], len(text) - cut
        pending_line = _parse(complete, pending_line, out, max_field)
        if pending_len > max_record:
            raise MalformedBody(record_too_long(max_record), line=pending_line, column=1)
        while len(out) >= batch:
            yield out[:batch]
            del out[:batch]
    try:
        tail = "".join(pending) + decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise MalformedBody("not UTF-8 at the end", line=newlines + 1, column=1) from None
    if tail:
        _parse(tail if tail.endswith("\n") else tail + "\n", pending_line, out, max_field)
    if out:
        yield out


def _record_ends(text: str, quotes: int) -> tuple[int, int, int]:
    """Where the first and the last record that ``text`` completes end (0: none), and the
    quotes after the last end; ``quotes`` is the count of quotes before ``text`` in its
    unfinished record (an odd count leaves a newline inside a quoted field)."""
    if '"' not in text:
        if quotes % 2:
            return 0, 0, quotes
        return text.find("\n") + 1, text.rfind("\n") + 1, 0
    first = last = pos = 0
    while (newline := text.find("\n", pos)) >= 0:
        quotes += text.count('"', pos, newline)
        pos = newline + 1
        if quotes % 2 == 0:
            first = first or pos
            last = pos
            quotes = 0
    return first, last, quotes + text.count('"', pos)


def _parse(text: str, first_line: int, out: list[Record], max_field: int = MAX_FIELD) -> int:
    """Parse complete records into ``out``; returns the line after the last one."""
    if not text:
        return first_line
    if "\x00" in text:
        at = text.index("\x00")
        bad = first_line + text.count("\n", 0, at)
        raise MalformedBody("NUL character", line=bad, column=at - text.rfind("\n", 0, at))
    # Split on newlines only: str.splitlines would also split on \r, \v, \f and others.
    lines = text.split("\n")[:-1]
    if '"' not in text:
        for i, line in enumerate(lines):
            stripped = line.rstrip("\r")
            if stripped.strip():
                fields = stripped.split(",")
                if len(stripped) > max_field:
                    _check_fields(fields, first_line + i, max_field)
                out.append((first_line + i, fields))
        return first_line + len(lines)
    lines = [line + "\n" for line in lines]
    reader = csv.reader(lines, strict=True)
    start = first_line
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad = first_line + reader.line_num - 1
            if "field larger than field limit" in str(exc):
                raise MalformedBody(field_too_long(max_field), line=start, column=1) from None
            raise MalformedBody(
                f"CSV: {exc}", line=bad, column=_fault_column(lines[reader.line_num - 1])
            ) from None
        _check_fields(fields, start, max_field)
        if fields and any(f.strip() for f in fields):
            out.append((start, fields))
        start = first_line + reader.line_num
    return first_line + len(lines)


def _check_fields(fields: list[str], line: int, max_field: int) -> None:
    column = 1
    for field in fields:
        if len(field) > max_field:
            raise MalformedBody(field_too_long(max_field), line=line, column=column)
        column += len(field) + 1


def _fault_column(line: str) -> int:
    """The 1-based column where strict CSV quoting breaks in ``line`` (best effort)."""
    quoted = False
    field_start = True
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    i += 2
                    continue
                quoted = False
                if i + 1 < len(line) and line[i + 1] not in ",\r\n":
                    return i + 2
        elif ch == '"' and field_start:
            quoted = True
        field_start = ch == "," and not quoted
        i += 1
    return line.rfind('"') + 1 if quoted else len(line.rstrip("\r\n")) + 1
