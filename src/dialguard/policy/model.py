"""The values a decision is made of and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dialguard.policy.codes import Rule, Verdict

Facts = dict[str, Any]

BlacklistNumberRow = tuple[int, str, str, str | None, datetime | None]
"""One blacklisted number to store: (E.164 digits as an int, campaign or '' for global, source,
reason, expires_at)."""

BlacklistPrefixRow = tuple[str, str, str, str | None, datetime | None]
"""One blacklisted prefix to store: (E.164 prefix like '+1718264', campaign or '', source,
reason, expires_at)."""
"""The evidence of a decision as data: counts, limits and times (ISO 8601) the rule saw."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """A call someone wants to place, as it arrives (numbers not yet normalised)."""

    caller_id: str
    destination: str
    campaign: str
    at: datetime


@dataclass(frozen=True, slots=True)
class LogQuery:
    """Filters of the audit trail and of the complaint log, newest first; ``before_id`` pages
    backwards (the last id seen). ``rule`` applies to decisions, ``source`` to complaints."""

    destination: str | None = None
    caller_id: str | None = None
    campaign: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    rule: str | None = None
    source: str | None = None
    before_id: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """What a front door asks: decide this call (``record=False`` for a dry run).

    Without ``at`` the call is placed now: a live decision, ordered and stamped by the
    database. With ``at``, a dry run is made as of that time; a recorded decision must then be
    about now (within the decider's tolerance) unless ``as_of`` marks it an audit replay, which
    records it as of ``at`` (``dialguard replay``, inside a transaction it rolls back by default).
    """

    caller_id: str
    destination: str
    campaign: str | None = None
    at: datetime | None = None
    record: bool = True
    source: str = "api"
    channel_id: str | None = None
    as_of: bool = False
    # The Asterisk and application that gated the call (a gate's decisions only).
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: Rule | None
    evidence: str
    decision_id: int | None
    caller_id: str
    destination: str
    campaign: str
    at: datetime
    facts: Facts = field(default_factory=dict)
    callable_at: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "rule": self.rule.value if self.rule else None,
            "evidence": self.evidence,
            "decision_id": self.decision_id,
            "caller_id": self.caller_id,
            "destination": self.destination,
            "campaign": self.campaign,
            "at": self.at.isoformat(),
            "callable_at": self.callable_at.isoformat() if self.callable_at else None,
        }
