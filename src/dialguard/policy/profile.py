"""Profiles: named sets of rule settings that campaigns select and override.

A profile is built from raw values in the file's syntax (strings, lists, numbers) so that the
config file, the environment and ``dialguard campaign set --set key=value`` share one parser and
one set of error messages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from dialguard.policy.values import (
    Hours,
    ValueSyntaxError,
    Window,
    parse_bool,
    parse_duration,
    parse_hours,
    parse_limit,
    parse_optional_duration,
    parse_optional_window,
    parse_windows,
)


@dataclass(frozen=True, slots=True)
class Profile:
    calling_hours: Hours | None
    destination_min_interval: int | None
    destination_caps: tuple[Window, ...]
    conversation_min_seconds: int | None
    conversation_cooldown: int | None
    rotation_per_destination: Window | None
    campaign_callerids_per_day: int | None
    callerid_caps: tuple[Window, ...]
    callerid_max_concurrent: int | None
    require_registered_callerid: bool
    max_call_duration: int


class ProfileError(ValueError):
    """One or more invalid profile values; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _seconds_or_off(raw: Any) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return parse_limit(raw)
    return parse_limit(str(raw))


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "calling_hours": lambda raw: parse_hours(str(raw)),
    "destination_min_interval": lambda raw: parse_optional_duration(str(raw)),
    "destination_caps": lambda raw: parse_windows(_as_list_or_str(raw)),
    "conversation_min_seconds": _seconds_or_off,
    "conversation_cooldown": lambda raw: parse_optional_duration(str(raw)),
    "rotation_per_destination": lambda raw: parse_optional_window(str(raw)),
    "campaign_callerids_per_day": _seconds_or_off,
    "callerid_caps": lambda raw: parse_windows(_as_list_or_str(raw)),
    "callerid_max_concurrent": _seconds_or_off,
    "require_registered_callerid": parse_bool,
    "max_call_duration": lambda raw: parse_duration(str(raw)),
}

PROFILE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Profile))
assert set(PROFILE_KEYS) == set(_PARSERS), "every profile field needs a parser"

DEFAULT_VALUES: Mapping[str, Any] = {
    "calling_hours": "08:00-21:00",
    "destination_min_interval": "4h",
    "destination_caps": ["3/24h", "7/7d"],
    "conversation_min_seconds": 30,
    "conversation_cooldown": "7d",
    "rotation_per_destination": "2/30d",
    "campaign_callerids_per_day": 20,
    "callerid_caps": ["5/1m", "60/1h", "300/1d"],
    "callerid_max_concurrent": 10,
    "require_registered_callerid": True,
    "max_call_duration": "2h",
}

# Shipped profiles: each is the default with these changes. A [profiles.NAME] table in the config
# file starts from the shipped profile of that name (or from `default`) and overrides keys.
BUILTIN_CHANGES: Mapping[str, Mapping[str, Any]] = {
    "default": {},
    # Consumers: narrower evening, US Reg F's 7-in-7 kept.
    "b2c": {"calling_hours": "09:00-20:00"},
    # Businesses answer in office hours; fewer repeats are tolerated.
    "b2b": {"calling_hours": "09:00-18:00", "destination_caps": ["2/24h", "5/7d"]},
    # Debt collection (US Reg F): 7 attempts in 7 days, a week of quiet after a conversation.
    "finance": {
        "destination_min_interval": "24h",
        "destination_caps": ["1/24h", "7/7d"],
        "conversation_cooldown": "7d",
    },
}


def _as_list_or_str(raw: Any) -> list[str] | str:
    if isinstance(raw, list | tuple):
        return [str(item) for item in raw]
    return str(raw)


def build_profile(base: Mapping[str, Any], overrides: Mapping[str, Any], *, where: str) -> Profile:
    """Parse ``base`` updated by ``overrides``; every problem is reported, one line each.

    ``where`` names the source of the values in the messages (``profiles.b2b``, ``campaign x``).
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    merged = {**base, **overrides}
    for key in overrides:
        if key not in _PARSERS:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(PROFILE_KEYS)})")
    for key in PROFILE_KEYS:
        if key not in merged:
            problems.append(f"{where}.{key}: missing")
            continue
        try:
            values[key] = _PARSERS[key](merged[key])
        except ValueSyntaxError as exc:
            problems.append(f"{where}.{key}: {exc}")
    if problems:
        raise ProfileError(problems)
    return Profile(**values)


def builtin_raw(name: str) -> dict[str, Any]:
    """The raw values of a shipped profile (the default for any other name)."""
    return {**DEFAULT_VALUES, **BUILTIN_CHANGES.get(name, {})}


def builtin_profiles() -> dict[str, Profile]:
    return {
        name: build_profile(builtin_raw(name), {}, where=f"profiles.{name}")
        for name in BUILTIN_CHANGES
    }


def parse_override_assignment(text: str) -> tuple[str, str]:
    """``key=value`` from the CLI's ``--set``; lists are comma-separated in the value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueSyntaxError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def with_changes(profile: Profile, **changes: Any) -> Profile:
    return replace(profile, **changes)
