"""The feedback use case: complaints in, effects out (blacklist, rests, pauses), counted.

Every front door that takes complaints (the admin API, the CLI, imports) records them here; the
effects are applied by the database in the transaction that records them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from dialguard.numbers import try_normalise
from dialguard.policy.codes import RestReason
from dialguard.policy.feedback import (
    Complaint,
    ComplaintError,
    ComplaintRecorded,
    ComplaintRequest,
    FeedbackPolicy,
    ImportSummary,
)
from dialguard.policy.values import parse_instant as parse_time

MAX_TEXT = 2000
DESTINATION_COLUMNS = ("destination", "number")
COMPLAINT_COLUMNS = ("caller_id", "campaign", "source", "at", "text")


class FeedbackMetrics(Protocol):
    def complaint(
        self, source: str, campaign: str | None, caller_id: str | None = None
    ) -> None: ...
    def callerid_rested(self, reason: RestReason | str, campaign: str | None) -> None: ...


class ComplaintRecorder(Protocol):
    async def record(
        self, complaints: Sequence[Complaint], policy: FeedbackPolicy
    ) -> list[ComplaintRecorded]: ...


class Feedback:
    """Validates complaints, records them in order and counts what they did."""

    def __init__(
        self,
        *,
        complaints: ComplaintRecorder,
        policy: FeedbackPolicy,
        default_region: str,
        metrics: FeedbackMetrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._complaints = complaints
        self.policy = policy
        self._region = default_region
        self._metrics = metrics
        self._clock = clock

    async def complain(self, request: ComplaintRequest) -> ComplaintRecorded:
        """Record one complaint; raises :class:`ComplaintError` when it cannot be recorded."""
        (recorded,) = await self._record([self.validate(request)])
        return recorded

    async def import_records(
        self,
        records: Sequence[tuple[int, Mapping[str, str]]],
        summary: ImportSummary,
        *,
        default_source: str | None = None,
    ) -> None:
        """Record one batch of CSV records (line, column -> value) in one transaction.

        A bad record is reported with its line and skipped; the good ones are kept.
        """
        good: list[Complaint] = []
        for line, values in records:
            try:
                good.append(self.validate(request_from_record(values, default_source)))
            except ComplaintError as exc:
                summary.error(line, str(exc))
        for recorded in await self._record(good):
            summary.count(recorded)

    def validate(self, request: ComplaintRequest) -> Complaint:
        destination = try_normalise(request.destination, self._region)
        if destination is None:
            raise ComplaintError(
                "destination", f"destination {request.destination!r} is not a valid phone number"
            )
        caller = None
        if request.caller_id:
            caller = try_normalise(request.caller_id, self._region)
            if caller is None:
                raise ComplaintError(
                    "caller_id", f"caller_id {request.caller_id!r} is not a valid phone number"
                )
        if request.source not in self.policy.sources:
            raise ComplaintError(
                "source",
                f"unknown source {request.source!r} (known: {', '.join(self.policy.sources)})",
            )
        at = request.at or self._clock()
        if at.tzinfo is None:
            raise ComplaintError("at", "at needs an offset (Z or +HH:MM)")
        if request.text is not None and len(request.text) > MAX_TEXT:
            raise ComplaintError("text", f"text is longer than {MAX_TEXT} characters")
        return Complaint(
            destination=destination,
            source=request.source,
            at=at,
            caller_id=caller,
            campaign=request.campaign or None,
            text=request.text or None,
        )

    async def _record(self, complaints: list[Complaint]) -> list[ComplaintRecorded]:
        recorded = await self._complaints.record(complaints, self.policy)
        if self._metrics is not None:
            for r in recorded:
                if r.duplicate:
                    continue
                c = r.complaint
                self._metrics.complaint(c.source, c.campaign, c.caller_id)
                if r.effects.callerid_rested:
                    self._metrics.callerid_rested(RestReason.COMPLAINTS, c.campaign)
        return recorded


def request_from_record(
    values: Mapping[str, str], default_source: str | None = None
) -> ComplaintRequest:
    """A complaint from one CSV record; ``at`` is ISO 8601 with an offset."""
    destination = next((values[c] for c in DESTINATION_COLUMNS if values.get(c)), "")
    if not destination.strip():
        raise ComplaintError("destination", "destination is missing")
    source = (values.get("source") or default_source or "").strip()
    if not source:
        raise ComplaintError("source", "source is missing (add a source column or give one)")
    at_text = (values.get("at") or "").strip()
    try:
        at = parse_time(at_text) if at_text else None
    except ValueError as exc:
        raise ComplaintError("at", str(exc)) from None
    return ComplaintRequest(
        destination=destination.strip(),
        source=source,
        caller_id=(values.get("caller_id") or "").strip() or None,
        campaign=(values.get("campaign") or "").strip() or None,
        at=at,
        text=values.get("text") or None,
    )
