"""What dialguard learns from complaints and carrier rejections: thresholds, values, effects.

The thresholds travel into the database functions as parameters (``dg_complaints``,
``dg_record_outcome``), so that every front door that records a complaint or an outcome judges it
the same way, in the transaction that records it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dialguard.policy.codes import COMPLAINT_SOURCES

DAY = 86400


@dataclass(frozen=True, slots=True)
class FeedbackPolicy:
    """When complaints rest a caller ID or pause a campaign, and when rejections rest one."""

    complaints_to_rest: int = 3
    complaints_window_s: int = DAY
    complaint_rate_to_rest: float = 0.005
    complaint_rate_calls: int = 1000
    complaint_rate_min_calls: int = 200
    campaign_complaint_rate_to_pause: float = 0.01
    campaign_window_s: int = DAY
    campaign_min_calls: int = 200
    carrier_block_window: int = 50
    carrier_block_share: float = 0.5
    # Seconds a complaint's blacklist entry lasts, per complaint source; absent means forever.
    complaint_expiry: Mapping[str, int] = field(default_factory=dict)
    # Extra source names an operator accepts beyond the shipped ones.
    extra_sources: tuple[str, ...] = ()
    # A complaint that names no caller ID or campaign is laid on the last call to the
    # destination in this window, when there is one.
    attribution_window_s: int = 30 * DAY
    # Health figures: over a caller ID's last this many completed calls.
    health_calls: int = 1000
    # An answered call shorter than this is a short call (people hanging up on a spam caller).
    short_call_seconds: int = 6

    @property
    def sources(self) -> tuple[str, ...]:
        return (*COMPLAINT_SOURCES, *(s for s in self.extra_sources if s not in COMPLAINT_SOURCES))

    def expires_at(self, source: str, at: datetime) -> datetime | None:
        seconds = self.complaint_expiry.get(source)
        return None if seconds is None else at + timedelta(seconds=seconds)


class ComplaintError(ValueError):
    """A complaint that cannot be recorded as given; ``field`` names the culprit."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True, slots=True)
class ComplaintRequest:
    """A complaint as a front door receives it: numbers not yet normalised."""

    destination: str
    source: str
    caller_id: str | None = None
    campaign: str | None = None
    at: datetime | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Complaint:
    """A validated complaint: E.164 numbers and a known source."""

    destination: str
    source: str
    at: datetime
    caller_id: str | None = None
    campaign: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ComplaintEffects:
    """What this complaint changed (all false for a duplicate).

    ``blacklisted`` is true when the complaint put the destination on the global blacklist or
    lengthened its entry; a destination already blacklisted for at least as long stays as it was.
    """

    blacklisted: bool = False
    callerid_rested: bool = False
    campaign_paused: bool = False

    def as_json(self) -> dict[str, bool]:
        return {
            "blacklisted": self.blacklisted,
            "callerid_rested": self.callerid_rested,
            "campaign_paused": self.campaign_paused,
        }


@dataclass(frozen=True, slots=True)
class ComplaintRecorded:
    id: int
    duplicate: bool
    complaint: Complaint
    effects: ComplaintEffects

    def as_json(self) -> dict[str, Any]:
        c = self.complaint
        return {
            "id": self.id,
            "duplicate": self.duplicate,
            "destination": c.destination,
            "caller_id": c.caller_id,
            "campaign": c.campaign,
            "source": c.source,
            "at": c.at.isoformat(),
            "effects": self.effects.as_json(),
        }


@dataclass(frozen=True, slots=True)
class LineError:
    """One bad line of an imported file."""

    line: int
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass
class ImportSummary:
    """The outcome of a bulk import: good rows are kept, bad ones reported by line."""

    imported: int = 0
    duplicates: int = 0
    bad_rows: int = 0
    blacklisted: int = 0
    callerids_rested: int = 0
    campaigns_paused: int = 0
    errors: list[LineError] = field(default_factory=list)
    max_errors: int = 1000

    def error(self, line: int, message: str) -> None:
        self.bad_rows += 1
        if len(self.errors) < self.max_errors:
            self.errors.append(LineError(line, message))

    def count(self, recorded: ComplaintRecorded) -> None:
        if recorded.duplicate:
            self.duplicates += 1
            return
        self.imported += 1
        self.blacklisted += recorded.effects.blacklisted
        self.callerids_rested += recorded.effects.callerid_rested
        self.campaigns_paused += recorded.effects.campaign_paused

    def as_json(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "bad_rows": self.bad_rows,
            "effects": {
                "blacklisted": self.blacklisted,
                "callerids_rested": self.callerids_rested,
                "campaigns_paused": self.campaigns_paused,
            },
            "errors": [e.as_json() for e in self.errors],
            "errors_truncated": self.bad_rows > len(self.errors),
        }


@dataclass(frozen=True, slots=True)
class CallerIdHealth:
    """A caller ID's recent record, over its last ``window`` completed calls."""

    calls: int
    answered: int
    short_calls: int
    carrier_rejections: int
    complaints_24h: int
    window: int

    def as_json(self) -> dict[str, Any]:
        def share(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {
            "calls": self.calls,
            "answer_seizure_ratio": share(self.answered, self.calls),
            "short_call_share": share(self.short_calls, self.answered),
            "carrier_rejection_share": share(self.carrier_rejections, self.calls),
            "complaints_24h": self.complaints_24h,
            "window": self.window,
        }
