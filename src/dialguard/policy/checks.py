"""The checks that need no shared state: number validity and calling hours.

They run before the database round trip and travel into it as parameters, so the decision still
names the first rule in the documented order (a blacklisted number at night is ``blacklisted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dialguard.policy.codes import Rule
from dialguard.policy.hours import outside_hours
from dialguard.policy.model import Facts
from dialguard.policy.profile import Profile


@dataclass(frozen=True, slots=True)
class Precheck:
    rule: Rule | None
    facts: Facts | None
    hours_facts: Facts | None


def precheck(
    *,
    destination: str | None,
    caller_id: str | None,
    raw_destination: str,
    raw_caller_id: str,
    zones: tuple[str, ...],
    profile: Profile,
    at: datetime,
) -> Precheck:
    """``destination``/``caller_id`` are the E.164 forms, ``None`` when invalid."""
    if destination is None:
        return Precheck(Rule.INVALID_NUMBER, {"destination": raw_destination}, None)
    if caller_id is None:
        facts: Facts = {"caller_id": raw_caller_id, "valid": False}
        return Precheck(Rule.CALLERID_UNKNOWN, facts, None)
    return Precheck(None, None, outside_hours(profile.calling_hours, zones, at))
