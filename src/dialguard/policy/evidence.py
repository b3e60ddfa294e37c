"""Turns a decision's facts into the sentence operators read, and says when it may be retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from dialguard.policy.codes import Rule
from dialguard.policy.model import Facts
from dialguard.policy.values import format_duration


def _window(facts: Facts) -> str:
    return format_duration(int(facts["window_s"]))


def _blacklisted(f: Facts) -> str:
    scope = "global" if f.get("scope") == "global" else "campaign"
    what = "number" if f.get("match") == "number" else "prefix"
    text = f"{what} {f.get('value')} is on the {scope} blacklist (source {f.get('source')})"
    if f.get("expires_at"):
        text += f" until {f['expires_at']}"
    return text


def _callerid_unknown(f: Facts) -> str:
    if f.get("valid") is False:
        return f"caller ID {f.get('caller_id')!r} is not a valid phone number"
    if f.get("registered_for"):
        return f"caller ID {f.get('caller_id')} is registered for campaign {f['registered_for']}"
    return f"caller ID {f.get('caller_id')} is not registered"


_TEMPLATES: dict[Rule, Callable[[Facts], str]] = {
    Rule.INVALID_NUMBER: lambda f: f"{f.get('destination')!r} is not a valid phone number",
    Rule.CALLERID_UNKNOWN: _callerid_unknown,
    Rule.CALLERID_RESTED: lambda f: (
        f"caller ID {f.get('caller_id')} is {f.get('state')} ({f.get('reason') or 'no reason'})"
        f" since {f.get('since')}"
    ),
    Rule.CAMPAIGN_PAUSED: lambda f: (
        f"campaign {f.get('campaign')} is paused ({f.get('reason') or 'no reason'})"
    ),
    Rule.BLACKLISTED: _blacklisted,
    Rule.CALLING_HOURS: lambda f: (
        f"local time {f.get('local_time')} in {f.get('zone')} is outside {f.get('hours')}"
    ),
    Rule.DESTINATION_COOLDOWN: lambda f: (
        f"a {f.get('answered_seconds')} s conversation ended at {f.get('ended_at')}; cooldown"
        f" {format_duration(int(f['cooldown_s']))} after conversations of"
        f" {f.get('min_seconds')} s or more"
    ),
    Rule.DESTINATION_INTERVAL: lambda f: (
        f"last attempt at {f.get('last_at')}, minimum interval"
        f" {format_duration(int(f['interval_s']))}"
    ),
    Rule.DESTINATION_CAP: lambda f: (
        f"{f.get('count')} attempts in the last {_window(f)}, limit {f.get('limit')}"
    ),
    Rule.CALLERID_ROTATION: lambda f: (
        f"destination already saw {f.get('seen')} distinct caller IDs in {_window(f)},"
        f" limit {f.get('limit')}"
    ),
    Rule.CAMPAIGN_ROTATION: lambda f: (
        f"campaign used {f.get('used')} distinct caller IDs in {_window(f)}, limit {f.get('limit')}"
    ),
    Rule.CALLERID_RATE: lambda f: (
        f"caller ID made {f.get('count')} calls in the last {_window(f)}, limit {f.get('limit')}"
    ),
    Rule.CALLERID_CONCURRENCY: lambda f: (
        f"caller ID has {f.get('up')} calls up, limit {f.get('limit')}"
    ),
    Rule.STORE_UNAVAILABLE: lambda f: (
        f"the database did not answer within {f.get('deadline_ms')} ms ({f.get('error')})"
    ),
}


def explain(rule: Rule | None, facts: Facts) -> str:
    if rule is None:
        return "every rule passed"
    try:
        return _TEMPLATES[rule](facts)
    except (KeyError, TypeError, ValueError):
        return f"{rule.value}: {facts}"


def callable_at(rule: Rule | None, facts: Facts) -> datetime | None:
    """When a denied destination becomes callable again, where the facts tell; else ``None``."""
    if rule is None:
        return None
    key = _RETRY_KEYS.get(rule)
    value: Any = facts.get(key) if key else None
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


_RETRY_KEYS: dict[Rule, str] = {
    Rule.BLACKLISTED: "expires_at",
    Rule.CALLING_HOURS: "opens_at",
    Rule.DESTINATION_COOLDOWN: "frees_at",
    Rule.DESTINATION_INTERVAL: "frees_at",
    Rule.DESTINATION_CAP: "frees_at",
    Rule.CALLERID_RATE: "frees_at",
}
