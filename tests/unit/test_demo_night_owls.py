"""The demo's opening tour can always make calling_hours deny: some zone is always at night."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dialguard.demo import NIGHT_OWLS
from dialguard.numbers import destination
from dialguard.policy.hours import outside_hours
from dialguard.policy.values import parse_hours

DEFAULT_HOURS = parse_hours("08:00-21:00")


def owls() -> list[tuple[str, tuple[str, ...]]]:
    """Each number as the tour dials it (index i fills the number's blank), parsed as the gate
    parses it."""
    found = []
    for i, pattern in enumerate(NIGHT_OWLS):
        parsed = destination(pattern.format(i), "US", "America/New_York")
        assert parsed is not None, f"{pattern.format(i)} is not a valid number"
        found.append(parsed)
    return found


@pytest.mark.parametrize("day", ["2026-01-15", "2026-03-29", "2026-07-15", "2026-10-04"])
def test_at_every_minute_of_the_day_one_of_the_numbers_is_outside_the_default_hours(
    day: str,
) -> None:
    numbers = owls()
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    for minute in range(0, 24 * 60, 5):
        at = start + timedelta(minutes=minute)
        assert any(outside_hours(DEFAULT_HOURS, zones, at) for _, zones in numbers), at
