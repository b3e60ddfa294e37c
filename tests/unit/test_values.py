"""The policy's value syntax: durations, windows, limits, booleans and calling hours."""

from __future__ import annotations

import pytest

from dialguard.policy.values import (
    Hours,
    ValueSyntaxError,
    Window,
    format_duration,
    parse_bool,
    parse_duration,
    parse_hours,
    parse_limit,
    parse_optional_duration,
    parse_optional_window,
    parse_window,
    parse_windows,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("4h", 14400), ("7d", 604800), (" 24h ", 86400), ("90s", 90)],
)
def test_durations_take_s_m_h_and_d(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["4", "h", "4H", "1.5h", "4 h", "4w", "-4h", "", "off", "4h30m"])
def test_a_malformed_duration_names_the_expected_syntax(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="expected a duration like 30s, 15m, 4h or 7d"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0d"])
def test_a_zero_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="longer than zero"):
        parse_duration(text)


def test_off_switches_an_optional_duration_off() -> None:
    assert parse_optional_duration("off") is None
    assert parse_optional_duration(" off ") is None
    assert parse_optional_duration("4h") == 14400


def test_a_window_is_count_slash_duration() -> None:
    assert parse_window("3/24h") == Window(3, 86400)
    assert parse_window(" 7/7d ") == Window(7, 604800)


@pytest.mark.parametrize("text", ["3", "3-24h", "x/24h", "-1/24h", "/24h", "3.5/24h"])
def test_a_malformed_window_names_the_expected_syntax(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="expected COUNT/DURATION like 3/24h"):
        parse_window(text)


def test_a_window_with_a_zero_count_is_refused() -> None:
    with pytest.raises(ValueSyntaxError, match="count must be at least 1"):
        parse_window("0/24h")


def test_a_window_with_a_bad_duration_reports_the_duration() -> None:
    with pytest.raises(ValueSyntaxError, match="expected a duration"):
        parse_window("3/24x")
    with pytest.raises(ValueSyntaxError, match="longer than zero"):
        parse_window("3/0h")


def test_off_switches_an_optional_window_off() -> None:
    assert parse_optional_window("off") is None
    assert parse_optional_window("2/30d") == Window(2, 30 * 86400)


def test_a_window_list_is_a_list_or_a_comma_separated_string() -> None:
    expected = (Window(3, 86400), Window(7, 604800))
    assert parse_windows(["3/24h", "7/7d"]) == expected
    assert parse_windows("3/24h,7/7d") == expected
    assert parse_windows(" 3/24h , 7/7d ") == expected


@pytest.mark.parametrize("empty", ["", "off", "[]", " [] ", []])
def test_an_empty_window_list_switches_the_rule_off(empty: str | list[str]) -> None:
    assert parse_windows(empty) == ()


def test_every_item_of_a_window_list_is_checked() -> None:
    with pytest.raises(ValueSyntaxError, match="'7x'"):
        parse_windows("3/24h,7/7x")
    with pytest.raises(ValueSyntaxError, match="expected COUNT/DURATION"):
        parse_windows("3/24h,")


@pytest.mark.parametrize(
    ("raw", "limit"), [("20", 20), (" 0 ", 0), (10, 10), (0, 0), ("off", None), (" off", None)]
)
def test_a_limit_is_a_whole_number_or_off(raw: str | int, limit: int | None) -> None:
    assert parse_limit(raw) == limit


@pytest.mark.parametrize("raw", ["ten", "1.5", "-3", "", True, False])
def test_a_limit_that_is_not_a_whole_number_is_refused(raw: str | int) -> None:
    with pytest.raises(ValueSyntaxError, match="expected a whole number or 'off'"):
        parse_limit(raw)


def test_a_negative_integer_limit_is_refused() -> None:
    with pytest.raises(ValueSyntaxError, match="cannot be negative"):
        parse_limit(-1)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (True, True),
        (False, False),
        ("true", True),
        (" Yes ", True),
        ("on", True),
        ("1", True),
        ("FALSE", False),
        ("no", False),
        ("off", False),
        ("0", False),
    ],
)
def test_booleans_accept_the_usual_spellings(raw: str | bool, value: bool) -> None:
    assert parse_bool(raw) is value


def test_a_boolean_that_is_neither_true_nor_false_is_refused() -> None:
    with pytest.raises(ValueSyntaxError, match="expected true or false, got 'maybe'"):
        parse_bool("maybe")


def test_calling_hours_are_seconds_of_the_local_day() -> None:
    assert parse_hours("08:00-21:00") == Hours(8 * 3600, 21 * 3600)
    assert parse_hours(" 09:30-17:45 ") == Hours(9 * 3600 + 1800, 17 * 3600 + 45 * 60)


def test_all_day_is_00_00_to_24_00() -> None:
    hours = parse_hours("00:00-24:00")
    assert hours == Hours(0, 86400)
    assert hours.contains(0) and hours.contains(86399)


def test_off_switches_calling_hours_off() -> None:
    assert parse_hours("off") is None


def test_calling_hours_include_the_start_and_exclude_the_end() -> None:
    hours = parse_hours("08:00-21:00")
    assert hours is not None
    assert not hours.contains(8 * 3600 - 1)
    assert hours.contains(8 * 3600)
    assert hours.contains(21 * 3600 - 1)
    assert not hours.contains(21 * 3600)


@pytest.mark.parametrize("text", ["8:00-21:00", "08:00 - 21:00", "08:00", "0800-2100", "always"])
def test_malformed_calling_hours_name_the_expected_syntax(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="expected calling hours like 08:00-21:00"):
        parse_hours(text)


@pytest.mark.parametrize(
    "text", ["24:00-24:00", "08:60-21:00", "08:00-21:60", "08:00-25:00", "08:00-24:30"]
)
def test_calling_hours_outside_the_day_are_refused(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="not a time of day"):
        parse_hours(text)


@pytest.mark.parametrize("text", ["21:00-08:00", "08:00-08:00"])
def test_calling_hours_must_start_before_they_end(text: str) -> None:
    with pytest.raises(ValueSyntaxError, match="must start before they end"):
        parse_hours(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1s"),
        (90, "90s"),
        (60, "1m"),
        (900, "15m"),
        (3600, "1h"),
        (86400, "24h"),
        (129600, "36h"),
        (172800, "2d"),
        (604800, "7d"),
    ],
)
def test_durations_are_written_in_their_shortest_exact_form(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_windows_and_hours_print_in_the_file_syntax() -> None:
    assert str(Window(3, 86400)) == "3/24h"
    assert str(Window(7, 604800)) == "7/7d"
    assert str(Hours(8 * 3600, 21 * 3600)) == "08:00-21:00"
    assert str(Hours(9 * 3600 + 1800, 86400)) == "09:30-24:00"
