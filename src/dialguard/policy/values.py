"""Parsing of the policy's value syntax: durations, rate windows and calling hours.

Durations take ``s``, ``m``, ``h`` or ``d`` (``"90s"``, ``"4h"``, ``"7d"``); a window is
``COUNT/DURATION`` (``"3/24h"``); calling hours are ``"HH:MM-HH:MM"`` with ``24:00`` allowed as
an end. ``"off"`` switches a duration, window or limit off (``None``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)([smhd])")
_HOURS = re.compile(r"(\d{2}):(\d{2})-(\d{2}):(\d{2})")
OFF = "off"


class ValueSyntaxError(ValueError):
    """A policy value that does not follow the syntax; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class Window:
    """At most ``limit`` events in any rolling ``seconds``."""

    limit: int
    seconds: int

    def __str__(self) -> str:
        return f"{self.limit}/{format_duration(self.seconds)}"


@dataclass(frozen=True, slots=True)
class Hours:
    """Local times ``start <= t < end``, in seconds since local midnight."""

    start: int
    end: int

    def contains(self, second_of_day: int) -> bool:
        return self.start <= second_of_day < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def parse_duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueSyntaxError(f"expected a duration like 30s, 15m, 4h or 7d, got {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueSyntaxError(f"a duration must be longer than zero, got {text!r}")
    return seconds


def parse_optional_duration(text: str) -> int | None:
    return None if text.strip() == OFF else parse_duration(text)


def parse_window(text: str) -> Window:
    count, sep, duration = text.strip().partition("/")
    if not sep or not count.isdigit():
        raise ValueSyntaxError(f"expected COUNT/DURATION like 3/24h, got {text!r}")
    limit = int(count)
    if limit <= 0:
        raise ValueSyntaxError(f"a window's count must be at least 1, got {text!r}")
    return Window(limit, parse_duration(duration))


def parse_optional_window(text: str) -> Window | None:
    return None if text.strip() == OFF else parse_window(text)


def parse_windows(items: list[str] | str) -> tuple[Window, ...]:
    """A list of windows; a string is split on commas (the CLI's ``--set`` form)."""
    if isinstance(items, str):
        text = items.strip()
        if text in ("", OFF, "[]"):
            return ()
        items = [part for part in text.split(",")]
    return tuple(parse_window(item) for item in items)


def parse_limit(text: str | int) -> int | None:
    if isinstance(text, bool):
        raise ValueSyntaxError(f"expected a whole number or 'off', got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        stripped = text.strip()
        if stripped == OFF:
            return None
        if not stripped.isdigit():
            raise ValueSyntaxError(f"expected a whole number or 'off', got {text!r}")
        value = int(stripped)
    if value < 0:
        raise ValueSyntaxError(f"a limit cannot be negative, got {text!r}")
    return value


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise ValueSyntaxError(f"expected true or false, got {text!r}")


def parse_hours(text: str) -> Hours | None:
    stripped = text.strip()
    if stripped == OFF:
        return None
    match = _HOURS.fullmatch(stripped)
    if match is None:
        raise ValueSyntaxError(f"expected calling hours like 08:00-21:00, got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueSyntaxError(f"not a time of day in {text!r}")
    start, end = h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60
    if start >= end:
        raise ValueSyntaxError(f"calling hours must start before they end, got {text!r}")
    return Hours(start, end)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 time that must carry an offset (``Z`` or ``+02:00``): a time without one
    would be read in whatever zone the machine is in, which is never what a record means."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueSyntaxError(f"not an ISO 8601 time: {text!r}") from None
    if value.tzinfo is None:
        raise ValueSyntaxError(f"time {text!r} has no offset; add Z or +HH:MM")
    return value


def format_duration(seconds: int) -> str:
    """The shortest exact form, except that a single day reads as ``24h``."""
    if seconds % 86400 == 0 and seconds > 86400:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"
