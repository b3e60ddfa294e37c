"""Reading blacklist CSV files: headers, defaults, bad rows with line numbers, chunks, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dialguard.blacklist_csv import RowError, StageRow, read_rows
from dialguard.policy.values import parse_instant as parse_time


def read(text: str, chunk_size: int = 50_000) -> tuple[list[StageRow], list[RowError]]:
    rows: list[StageRow] = []
    errors: list[RowError] = []
    for chunk, chunk_errors in read_rows(
        text.splitlines(keepends=True), region="US", default_source="dnc", chunk_size=chunk_size
    ):
        rows.extend(chunk)
        errors.extend(chunk_errors)
    return rows, errors


def test_a_file_without_header_is_one_number_a_line() -> None:
    rows, errors = read("(212) 264-1234\n+1 212 264 1235\n")
    assert errors == []
    assert rows == [
        (12122641234, "", "dnc", None, None),
        (12122641235, "", "dnc", None, None),
    ]


def test_a_file_without_header_may_carry_the_optional_columns_in_order() -> None:
    rows, _ = read("2122641234,spring,crm,asked,2027-01-01T00:00:00Z\n")
    assert rows == [
        (12122641234, "spring", "crm", "asked", datetime(2027, 1, 1, tzinfo=UTC)),
    ]


@pytest.mark.parametrize("column", ["number", "value", "destination", " Number "])
def test_a_header_names_the_number_column(column: str) -> None:
    rows, errors = read(f"{column},source\n2122641234,carrier\n")
    assert errors == []
    assert rows == [(12122641234, "", "carrier", None, None)]


def test_header_columns_may_come_in_any_order() -> None:
    rows, errors = read(
        "number,expires_at,reason,campaign,source\n"
        "+12122641234,2027-01-01T02:00:00+02:00,asked,spring,crm\n"
    )
    assert errors == []
    assert rows == [
        (12122641234, "spring", "crm", "asked", datetime(2027, 1, 1, tzinfo=UTC)),
    ]


def test_empty_optional_cells_take_the_defaults() -> None:
    rows, _ = read("number,campaign,source,reason,expires_at\n+12122641234,,,,\n")
    assert rows == [(12122641234, "", "dnc", None, None)]


def test_blank_lines_are_skipped_but_still_counted_in_line_numbers() -> None:
    rows, errors = read("number\n\n+12122641234\n ,\ngarbage\n")
    assert [r[0] for r in rows] == [12122641234]
    assert errors == [RowError(5, "not a valid phone number: 'garbage'")]


def test_every_bad_row_is_reported_with_its_line_number_and_good_rows_are_kept() -> None:
    rows, errors = read(
        "number,campaign,source,reason,expires_at\n"
        "+12122641234,,,,\n"
        "garbage,,,,\n"
        "+12122641235,,,,2027-01-01T00:00:00\n"
        "(212) 264-1236,spring,,,\n"
        "+12122641237,,,,next week\n"
        ",,,,\n"
        "+1 212 264 1238,,,,\n"
    )
    assert [r[0] for r in rows] == [12122641234, 12122641236, 12122641238]
    assert [str(e) for e in errors] == [
        "line 3: not a valid phone number: 'garbage'",
        "line 4: time '2027-01-01T00:00:00' has no offset; add Z or +HH:MM",
        "line 6: not an ISO 8601 time: 'next week'",
    ]


def test_a_quoted_cell_with_a_newline_keeps_later_line_numbers_true() -> None:
    rows, errors = read('number,reason\n+12122641234,"two\nlines"\ngarbage,x\n')
    assert rows == [(12122641234, "", "dnc", "two\nlines", None)]
    assert errors == [RowError(4, "not a valid phone number: 'garbage'")]


def test_unknown_header_columns_are_reported_on_line_one() -> None:
    _, errors = read("number,source,colour\n+12122641234,crm,red\n")
    assert errors == [RowError(1, "unknown columns ['colour']")]


def test_an_unknown_column_does_not_shift_the_values_after_it() -> None:
    rows, _ = read("number,colour,source\n+12122641234,red,carrier\n")
    assert rows == [(12122641234, "", "carrier", None, None)]


def test_rows_are_yielded_in_chunks_with_their_errors() -> None:
    lines = ["number\n", "+12122641231\n", "bad\n", "+12122641232\n", "+12122641233\n"]
    chunks = list(read_rows(lines, region="US", chunk_size=2))
    assert [([r[0] for r in rows], [e.line for e in errors]) for rows, errors in chunks] == [
        ([12122641231, 12122641232], [3]),
        ([12122641233], []),
    ]
    assert chunks[0][0][0][2] == "import"


def test_a_file_of_only_bad_rows_still_yields_its_errors() -> None:
    chunks = list(read_rows(["garbage\n"], region="US"))
    assert chunks == [([], [RowError(1, "not a valid phone number: 'garbage'")])]


def test_an_empty_file_yields_nothing() -> None:
    assert list(read_rows([], region="US")) == []
    assert list(read_rows(["number\n"], region="US")) == []


def test_national_numbers_are_read_in_the_region() -> None:
    chunks = list(read_rows(["020 7946 0018\n"], region="GB"))
    assert chunks[0][0][0][0] == 442079460018


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-01-01T00:00:00Z", datetime(2027, 1, 1, tzinfo=UTC)),
        (" 2027-01-01T00:00:00+00:00 ", datetime(2027, 1, 1, tzinfo=UTC)),
        (
            "2027-01-01T09:30:00+02:00",
            datetime(2027, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2027-01-01 09:30:00-05:00", datetime(2027, 1, 1, 14, 30, tzinfo=UTC)),
    ],
)
def test_times_carry_an_offset(text: str, expected: datetime) -> None:
    value = parse_time(text)
    assert value == expected and value.tzinfo is not None


def test_a_time_without_an_offset_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"has no offset; add Z or \+HH:MM"):
        parse_time("2027-01-01T00:00:00")


@pytest.mark.parametrize("text", ["", "tomorrow", "2027-13-01T00:00:00Z", "01/02/2027"])
def test_a_time_that_is_not_iso_8601_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        parse_time(text)
