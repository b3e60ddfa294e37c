"""The scrub use case: for each number of a list, callable now or not, the rule and when.

Numbers arrive in chunks and leave in chunks, in input order; nothing holds more than ``depth``
+ 1 chunks. Each chunk costs one database round trip (``store.scrub``); up to ``depth`` of them
run at once, on as many pooled connections, while the next chunk is prepared. Numbers are
classified through :class:`BulkNumbers` (once per number block) and calling hours are computed
once per set of time zones. What a scrub
judges, and what it leaves to the moment of dialling, is in :mod:`dialguard.policy.scrub`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dialguard.bulk_numbers import BulkNumbers, Verdict
from dialguard.numbers import try_normalise
from dialguard.policy.codes import Rule
from dialguard.policy.evidence import callable_at
from dialguard.policy.hours import outside_hours
from dialguard.policy.profile import Profile
from dialguard.policy.scrub import ScrubRequest, ScrubRow, judge_calls, lookback_seconds
from dialguard.store.scrub import KnownDestination, ScrubStore

DEFAULT_CAMPAIGN = "default"
# Up to this many prefixes are matched in memory (a few dictionary lookups a number) instead of
# by the database (an index probe a length a number); more stay in the database.
PREFIXES_IN_MEMORY = 200_000


class ProfileLookup(Protocol):
    async def profile_for(self, campaign: str) -> tuple[int, Profile]: ...


class RowReader(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class _Pending:
    """A chunk whose rows wait for the database's answer."""

    raw: Sequence[str]
    verdicts: list[Verdict]
    lookup: asyncio.Future[dict[str, KnownDestination]]


@dataclass
class _Context:
    at: datetime
    campaign: str
    caller_id: str | None
    profile: Profile
    standing: Rule | None
    lookback_s: int
    # Prefixes matched here, longest first, or probed by the database at ``db_prefix_lengths``.
    prefixes: dict[str, dict[str, Any]] = field(default_factory=dict)
    prefix_lengths: list[int] = field(default_factory=list)
    # The shortest prefix length's heads: most numbers match none, and one lookup tells.
    prefix_heads: frozenset[str] = frozenset()
    db_prefix_lengths: list[int] = field(default_factory=list)
    hours: dict[tuple[str, ...], tuple[Rule | None, datetime | None]] = field(default_factory=dict)


class Scrubber:
    """Scrubs lists against the store; shares one number-block cache across scrubs."""

    def __init__(
        self,
        *,
        store: ScrubStore,
        profiles: ProfileLookup,
        callerids: RowReader,
        campaigns: RowReader,
        numbers: BulkNumbers,
        default_region: str,
        depth: int = 2,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._profiles = profiles
        self._callerids = callerids
        self._campaigns = campaigns
        self._numbers = numbers
        self._region = default_region
        # Chunks whose lookups run at once: the database answers them on as many connections
        # (and cores) while this process prepares the next.
        self._depth = depth
        self._clock = clock

    async def scrub(
        self, chunks: AsyncIterable[Sequence[str]], request: ScrubRequest
    ) -> AsyncGenerator[list[ScrubRow], None]:
        """One list of rows per chunk of raw numbers, in order."""
        ctx = await self._context(request)
        pending: deque[_Pending] = deque()
        try:
            async for raw in chunks:
                verdicts = [self._numbers.classify(r) for r in raw]
                lookup = asyncio.ensure_future(self._lookup(verdicts, ctx))
                pending.append(_Pending(raw, verdicts, lookup))
                if len(pending) > self._depth:
                    yield await self._finish(pending.popleft(), ctx)
            while pending:
                yield await self._finish(pending.popleft(), ctx)
        finally:
            for left in pending:
                left.lookup.cancel()
            for left in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await left.lookup

    async def _finish(self, chunk: _Pending, ctx: _Context) -> list[ScrubRow]:
        return self._rows(chunk.raw, chunk.verdicts, await chunk.lookup, ctx)

    async def _context(self, request: ScrubRequest) -> _Context:
        at = self._clock()
        campaign = request.campaign or DEFAULT_CAMPAIGN
        _, profile = await self._profiles.profile_for(campaign)
        caller = None
        standing: Rule | None = None
        if request.caller_id:
            caller = try_normalise(request.caller_id, self._region)
            standing = await self._caller_standing(caller, campaign, profile)
        if standing is None:
            row = await self._campaigns.get(campaign)
            if row is not None and row["paused"]:
                standing = Rule.CAMPAIGN_PAUSED
        ctx = _Context(at, campaign, caller, profile, standing, lookback_seconds(profile))
        if standing is None:
            if await self._store.prefix_count(campaign) <= PREFIXES_IN_MEMORY:
                ctx.prefixes = await self._store.prefixes(campaign, at)
                ctx.prefix_lengths = sorted({len(p) for p in ctx.prefixes}, reverse=True)
                if ctx.prefix_lengths:
                    shortest = ctx.prefix_lengths[-1]
                    ctx.prefix_heads = frozenset(p[:shortest] for p in ctx.prefixes)
            else:
                ctx.db_prefix_lengths = await self._store.prefix_lengths(campaign)
        return ctx

    async def _caller_standing(
        self, caller: str | None, campaign: str, profile: Profile
    ) -> Rule | None:
        if caller is None:
            return Rule.CALLERID_UNKNOWN
        row = await self._callerids.get(caller)
        if row is None:
            return Rule.CALLERID_UNKNOWN if profile.require_registered_callerid else None
        if row["campaign"] is not None and row["campaign"] != campaign:
            return Rule.CALLERID_UNKNOWN
        if row["state"] != "active":
            return Rule.CALLERID_RESTED
        return None

    async def _lookup(self, verdicts: list[Verdict], ctx: _Context) -> dict[str, KnownDestination]:
        if ctx.standing is not None:
            return {}
        destinations = {e164 for e164, _ in verdicts if e164 is not None}
        if not destinations:
            return {}
        return await self._store.known(
            list(destinations),
            campaign=ctx.campaign,
            at=ctx.at,
            lookback_s=ctx.lookback_s,
            prefix_lengths=ctx.db_prefix_lengths,
        )

    def _rows(
        self,
        raw: Sequence[str],
        verdicts: list[Verdict],
        known: dict[str, KnownDestination],
        ctx: _Context,
    ) -> list[ScrubRow]:
        rows: list[ScrubRow] = []
        append = rows.append
        standing, hours, heads = ctx.standing, ctx.hours, ctx.prefix_heads
        shortest = ctx.prefix_lengths[-1] if ctx.prefix_lengths else 0
        for text, (e164, zones) in zip(raw, verdicts, strict=True):
            if e164 is None:
                append(ScrubRow(text, False, Rule.INVALID_NUMBER, None))
            elif standing is not None:
                append(ScrubRow(e164, False, standing, None))
            else:
                found = known.get(e164)
                # Most numbers: nothing known, no prefix near them, inside the hours.
                if found is None and not (shortest and e164[:shortest] in heads):
                    open_now = hours.get(zones)
                    if open_now is not None and open_now[0] is None:
                        append(ScrubRow(e164, True, None, None))
                        continue
                append(self._judge(e164, zones, found, ctx))
        return rows

    def _judge(
        self, e164: str, zones: tuple[str, ...], known: KnownDestination | None, ctx: _Context
    ) -> ScrubRow:
        if known is not None and known.blacklist is not None:
            return ScrubRow(e164, False, Rule.BLACKLISTED, known.blacklist["expires_at"])
        if ctx.prefix_lengths and e164[: ctx.prefix_lengths[-1]] in ctx.prefix_heads:
            for length in ctx.prefix_lengths:
                entry = ctx.prefixes.get(e164[:length])
                if entry is not None and length <= len(e164):
                    return ScrubRow(e164, False, Rule.BLACKLISTED, entry["expires_at"])
        hours = ctx.hours.get(zones)
        if hours is None:
            facts = outside_hours(ctx.profile.calling_hours, zones, ctx.at)
            rule = Rule.CALLING_HOURS if facts is not None else None
            hours = ctx.hours[zones] = (rule, callable_at(rule, facts or {}))
        if hours[0] is not None:
            return ScrubRow(e164, False, hours[0], hours[1])
        if known is None:
            return ScrubRow(e164, True, None, None)
        rule, facts = judge_calls(known.calls, ctx.profile, ctx.at, ctx.caller_id)
        return ScrubRow(e164, rule is None, rule, callable_at(rule, facts))
