"""The decision round trip and the recording of outcomes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

from dialguard.policy.model import LogQuery
from dialguard.store.batching import Batcher
from dialguard.store.connection import connection
from dialguard.store.errors import StoreConflict
from dialguard.store.queries import q

# Batches of recorded decisions in flight at once (the ``database.decision_batches`` default).
DEFAULT_BATCHES = 2

_DECIDE = q("decide")
_OUTCOME = q("record_outcome_judged")
_OUTCOMES = q("record_outcomes_judged")


@dataclass(frozen=True, slots=True)
class DecideRules:
    """A profile's limits as a decision needs them; ``None`` (or empty) where a rule is off.

    Built once per profile: the decisions of a batch that share it send it once, as text made
    once (``literal``), which costs the client a fraction of encoding the values each time.
    """

    require_registered: bool
    cooldown_s: int | None
    conversation_min_s: int | None
    interval_s: int | None
    dest_cap_limits: tuple[int, ...]
    dest_cap_windows: tuple[int, ...]
    rotation_limit: int | None
    rotation_window_s: int | None
    campaign_rotation_limit: int | None
    cid_cap_limits: tuple[int, ...]
    cid_cap_windows: tuple[int, ...]
    cid_max_concurrent: int | None
    max_call_s: int
    # These rules as one element of a dg_decide_rules[] literal, made once.
    literal: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "literal", _element_literal(self.row()))

    @property
    def destination_window_s(self) -> int:
        """The longest window any destination rule looks back over, in seconds (0: none)."""
        windows = [self.interval_s or 0, self.rotation_window_s or 0, *self.dest_cap_windows]
        if self.cooldown_s is not None and self.conversation_min_s is not None:
            # A conversation that ended inside the cool-down started up to a call's length
            # (a day at least) before it ended.
            windows.append(self.cooldown_s + max(self.max_call_s, 86400))
        return max(windows)

    @property
    def callerid_window_s(self) -> int | None:
        """The longest window the caller ID's caps and concurrency look back over, in
        seconds (``None``: both are off)."""
        if not self.cid_cap_limits and self.cid_max_concurrent is None:
            return None
        up = self.max_call_s if self.cid_max_concurrent is not None else 0
        return max([up, *self.cid_cap_windows])

    def row(self) -> tuple[Any, ...]:
        """The rules as a ``dg_decide_rules``: every field, then the two windows."""
        return (
            self.require_registered,
            self.cooldown_s,
            self.conversation_min_s,
            self.interval_s,
            self.dest_cap_limits,
            self.dest_cap_windows,
            self.rotation_limit,
            self.rotation_window_s,
            self.campaign_rotation_limit,
            self.cid_cap_limits,
            self.cid_cap_windows,
            self.cid_max_concurrent,
            self.max_call_s,
            self.destination_window_s,
            self.callerid_window_s,
        )


@dataclass(frozen=True, slots=True)
class DecideParams:
    """Everything a decision needs: the attempt, what the pure checks found, and its rules.

    ``live``: a call placed now, stamped by the database's clock once its locks are held (``at``
    is then the caller's estimate of that clock, which the pure checks used); otherwise the
    decision is made as of ``at``. ``deadline``: when the caller stops waiting, on its estimate
    of the database's clock; a recorded decision still waiting for its locks then is not
    recorded. ``origin``: the Asterisk and application that gated the call, if a gate did.
    """

    at: datetime
    caller_id: str
    destination: str
    campaign: str
    campaign_version: int
    record: bool
    source: str
    channel_id: str | None
    pre_rule: str | None
    pre_facts: dict[str, Any] | None
    hours_facts: dict[str, Any] | None
    rules: DecideRules
    live: bool = False
    deadline: datetime | None = None
    # In fail-open mode: the id its spooled copy would carry (see dg_attempt.attempt_id).
    attempt_id: str | None = None
    origin: str | None = None

    def attempt(self, rules: int) -> tuple[Any, ...]:
        """The decision as a ``dg_attempt``: its time, whether it is live, its deadline, its
        own values, the facts as JSON text, its attempt id and origin, then ``rules``, its
        rules' position (from 1) in the batch's."""
        return (
            self.at,
            self.live,
            self.deadline,
            self.caller_id,
            self.destination,
            self.campaign,
            self.campaign_version,
            self.source,
            self.channel_id,
            self.pre_rule,
            None if self.pre_facts is None else json.dumps(self.pre_facts),
            None if self.hours_facts is None else json.dumps(self.hours_facts),
            self.attempt_id,
            self.origin,
            rules,
        )


def batch_rows(batch: Sequence[DecideParams]) -> tuple[list[tuple[Any, ...]], str]:
    """A batch as the two arrays ``dg_decide`` takes: the attempts, and each distinct rules
    once, as a ``dg_decide_rules[]`` literal (campaigns whose limits are the same, each with its
    own :class:`DecideRules`, send them once)."""
    positions: dict[str, int] = {}
    rules: list[str] = []
    attempts: list[tuple[Any, ...]] = []
    for p in batch:
        position = positions.get(p.rules.literal)
        if position is None:
            rules.append(p.rules.literal)
            position = positions[p.rules.literal] = len(rules)
        attempts.append(p.attempt(position))
    return attempts, "{" + ",".join(rules) + "}"


def _element_literal(values: tuple[Any, ...]) -> str:
    """``values`` (``None``, booleans, integers and sequences of integers: nothing else needs
    quoting) as one quoted element of an array-of-records literal. The server reads the fields
    by position and refuses a literal with too few or too many."""
    fields: list[str] = []
    for value in values:
        if value is None:
            fields.append("")
        elif isinstance(value, bool):
            fields.append("t" if value else "f")
        elif isinstance(value, int):
            fields.append(str(value))
        else:
            fields.append('\\"{' + ",".join(str(int(v)) for v in value) + '}\\"')
    return '"(' + ",".join(fields) + ')"'


@dataclass(frozen=True, slots=True)
class DecideResult:
    """``at``: the decision's time (the database's clock for a live one). ``abandoned``: its
    caller had given up before the locks were held, so nothing was recorded."""

    decision_id: int | None
    rule: str | None
    facts: dict[str, Any]
    stale: bool
    at: datetime | None = None
    abandoned: bool = False


def _result(row: asyncpg.Record) -> DecideResult:
    """One row of the ``decide`` query; no facts come back as NULL."""
    return DecideResult(
        row["decision_id"],
        row["rule"],
        row["facts"] or {},
        row["stale"],
        row["at"],
        row["abandoned"],
    )


class _Outcome(NamedTuple):
    """One outcome, its fields in the order the outcome SQL takes them."""

    decision_id: int
    outcome: str
    answered_seconds: int | None
    cause: int | None
    sip_code: int | None
    at: datetime


@dataclass(frozen=True, slots=True)
class OutcomeRecorded:
    recorded: bool
    caller_id: str | None
    campaign: str | None
    # The outcome tipped the caller ID over the carrier-block threshold and rested it.
    rested: bool = False


class DecisionStore:
    """Runs decisions against a pool it is given (and does not close).

    Outcomes are judged for the carrier-block signal with ``carrier_block_window`` and
    ``carrier_block_share`` (the ``[feedback]`` settings). Recorded decisions that arrive
    together are sent in batches, at most ``batches`` at once (``0``: each on its own), and so
    are outcomes; see :mod:`dialguard.store.batching`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        carrier_block_window: int = 50,
        carrier_block_share: float = 0.5,
        batches: int = DEFAULT_BATCHES,
    ) -> None:
        self._pool = pool
        # The share as written (0.3, not the binary float next to it): compared as numeric.
        self._block = (carrier_block_window, Decimal(repr(carrier_block_share)))
        self._batcher = (
            Batcher(self._decide_one, self._decide_many, slots=batches) if batches > 0 else None
        )
        self._outcomes = (
            Batcher(self._record_one, self._record_many, slots=batches) if batches > 0 else None
        )

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many round trips carried each number of recorded decisions."""
        return self._batcher.sizes if self._batcher is not None else Counter()

    def observe_batches(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(size)`` for every round trip of recorded decisions."""
        if self._batcher is not None:
            self._batcher.on_send = callback

    async def decide(self, params: DecideParams) -> DecideResult:
        if params.record and self._batcher is not None:
            return await self._batcher.run(params)
        return await self._decide_one(params)

    async def _decide_one(self, params: DecideParams) -> DecideResult:
        try:
            return await self._decide_alone(params)
        except StoreConflict:
            # A serialization failure or a deadlock: once more, within the same deadline.
            return await self._decide_alone(params)

    async def _decide_alone(self, params: DecideParams) -> DecideResult:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(_DECIDE, *batch_rows([params]), params.record)
        return _result(row)

    async def _decide_many(self, batch: Sequence[DecideParams]) -> list[DecideResult]:
        async with connection(self._pool) as conn:
            rows = await conn.fetch(_DECIDE, *batch_rows(batch), True)
        return [_result(r) for r in rows]

    async def record_outcome(
        self,
        decision_id: int,
        *,
        outcome: str,
        answered_seconds: int | None,
        cause: int | None,
        sip_code: int | None,
        at: datetime,
    ) -> OutcomeRecorded:
        item = _Outcome(decision_id, outcome, answered_seconds, cause, sip_code, at)
        if self._outcomes is not None:
            return await self._outcomes.run(item)
        return await self._record_one(item)

    async def _record_one(self, o: _Outcome) -> OutcomeRecorded:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(_OUTCOME, *o, *self._block)
        if row is None:
            return OutcomeRecorded(False, None, None)
        return OutcomeRecorded(True, row["caller_id"], row["campaign"], row["rested"])

    async def _record_many(self, batch: Sequence[_Outcome]) -> list[OutcomeRecorded]:
        async with connection(self._pool) as conn:
            # One array per field: the batch turned on its side.
            columns = [list(column) for column in zip(*batch, strict=True)]
            rows = await conn.fetch(_OUTCOMES, *columns, *self._block)
        return [
            OutcomeRecorded(r["recorded"], r["caller_id"], r["campaign"], r["rested"]) for r in rows
        ]

    async def not_placed(self, decision_id: int) -> bool:
        """Record an allowed decision as not placed (its caller gave up before the answer,
        and hung the call up); the fail-closed verdict it got stands instead."""
        async with connection(self._pool) as conn:
            status: str = await conn.execute(q("decision_not_placed"), decision_id)
        return status.endswith(" 1")

    async def calls_up(self, origin: str, max_call_s: int) -> list[dict[str, Any]]:
        """The calls ``origin`` allowed in the last ``max_call_s`` seconds with no outcome."""
        async with connection(self._pool) as conn:
            rows = await conn.fetch(q("calls_up_from"), origin, max_call_s)
        return [dict(r.items()) for r in rows]

    async def database_time(self) -> datetime:
        """The database server's clock, now."""
        async with connection(self._pool) as conn:
            at: datetime = await conn.fetchval(q("database_time"))
        return at

    async def get(self, decision_id: int) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("get_decision"), decision_id)
        return dict(row.items()) if row else None

    async def attach_channel(self, decision_id: int, channel_id: str) -> None:
        async with connection(self._pool) as conn:
            await conn.execute(q("attach_channel"), decision_id, channel_id)

    async def latest_for_channel(self, channel_id: str) -> dict[str, Any] | None:
        async with connection(self._pool) as conn:
            row = await conn.fetchrow(q("latest_decision_for_channel"), channel_id)
        return dict(row.items()) if row else None


async def list_decisions(pool: asyncpg.Pool, f: LogQuery) -> list[dict[str, Any]]:
    """The audit trail, newest first; page with ``before_id`` = the last id seen."""
    async with connection(pool) as conn:
        rows = await conn.fetch(
            q("list_decisions"),
            f.destination,
            f.caller_id,
            f.campaign,
            f.since,
            f.until,
            f.rule,
            f.before_id,
            f.limit,
        )
    return [dict(r.items()) for r in rows]


@dataclass(frozen=True, slots=True)
class SpooledDecision:
    """An allowed decision made without the database, to be written back."""

    spool_id: str
    at: datetime
    caller_id: str
    destination: str
    campaign: str
    source: str
    channel_id: str | None
    # The Asterisk and application that gated the call (decisions.origin).
    origin: str | None = None


async def insert_spooled(pool: asyncpg.Pool, rows: list[SpooledDecision]) -> None:
    """Write spooled decisions back in one statement; a row already written is skipped."""
    async with connection(pool) as conn:
        await conn.execute(
            q("insert_spooled"),
            [r.spool_id for r in rows],
            [r.at for r in rows],
            [r.caller_id for r in rows],
            [r.destination for r in rows],
            [r.campaign for r in rows],
            [r.source for r in rows],
            [r.channel_id for r in rows],
            [r.origin for r in rows],
        )


async def prune(pool: asyncpg.Pool, before: datetime, *, batch: int = 10_000) -> int:
    """Delete decisions older than ``before`` (the audit retention); returns how many."""
    removed = 0
    while True:
        async with connection(pool) as conn:
            status: str = await conn.execute(q("prune_decisions"), before, batch)
            await conn.execute(q("prune_campaign_callerids"), before)
        count = int(status.split()[-1])
        removed += count
        if count < batch:
            return removed
