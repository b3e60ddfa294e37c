"""Calling hours in the destination's local time: boundaries, several zones, the next opening."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from dialguard.policy.checks import Precheck, precheck
from dialguard.policy.codes import Rule
from dialguard.policy.hours import next_opening, outside_hours
from dialguard.policy.profile import DEFAULT_VALUES, Profile, build_profile
from dialguard.policy.values import Hours, parse_hours

NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")
NEW_YORK = ("America/New_York",)
DAY = Hours(8 * 3600, 21 * 3600)


def ny(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY)


@pytest.mark.parametrize(
    ("local", "inside"),
    [
        ((7, 59, 59), False),
        ((8, 0, 0), True),
        ((12, 0, 0), True),
        ((20, 59, 59), True),
        ((21, 0, 0), False),
        ((23, 30, 0), False),
        ((0, 0, 0), False),
    ],
)
def test_hours_include_their_start_and_exclude_their_end(
    local: tuple[int, int, int], inside: bool
) -> None:
    at = ny(2026, 3, 10, *local).astimezone(UTC)
    facts = outside_hours(DAY, NEW_YORK, at)
    assert (facts is None) is inside


def test_the_default_hours_are_08_00_to_21_00() -> None:
    assert parse_hours("08:00-21:00") == DAY


def test_the_facts_name_the_zone_local_time_hours_and_opening() -> None:
    at = ny(2026, 3, 10, 21, 0, 0).astimezone(UTC)
    assert outside_hours(DAY, NEW_YORK, at) == {
        "zone": "America/New_York",
        "local_time": "21:00:00",
        "hours": "08:00-21:00",
        "opens_at": "2026-03-11T12:00:00+00:00",
    }


def test_no_hours_means_every_time_is_inside() -> None:
    assert outside_hours(None, NEW_YORK, ny(2026, 3, 10, 3, 0, 0)) is None


@pytest.mark.parametrize("local", [(0, 0, 0), (3, 33, 33), (23, 59, 59)])
def test_00_00_to_24_00_is_all_day(local: tuple[int, int, int]) -> None:
    all_day = parse_hours("00:00-24:00")
    assert outside_hours(all_day, NEW_YORK, ny(2026, 3, 10, *local)) is None


def test_a_number_in_several_zones_must_be_inside_in_every_one() -> None:
    zones = ("America/New_York", "America/Los_Angeles")
    # 08:30 in New York is 05:30 in Los Angeles.
    facts = outside_hours(DAY, zones, ny(2026, 3, 10, 8, 30, 0))
    assert facts is not None
    assert facts["zone"] == "America/Los_Angeles" and facts["local_time"] == "05:30:00"
    # It opens when Los Angeles reaches 08:00.
    assert datetime.fromisoformat(facts["opens_at"]) == datetime(2026, 3, 10, 8, 0, tzinfo=LA)
    # 11:00 New York is 08:00 Los Angeles: inside in both.
    assert outside_hours(DAY, zones, ny(2026, 3, 10, 11, 0, 0)) is None
    # 20:59:59 Los Angeles is 23:59:59 New York: closed in New York.
    late = outside_hours(DAY, zones, datetime(2026, 3, 10, 20, 59, 59, tzinfo=LA))
    assert late is not None and late["zone"] == "America/New_York"


def test_the_first_closed_zone_is_the_one_reported() -> None:
    zones = ("Europe/London", "Asia/Tokyo")
    # 03:00 UTC: 03:00 London and 12:00 Tokyo.
    facts = outside_hours(DAY, zones, datetime(2026, 3, 10, 3, 0, tzinfo=UTC))
    assert facts is not None and facts["zone"] == "Europe/London"


def test_next_opening_is_now_when_every_zone_is_already_inside() -> None:
    at = ny(2026, 3, 10, 10, 0, 0)
    assert next_opening(DAY, NEW_YORK, at) == at


def test_next_opening_after_closing_is_the_next_morning() -> None:
    at = ny(2026, 3, 10, 21, 0, 0)
    assert next_opening(DAY, NEW_YORK, at) == ny(2026, 3, 11, 8, 0, 0)


def test_next_opening_before_opening_is_the_same_morning() -> None:
    at = ny(2026, 3, 10, 6, 15, 0)
    assert next_opening(DAY, NEW_YORK, at) == ny(2026, 3, 10, 8, 0, 0)


def test_next_opening_keeps_the_callers_offset() -> None:
    at = ny(2026, 3, 10, 22, 0, 0).astimezone(UTC)
    opening = next_opening(DAY, NEW_YORK, at)
    assert opening.utcoffset() == timedelta(0)
    assert opening == datetime(2026, 3, 11, 12, 0, tzinfo=UTC)


def test_next_opening_across_the_spring_dst_change_is_08_00_local() -> None:
    # 8 March 2026: New York moves from UTC-5 to UTC-4 at 02:00 local.
    at = ny(2026, 3, 7, 22, 0, 0).astimezone(UTC)
    opening = next_opening(DAY, NEW_YORK, at)
    assert opening == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert opening.astimezone(NY).hour == 8


def test_next_opening_across_the_autumn_dst_change_is_08_00_local() -> None:
    # 1 November 2026: New York moves from UTC-4 back to UTC-5 at 02:00 local.
    at = ny(2026, 10, 31, 22, 0, 0).astimezone(UTC)
    opening = next_opening(DAY, NEW_YORK, at)
    assert opening == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)
    assert opening.astimezone(NY).hour == 8


def test_an_opening_in_the_repeated_autumn_hour_is_its_first_occurrence() -> None:
    hours = parse_hours("01:30-21:00")
    assert hours is not None
    at = ny(2026, 11, 1, 0, 0, 0).astimezone(UTC)
    # 01:30 happens twice; the first time is 01:30 EDT (05:30 UTC).
    assert next_opening(hours, NEW_YORK, at) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_an_opening_in_the_skipped_spring_hour_is_the_end_of_the_gap() -> None:
    hours = parse_hours("02:30-21:00")
    assert hours is not None
    at = ny(2026, 3, 8, 1, 0, 0).astimezone(UTC)
    # Local time jumps from 01:59:59 EST to 03:00:00 EDT (07:00 UTC), which is inside.
    assert outside_hours(hours, NEW_YORK, datetime(2026, 3, 8, 7, 0, tzinfo=UTC)) is None
    assert next_opening(hours, NEW_YORK, at) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def test_next_opening_with_several_zones_waits_for_the_last_to_open() -> None:
    zones = ("America/New_York", "America/Los_Angeles")
    at = ny(2026, 3, 10, 22, 0, 0)
    # New York opens at 08:00, but Los Angeles only three hours later.
    assert next_opening(DAY, zones, at) == datetime(2026, 3, 11, 8, 0, tzinfo=LA)


def test_next_opening_re_checks_zones_that_close_while_waiting() -> None:
    zones = ("Asia/Tokyo", "Europe/London")
    hours = parse_hours("08:00-18:00")
    assert hours is not None
    # 09:00 UTC on a Tuesday: 18:00 Tokyo (just closed) and 09:00 London (open).
    at = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    opening = next_opening(hours, zones, at)
    # Tokyo opens at 23:00 UTC when London is closed; the next time both are open is when
    # London opens at 08:00 the next morning (17:00 in Tokyo).
    assert opening == datetime(2026, 3, 11, 8, 0, tzinfo=UTC)
    assert outside_hours(hours, zones, opening) is None
    assert outside_hours(hours, zones, opening - timedelta(seconds=1)) is not None


def test_windows_that_never_overlap_give_up_after_a_week() -> None:
    zones = ("Pacific/Auckland", "Europe/London")
    hours = Hours(8 * 3600, 9 * 3600)
    at = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)
    assert next_opening(hours, zones, at) == at + timedelta(days=7)


class TestPrecheck:
    profile = build_profile(DEFAULT_VALUES, {}, where="profiles.default")

    def test_an_invalid_destination_is_invalid_number_with_the_raw_text(self) -> None:
        pre = precheck(
            destination=None,
            caller_id=None,
            raw_destination="garbage",
            raw_caller_id="also garbage",
            zones=(),
            profile=self.profile,
            at=ny(2026, 3, 10, 10, 0, 0),
        )
        assert pre.rule is Rule.INVALID_NUMBER
        assert pre.facts == {"destination": "garbage"}
        assert pre.hours_facts is None

    def test_an_invalid_caller_id_is_callerid_unknown_and_not_valid(self) -> None:
        pre = precheck(
            destination="+12122641234",
            caller_id=None,
            raw_destination="+12122641234",
            raw_caller_id="12",
            zones=NEW_YORK,
            profile=self.profile,
            at=ny(2026, 3, 10, 10, 0, 0),
        )
        assert pre.rule is Rule.CALLERID_UNKNOWN
        assert pre.facts == {"caller_id": "12", "valid": False}

    def test_valid_numbers_carry_the_hours_facts_into_the_round_trip(self) -> None:
        night = self._valid(ny(2026, 3, 10, 23, 0, 0))
        assert night.rule is None and night.facts is None
        assert night.hours_facts is not None and night.hours_facts["local_time"] == "23:00:00"
        day = self._valid(ny(2026, 3, 10, 10, 0, 0))
        assert day.rule is None and day.hours_facts is None

    def test_hours_switched_off_carry_no_hours_facts(self) -> None:
        profile = build_profile(DEFAULT_VALUES, {"calling_hours": "off"}, where="p")
        assert self._valid(ny(2026, 3, 10, 3, 0, 0), profile).hours_facts is None

    def _valid(self, at: datetime, profile: Profile | None = None) -> Precheck:
        return precheck(
            destination="+12122641234",
            caller_id="+12125550100",
            raw_destination="(212) 264-1234",
            raw_caller_id="+12125550100",
            zones=NEW_YORK,
            profile=profile or self.profile,
            at=at,
        )
