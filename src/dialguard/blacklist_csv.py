"""Reading blacklist CSV files: streamed, chunked, every bad row reported with its line number.

Columns (header optional): ``number`` (also ``value`` or ``destination``), then optional
``campaign``, ``source``, ``reason``, ``expires_at`` (ISO 8601 with an offset) and ``kind``
(``number``, the default, or ``prefix``: what ``dialguard blacklist export`` writes). A file
without a header is one number a line, optionally followed by those columns in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from dialguard.csv_input import CsvRecords
from dialguard.numbers import InvalidNumber, is_e164_prefix, normalise_for_list
from dialguard.policy.model import BlacklistNumberRow, BlacklistPrefixRow
from dialguard.policy.values import parse_instant as parse_time

NUMBER_COLUMNS = ("number", "value", "destination")
OPTIONAL_COLUMNS = ("campaign", "source", "reason", "expires_at", "kind")
StageRow = BlacklistNumberRow
PrefixRow = BlacklistPrefixRow


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def read_rows(
    lines: Iterable[str],
    *,
    region: str,
    default_source: str = "import",
    chunk_size: int = 50_000,
    prefixes: list[PrefixRow] | None = None,
) -> Iterator[tuple[list[StageRow], list[RowError]]]:
    """Yield (good rows, errors) per chunk; nothing is held beyond one chunk.

    Rows of kind ``prefix`` are appended to ``prefixes`` (the caller stores and empties it after
    each chunk); without that list they are reported as errors. A record or field past the
    bounds of :mod:`dialguard.csv_input`, or broken quoting, raises its ``CsvInputError``.
    """
    reader = CsvRecords(lines)
    columns: list[str] | None = None
    chunk: list[StageRow] = []
    errors: list[RowError] = []
    for record in reader:
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) == 1 and columns is not None:
            # The shape of a national registry: one E.164 number a line. Taking it without
            # the general path below (a dict, a regex, phonenumbers) triples the parse rate.
            key = _plain_e164_key(record[0])
            if key is not None:
                chunk.append((key, "", default_source, None, None))
                if len(chunk) >= chunk_size:
                    yield chunk, errors
                    chunk, errors = [], []
                continue
        if columns is None:
            first = [cell.strip().lower() for cell in record]
            if first[0] in NUMBER_COLUMNS:
                unknown = [c for c in first[1:] if c not in OPTIONAL_COLUMNS]
                if unknown:
                    errors.append(RowError(line, f"unknown columns {unknown}"))
                # Keep every position, so a value after an unknown column stays in its column.
                columns = [first[0], *first[1:]]
                continue
            columns = ["number", *OPTIONAL_COLUMNS]
        values = {
            name: cell.strip()
            for name, cell in zip(columns, record, strict=False)
            if name in OPTIONAL_COLUMNS or name == columns[0]
        }
        try:
            kind = (values.get("kind") or "number").lower()
            if kind == "prefix" and prefixes is not None:
                prefixes.append(_prefix_row(values, columns[0], default_source))
            elif kind in ("number", "prefix"):
                if kind == "prefix":
                    raise ValueError("prefix rows are not taken here")
                chunk.append(number_row(values, columns[0], region, default_source))
            else:
                raise ValueError(f"kind must be number or prefix, got {kind!r}")
        except (InvalidNumber, ValueError) as exc:
            errors.append(RowError(line, str(exc)))
        if len(chunk) >= chunk_size:
            yield chunk, errors
            chunk, errors = [], []
    if chunk or errors or prefixes:
        yield chunk, errors


def _plain_e164_key(cell: str) -> int | None:
    """The bigint key of ``+<7 to 15 digits>`` (no separators), else ``None``."""
    text = cell.strip()
    if 8 <= len(text) <= 16 and text[0] == "+" and text[1] != "0" and text[1:].isdigit():
        return int(text[1:])
    return None


def _prefix_row(values: dict[str, str], key: str, default_source: str) -> PrefixRow:
    prefix = values.get(key, "").strip()
    if not is_e164_prefix(prefix):
        raise ValueError(f"prefix {prefix!r} must be E.164 like +1718264")
    expires = values.get("expires_at") or ""
    return (
        prefix,
        values.get("campaign") or "",
        values.get("source") or default_source,
        values.get("reason") or None,
        parse_time(expires) if expires else None,
    )


def number_row(values: Mapping[str, str], key: str, region: str, default_source: str) -> StageRow:
    """One number row from its cells by column name (``key`` names the number's column);
    raises InvalidNumber or ValueError with a message fit for the row's error line."""
    number = normalise_for_list(values.get(key, ""), region)
    expires = (values.get("expires_at") or "").strip()
    return (
        int(number[1:]),
        (values.get("campaign") or "").strip(),
        (values.get("source") or "").strip() or default_source,
        (values.get("reason") or "").strip() or None,
        parse_time(expires) if expires else None,
    )
