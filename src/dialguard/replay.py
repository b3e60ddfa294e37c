"""A compliance audit of a call log: decide each row in time order as if it were live."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from dialguard.decider import Decider
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.policy.outcome import classify
from dialguard.policy.values import parse_instant as parse_time
from dialguard.store.decisions import DecisionStore

REQUIRED = ("at", "caller_id", "destination", "campaign")


class ReplayInputError(ValueError):
    """The call log cannot be read; the message names the line."""


@dataclass(frozen=True, slots=True)
class CallRow:
    line: int
    at: datetime
    caller_id: str
    destination: str
    campaign: str
    answered_seconds: int | None


@dataclass
class ReplaySummary:
    rows: int = 0
    by_rule: Counter[str] = field(default_factory=Counter)


def read_call_log(lines: Iterable[str]) -> list[CallRow]:
    """Parse the whole log and sort it by time (a replay must see calls in order)."""
    reader = csv.DictReader(lines)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise ReplayInputError(f"line 1: missing columns {', '.join(missing)}")
    rows: list[CallRow] = []
    for record in reader:
        line = reader.line_num
        try:
            answered = (record.get("answered_seconds") or "").strip()
            rows.append(
                CallRow(
                    line,
                    parse_time(record["at"] or ""),
                    record["caller_id"] or "",
                    record["destination"] or "",
                    record["campaign"] or "",
                    int(answered) if answered else None,
                )
            )
        except ValueError as exc:
            raise ReplayInputError(f"line {line}: {exc}") from None
    rows.sort(key=lambda r: (r.at, r.line))
    return rows


async def replay(
    rows: list[CallRow], decider: Decider, decisions: DecisionStore
) -> list[tuple[CallRow, Decision]]:
    """Decide and record each row; an allowed row's answered time becomes its outcome."""
    results: list[tuple[CallRow, Decision]] = []
    for row in rows:
        decision = await decider.decide(
            DecisionRequest(
                caller_id=row.caller_id,
                destination=row.destination,
                campaign=row.campaign or None,
                at=row.at,
                source="replay",
                as_of=True,
            )
        )
        if decision.allowed and decision.decision_id is not None:
            # Every replayed call ends when it is logged: concurrency is not replayed.
            answered = row.answered_seconds or None
            await decisions.record_outcome(
                decision.decision_id,
                outcome=classify(answered, 16, None).value if answered else "replayed",
                answered_seconds=answered,
                cause=16,
                sip_code=None,
                at=row.at,
            )
        results.append((row, decision))
    return results
