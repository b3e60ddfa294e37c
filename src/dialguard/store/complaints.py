"""Complaints: recorded with their effects in one transaction (``dg_complaints``), and listed."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from dialguard.policy.feedback import (
    Complaint,
    ComplaintEffects,
    ComplaintRecorded,
    FeedbackPolicy,
)
from dialguard.policy.model import LogQuery
from dialguard.store.connection import connection
from dialguard.store.queries import q

_RECORD = q("record_complaints")

# Complaints a transaction: each holds its caller IDs' and campaigns' locks to its commit, so an
# import goes in short transactions and a decision never waits on it for more than a few
# milliseconds.
CHUNK = 50


class ComplaintStore:
    """Records and lists complaints through a pool it is given (and does not close)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(
        self, complaints: Sequence[Complaint], policy: FeedbackPolicy
    ) -> list[ComplaintRecorded]:
        """Record ``complaints``, ``CHUNK`` a transaction, answered in the order given; a
        duplicate changes nothing.

        They are recorded oldest first: a complaint's thresholds are judged over every window
        that holds it, so the order changes no effect, but a window that ends at a complaint
        recorded before costs one more look, and an import in time order needs none.
        """
        order = sorted(range(len(complaints)), key=lambda i: complaints[i].at)
        in_time = [complaints[i] for i in order]
        recorded: list[ComplaintRecorded | None] = [None] * len(complaints)
        for start in range(0, len(in_time), CHUNK):
            chunk = await self._record(in_time[start : start + CHUNK], policy)
            for offset, one in enumerate(chunk):
                recorded[order[start + offset]] = one
        return [r for r in recorded if r is not None]

    async def _record(
        self, complaints: Sequence[Complaint], policy: FeedbackPolicy
    ) -> list[ComplaintRecorded]:
        args = (
            [c.destination for c in complaints],
            [c.caller_id for c in complaints],
            [c.campaign for c in complaints],
            [c.source for c in complaints],
            [c.at for c in complaints],
            [c.text for c in complaints],
            [policy.expires_at(c.source, c.at) for c in complaints],
            policy.attribution_window_s,
            policy.complaints_to_rest,
            policy.complaints_window_s,
            _exact(policy.complaint_rate_to_rest),
            policy.complaint_rate_calls,
            policy.complaint_rate_min_calls,
            _exact(policy.campaign_complaint_rate_to_pause),
            policy.campaign_window_s,
            policy.campaign_min_calls,
        )
        async with connection(self._pool) as conn:
            rows = await conn.fetch(_RECORD, *args)
        return [_recorded(complaints[row["ord"] - 1], row) for row in rows]

    async def list(self, f: LogQuery) -> list[dict[str, Any]]:
        """Newest first; page with ``before_id`` = the last id seen."""
        async with connection(self._pool) as conn:
            rows = await conn.fetch(
                q("list_complaints"),
                f.destination,
                f.caller_id,
                f.campaign,
                f.source,
                f.since,
                f.until,
                f.before_id,
                f.limit,
            )
        return [dict(r.items()) for r in rows]


def _exact(rate: float) -> Decimal:
    """The rate as written (0.01, not the binary float just above it) for numeric comparisons."""
    return Decimal(repr(rate))


def _recorded(asked: Complaint, row: Any) -> ComplaintRecorded:
    complaint = Complaint(
        destination=asked.destination,
        source=asked.source,
        at=asked.at,
        caller_id=row["caller_id"],
        campaign=row["campaign"],
        text=asked.text,
    )
    effects = ComplaintEffects(
        blacklisted=row["blacklisted"],
        callerid_rested=row["callerid_rested"],
        campaign_paused=row["campaign_paused"],
    )
    return ComplaintRecorded(row["complaint_id"], row["duplicate"], complaint, effects)
