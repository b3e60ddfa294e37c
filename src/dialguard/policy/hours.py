"""Calling hours in the destination's local time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from dialguard.policy.model import Facts
from dialguard.policy.values import Hours


def outside_hours(hours: Hours | None, zones: tuple[str, ...], at: datetime) -> Facts | None:
    """Facts of the first zone where ``at`` is outside ``hours``; ``None`` when every zone is in.

    A number that rings in several zones is callable only when it is inside the hours in each.
    """
    if hours is None:
        return None
    for zone in zones:
        local = at.astimezone(ZoneInfo(zone))
        second = local.hour * 3600 + local.minute * 60 + local.second
        if not hours.contains(second):
            return {
                "zone": zone,
                "local_time": local.strftime("%H:%M:%S"),
                "hours": str(hours),
                "opens_at": next_opening(hours, zones, at).isoformat(),
            }
    return None


def next_opening(hours: Hours, zones: tuple[str, ...], at: datetime) -> datetime:
    """The first moment at or after ``at`` when every zone is inside ``hours``.

    Jumps to the next local opening of whichever zone is closed until all are open; windows that
    never overlap across the zones give up after a week and return that bound.
    """
    candidate = at
    limit = at + timedelta(days=7)
    while candidate < limit:
        closed = [zone for zone in zones if not _inside(hours, zone, candidate)]
        if not closed:
            return candidate
        candidate = max(_next_local_start(hours, zone, candidate) for zone in closed)
    return limit


def _next_local_start(hours: Hours, zone: str, at: datetime) -> datetime:
    tz = ZoneInfo(zone)
    local = at.astimezone(tz)
    second = local.hour * 3600 + local.minute * 60 + local.second
    day = local.date() if second < hours.start else local.date() + timedelta(days=1)
    wall = datetime(day.year, day.month, day.day) + timedelta(seconds=hours.start)
    opening = wall.replace(tzinfo=tz)
    if opening.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wall:
        # The opening falls in the hour a spring clock change skips: the zone opens when the
        # gap ends. fold=1 reads the wall time with the offset before the gap, just before it.
        candidate = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
        while not _inside(hours, zone, candidate):
            candidate += timedelta(minutes=1)
        return candidate.astimezone(at.tzinfo)
    return opening.astimezone(at.tzinfo)


def _inside(hours: Hours, zone: str, at: datetime) -> bool:
    local = at.astimezone(ZoneInfo(zone))
    return hours.contains(local.hour * 3600 + local.minute * 60 + local.second)
