"""What the admin API needs from the rest of dialguard, as protocols, and the bundle of them.

The API imports no store and no use case: ``app.py`` builds :class:`ApiDeps` from the concrete
objects (the decider, the stores, the feedback and scrub use cases), which satisfy these
protocols by their shape.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from dialguard.policy.feedback import ComplaintRecorded, ComplaintRequest, ImportSummary
from dialguard.policy.model import BlacklistNumberRow, Decision, DecisionRequest, LogQuery
from dialguard.policy.scrub import ScrubRequest, ScrubRow

Row = dict[str, Any]
StageRow = BlacklistNumberRow


class DecidePort(Protocol):
    async def decide(self, request: DecisionRequest) -> Decision: ...


class AuditPort(Protocol):
    async def decisions(self, query: LogQuery) -> list[Row]: ...
    async def complaints(self, query: LogQuery) -> list[Row]: ...


class FeedbackPort(Protocol):
    async def complain(self, request: ComplaintRequest) -> ComplaintRecorded: ...
    async def import_records(
        self,
        records: Sequence[tuple[int, Mapping[str, str]]],
        summary: ImportSummary,
        *,
        default_source: str | None = None,
    ) -> None: ...


class ScrubPort(Protocol):
    def scrub(
        self, chunks: AsyncIterable[Sequence[str]], request: ScrubRequest
    ) -> AsyncGenerator[list[ScrubRow], None]: ...


class BlacklistPort(Protocol):
    async def add_number(
        self,
        e164: str,
        *,
        campaign: str = "",
        source: str = "manual",
        reason: str | None = None,
        expires_at: datetime | None = None,
        replace: bool = False,
    ) -> Row: ...
    async def get_number(self, e164: str, campaign: str = "") -> Row | None: ...
    async def remove_number(self, e164: str, campaign: str = "") -> bool: ...
    async def add_prefix(
        self,
        prefix: str,
        *,
        campaign: str = "",
        source: str = "manual",
        reason: str | None = None,
        expires_at: datetime | None = None,
        replace: bool = False,
    ) -> Row: ...
    async def get_prefix(self, prefix: str, campaign: str = "") -> Row | None: ...
    async def remove_prefix(self, prefix: str, campaign: str = "") -> bool: ...
    async def import_chunk(self, rows: Sequence[StageRow]) -> int: ...


class CallerIdPort(Protocol):
    async def list(self, state: str | None = None) -> list[Row]: ...
    async def add(self, number: str, campaign: str | None) -> Row: ...
    async def get(self, number: str) -> Row | None:
        """The caller ID with its ``health`` figures, or None."""
        ...

    async def set_state(self, number: str, state: str, reason: str | None) -> Row:
        """Raises the error mapped to 404 when unknown, to 409 when retired."""
        ...


class CampaignPort(Protocol):
    async def list(self) -> list[Row]: ...
    async def get(self, name: str) -> Row | None: ...
    async def set(self, name: str, profile: str | None, overrides: Mapping[str, Any] | None) -> Row:
        """Raises ``ProfileError`` listing every problem; None keeps the current value."""
        ...

    async def set_paused(self, name: str, paused: bool, reason: str | None) -> Row: ...


@dataclass(frozen=True)
class ApiDeps:
    """Everything the API app is built from. ``errors`` maps the domain's named errors (store,
    use cases) to (HTTP status, error code), in one place, for the error middleware."""

    decider: DecidePort
    audit: AuditPort
    feedback: FeedbackPort
    scrub: ScrubPort
    blacklist: BlacklistPort
    callerids: CallerIdPort
    campaigns: CampaignPort
    default_region: str
    token: str | None = None
    max_body: int = 1 << 20
    errors: Mapping[type[BaseException], tuple[int, str]] = field(default_factory=dict)
