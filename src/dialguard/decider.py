"""THE use case: normalise, check, decide in one database round trip, count, explain.

Every front door (the ARI gate, the ARI proxy, the admin API, the CLI) decides through
:class:`Decider`; none builds a decision path of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

from dialguard.bulk_numbers import BulkNumbers
from dialguard.deadlines import Deadlines
from dialguard.numbers import cached_normalise
from dialguard.policy.checks import precheck
from dialguard.policy.clock import ClockOffset
from dialguard.policy.codes import DEFAULT_CAMPAIGN, Rule, Verdict
from dialguard.policy.evidence import callable_at, explain
from dialguard.policy.model import Decision, DecisionRequest, Facts
from dialguard.policy.profile import Profile, ProfileError, build_profile
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecideParams, DecideResult, DecideRules, DecisionStore
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# The share of the decision deadline a recorded decision may spend waiting for its locks: the
# rest is left for the read, the commit and the answer's way back, so that the database never
# records an attempt whose caller has already stopped waiting.
_RECORD_SHARE = 0.8


class TimeRefused(ValueError):
    """A recorded decision asked for a time that is not now (a client cannot place a call in
    the past or the future); ``check --at`` and ``replay`` are the tools for other times."""


class DecisionMetrics(Protocol):
    def decision(self, verdict: str, rule: str, campaign: str, seconds: float) -> None: ...
    def store_error(self) -> None: ...
    def fail_open_decision(self) -> None: ...


class FailOpenSpool(Protocol):
    """Keeps decisions allowed while the database was away, to write them back later."""

    def append(
        self,
        decision: Decision,
        source: str,
        channel_id: str | None,
        spool_id: str | None = None,
        origin: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class NumberPolicy:
    default_region: str
    fallback_timezone: str


class ProfileSource(Protocol):
    """Where campaign profiles come from: the configured profiles by name."""

    def raw(self, name: str) -> Mapping[str, Any] | None: ...


class Decider:
    """Decides attempts. Holds a per-campaign profile cache keyed by the campaign's version.

    ``clock`` is this machine's clock; the decider follows the database's clock through it
    (:class:`~dialguard.policy.clock.ClockOffset`), since a live decision's time is the
    database's. A recorded decision that names its own time is refused when that time is more
    than ``time_tolerance`` seconds from the database's clock, unless it is an audit replay
    (``DecisionRequest.as_of``).
    """

    def __init__(
        self,
        *,
        decisions: DecisionStore,
        campaigns: CampaignStore,
        profiles: ProfileSource,
        numbers: NumberPolicy,
        metrics: DecisionMetrics | None = None,
        deadline: float = 0.5,
        fail_mode: str = "closed",
        spool: FailOpenSpool | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        time_tolerance: float = 5.0,
    ) -> None:
        self._decisions = decisions
        self._campaigns = campaigns
        self._profiles = profiles
        self._numbers = numbers
        self._metrics = metrics
        self._deadline = Deadlines(deadline)
        self._fail_mode = fail_mode
        self._spool = spool
        self._clock = clock
        self._database_clock = ClockOffset()
        # Round trips given up at the deadline, finishing their clean-up in the background.
        self._leaving: set[asyncio.Future[Any]] = set()
        self._tolerance = timedelta(seconds=time_tolerance)
        # Per campaign: its version, its profile, and the profile's rules as decisions send them.
        self._cache: dict[str, tuple[int, Profile, DecideRules]] = {}
        # E.164 input (and national numbers of the North American plan) is classified once per
        # number block, exactly as numbers.py answers, so a decision does not pay a full
        # phonenumbers parse of the destination and caller ID; other input is parsed alone.
        self._classify = BulkNumbers(numbers.default_region, numbers.fallback_timezone).classify

    def now(self) -> datetime:
        """The database's clock, as estimated here."""
        return self._clock() + self._database_clock.offset

    async def sync_clock(self) -> None:
        """Read the database's clock once (at start: decisions keep it in step after)."""
        sent = self._clock()
        stamp = await self._decisions.database_time()
        self._database_clock.observe(sent, stamp, self._clock())

    async def decide(self, request: DecisionRequest) -> Decision:
        started = time.perf_counter()
        campaign = request.campaign or DEFAULT_CAMPAIGN
        # Live: placed now (a time given with it only had to be now, within the tolerance).
        live = request.at is None or (request.record and not request.as_of)
        if live and request.at is not None:
            await self._refuse_other_times(request.at)
        sent = self._clock()
        at = sent + self._database_clock.offset if live or request.at is None else request.at
        numbers = self._numbers
        destination, zones = self._classify(request.destination)
        raw_caller = request.caller_id
        if raw_caller[:1] == "+":
            caller = self._classify(raw_caller)[0]
        else:
            caller = cached_normalise(raw_caller, numbers.default_region)
        # Fail-open: the id the call is spooled under if the answer comes too late; the database
        # records the decision under it too, so the two count once.
        attempt_id = str(uuid.uuid4()) if self._fail_mode == "open" and request.record else None
        # Closed mode: a recorded decision answered after its caller gave up (the call was hung
        # up) is still awaited, and if it was allowed, recorded as not placed.
        late = self._not_placed if self._fail_mode == "closed" and request.record else None
        try:
            result = await self._bounded(
                self._round_trip(
                    request, campaign, at, destination, zones, caller, live, attempt_id
                ),
                late,
            )
        except Exception as exc:  # every failure class gets the fail mode's verdict
            decision = self._undecidable(
                request, campaign, at, destination, caller, exc, attempt_id
            )
        else:
            if result.at is not None and live:
                self._database_clock.observe(sent, result.at, self._clock())
                at = result.at
            rule = Rule(result.rule) if result.rule else None
            decision = Decision(
                verdict=Verdict.DENY if rule else Verdict.ALLOW,
                rule=rule,
                evidence=explain(rule, result.facts),
                decision_id=result.decision_id,
                caller_id=caller or request.caller_id,
                destination=destination or request.destination,
                campaign=campaign,
                at=at,
                facts=result.facts,
                callable_at=callable_at(rule, result.facts),
            )
        if self._metrics is not None and request.record:
            rule_label = decision.rule.value if decision.rule else "none"
            self._metrics.decision(
                decision.verdict.value, rule_label, campaign, time.perf_counter() - started
            )
        return decision

    async def _bounded(
        self, work: Coroutine[Any, Any, T], late: Callable[[T], None] | None = None
    ) -> T:
        """``work``'s result within the deadline, else :class:`TimeoutError`, at the deadline.

        The work runs in a task of its own, so that giving up does not wait for it: a
        connection whose statement is cancelled goes back to the pool only once the server
        acknowledges the cancel, and a server that has stopped answering never does. Past the
        deadline the task is cancelled and left to finish in the background; with ``late``, it
        is left to run to its end instead, and ``late`` gets its result.
        """
        task = asyncio.ensure_future(work)
        try:
            with self._deadline():
                return await asyncio.shield(task)
        except BaseException as exc:
            if not task.done():
                # Past the deadline, with ``late``, the work runs on; cancelled from outside
                # (its caller went away), it is cancelled too.
                keep = late is not None and isinstance(exc, TimeoutError)
                if not keep:
                    task.cancel()
                self._leaving.add(task)
                task.add_done_callback(partial(self._left, late if keep else None))
            raise

    def _left(self, late: Callable[[Any], None] | None, task: asyncio.Future[Any]) -> None:
        self._leaving.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            log.debug("an abandoned decision ended with %r", task.exception())
        elif late is not None:
            late(task.result())

    async def drain(self, within: float) -> None:
        """Wait (at most ``within`` seconds) for the round trips given up at their deadline,
        and their "not placed" records, then cancel what is left. For the owner's stop.

        A round trip that ends late starts its "not placed" record as it ends: that record is
        waited for too, else a stop would cancel it and leave a hung-up call standing as an
        allowed attempt."""
        loop = asyncio.get_running_loop()
        until = loop.time() + within
        while self._leaving and (remaining := until - loop.time()) > 0:
            await asyncio.wait(set(self._leaving), timeout=remaining)
        for task in list(self._leaving):
            task.cancel()

    def _not_placed(self, result: DecideResult) -> None:
        """A decision allowed and recorded after its caller had given up: the gate hung the
        call up, so the record must not stand as an allowed attempt."""
        if result.decision_id is None or result.rule is not None or result.stale:
            return
        log.warning("decision %s was answered after its deadline; recording it as not placed",
                    result.decision_id)  # fmt: skip
        task = asyncio.ensure_future(self._decisions.not_placed(result.decision_id))
        self._leaving.add(task)
        task.add_done_callback(partial(self._left, None))

    async def _refuse_other_times(self, at: datetime) -> None:
        if not self._database_clock.known:
            # Else judged on this machine's clock; the decision itself then fails over.
            with contextlib.suppress(Exception):
                await self._bounded(self.sync_clock())
        now = self.now()
        if abs(at - now) > self._tolerance:
            raise TimeRefused(
                f"a recorded decision is about a call placed now: {at.isoformat()} is"
                f" {abs(at - now).total_seconds():.1f} s from the database's clock (tolerance"
                f" {self._tolerance.total_seconds():g} s); leave the time out, or use"
                " `dialguard check --at` (POST /v1/check) or `dialguard replay` for other times"
            )

    async def attach_channel(self, decision_id: int, channel_id: str) -> None:
        """Link a recorded decision to the channel Asterisk made for it, once known (an ARI
        originate that names no channel id learns it from Asterisk's answer)."""
        await self._decisions.attach_channel(decision_id, channel_id)

    async def recall(self, channel_id: str) -> Decision | None:
        """The decision already recorded for a channel, if any.

        A channel found parked after a restart may have been decided just before the crash,
        with the command lost: applying that decision again, rather than deciding anew, keeps
        the attempt from being counted twice (and denied by its own interval).
        """
        row = await self._decisions.latest_for_channel(channel_id)
        if row is None:
            return None
        rule = Rule(row["rule"]) if row["rule"] else None
        facts: Facts = dict(row["facts"] or {})
        return Decision(
            verdict=Verdict.ALLOW if row["allowed"] else Verdict.DENY,
            rule=rule,
            evidence=explain(rule, facts),
            decision_id=int(row["id"]),
            caller_id=row["caller_id"],
            destination=row["destination"],
            campaign=row["campaign"],
            at=row["at"],
            facts=facts,
            callable_at=callable_at(rule, facts),
        )

    async def calls_up(self, origin: str, within_s: int) -> list[dict[str, Any]]:
        """The calls ``origin`` (a gate) allowed in the last ``within_s`` seconds that have no
        outcome yet."""
        return await self._decisions.calls_up(origin, within_s)

    async def profile_for(self, campaign: str) -> tuple[int, Profile]:
        version, profile, _ = await self._cached(campaign)
        return version, profile

    async def _cached(self, campaign: str) -> tuple[int, Profile, DecideRules]:
        cached = self._cache.get(campaign)
        if cached is not None:
            return cached
        return await self._load_profile(campaign)

    def forget(self, campaign: str | None = None) -> None:
        """Drop cached profiles (all, or one campaign's): the next decision re-reads them."""
        if campaign is None:
            self._cache.clear()
        else:
            self._cache.pop(campaign, None)

    async def _round_trip(
        self,
        request: DecisionRequest,
        campaign: str,
        at: datetime,
        destination: str | None,
        zones: tuple[str, ...],
        caller: str | None,
        live: bool,
        attempt_id: str | None,
    ) -> DecideResult:
        deadline = None
        if request.record and live:
            if not self._database_clock.known:
                await self.sync_clock()  # the first decision of a process that never asked
            # On the database's clock: a statement that reaches a stalled server late is still
            # judged against when its caller gives up. (An audit's caller waits for it.)
            deadline = self.now() + timedelta(seconds=self._deadline.seconds * _RECORD_SHARE)
        for _ in range(3):
            version, profile, rules = await self._cached(campaign)
            params = self._params(
                request, campaign, at, destination, zones, caller, version, profile, rules,
                live=live, deadline=deadline, attempt_id=attempt_id,
            )  # fmt: skip
            result = await self._decisions.decide(params)
            if result.abandoned:
                # The database held it past what its caller waits: nothing was recorded, and
                # the caller's own deadline is about to end the wait.
                raise TimeoutError("the decision waited too long for its locks")
            if not result.stale:
                return result
            # Someone changed the campaign since we cached it: re-read and decide again.
            self._cache.pop(campaign, None)
        raise StoreUnavailable(f"campaign {campaign} keeps changing; could not decide")

    async def _load_profile(self, campaign: str) -> tuple[int, Profile, DecideRules]:
        row = await self._campaigns.get(campaign)
        version = 0 if row is None else int(row["version"])
        name = "default" if row is None else str(row["profile"])
        overrides: dict[str, Any] = {} if row is None else dict(row["overrides"])
        raw = self._profiles.raw(name)
        if raw is None:
            log.error("campaign %s selects unknown profile %s; using default", campaign, name)
            raw = self._profiles.raw("default") or {}
        try:
            profile = build_profile(raw, overrides, where=f"campaign {campaign}")
        except ProfileError as exc:
            log.error(
                "campaign %s has invalid overrides (%s); using its profile alone", campaign, exc
            )
            profile = build_profile(raw, {}, where=f"profiles.{name}")
        cached = self._cache[campaign] = (version, profile, decide_rules(profile))
        return cached

    def _params(
        self,
        request: DecisionRequest,
        campaign: str,
        at: datetime,
        destination: str | None,
        zones: tuple[str, ...],
        caller: str | None,
        version: int,
        profile: Profile,
        rules: DecideRules,
        *,
        live: bool = False,
        deadline: datetime | None = None,
        attempt_id: str | None = None,
    ) -> DecideParams:
        """The decision's parameters; ``live``, ``deadline``, ``attempt_id`` and the origin
        count only for a recorded decision."""
        record = request.record
        pre = precheck(
            destination=destination,
            caller_id=caller,
            raw_destination=request.destination,
            raw_caller_id=request.caller_id,
            zones=zones,
            profile=profile,
            at=at,
        )
        return DecideParams(
            at=at,
            caller_id=caller or request.caller_id,
            destination=destination or request.destination,
            campaign=campaign,
            campaign_version=version,
            record=request.record,
            source=request.source,
            channel_id=request.channel_id,
            pre_rule=pre.rule.value if pre.rule else None,
            pre_facts=pre.facts,
            hours_facts=pre.hours_facts,
            rules=rules,
            live=live and record,
            deadline=deadline if record else None,
            attempt_id=attempt_id if record else None,
            origin=request.origin if record else None,
        )

    def _undecidable(
        self,
        request: DecisionRequest,
        campaign: str,
        at: datetime,
        destination: str | None,
        caller: str | None,
        exc: BaseException,
        attempt_id: str | None = None,
    ) -> Decision:
        error = str(exc) or type(exc).__name__
        if isinstance(exc, (TimeoutError, StoreUnavailable)):
            log.warning("decision for %s could not be made: %s", request.channel_id, error)
        else:
            # No failure class foreseen: the fail mode answers all the same, and the trace says
            # what happened.
            log.exception("decision for %s failed unexpectedly", request.channel_id)
        if self._metrics is not None:
            self._metrics.store_error()
        facts: Facts = {"deadline_ms": round(self._deadline.seconds * 1000), "error": error}
        common: dict[str, Any] = {
            "caller_id": caller or request.caller_id,
            "destination": destination or request.destination,
            "campaign": campaign,
            "at": at,
            "facts": facts,
            "decision_id": None,
        }
        if self._fail_mode == "open" and request.record and destination and caller:
            decision = Decision(
                Verdict.ALLOW, None, "allowed in fail-open mode: " + error, **common
            )
            if self._spool is not None:
                self._spool.append(
                    decision, request.source, request.channel_id, attempt_id, request.origin
                )
            if self._metrics is not None:
                self._metrics.fail_open_decision()
            return decision
        return Decision(
            Verdict.DENY, Rule.STORE_UNAVAILABLE, explain(Rule.STORE_UNAVAILABLE, facts), **common
        )


def decide_rules(profile: Profile) -> DecideRules:
    """A profile's limits as decisions send them."""
    cooldown_on = profile.conversation_cooldown is not None
    rotation = profile.rotation_per_destination
    return DecideRules(
        require_registered=profile.require_registered_callerid,
        cooldown_s=profile.conversation_cooldown,
        conversation_min_s=profile.conversation_min_seconds if cooldown_on else None,
        interval_s=profile.destination_min_interval,
        dest_cap_limits=tuple(w.limit for w in profile.destination_caps),
        dest_cap_windows=tuple(w.seconds for w in profile.destination_caps),
        rotation_limit=rotation.limit if rotation else None,
        rotation_window_s=rotation.seconds if rotation else None,
        campaign_rotation_limit=profile.campaign_callerids_per_day,
        cid_cap_limits=tuple(w.limit for w in profile.callerid_caps),
        cid_cap_windows=tuple(w.seconds for w in profile.callerid_caps),
        cid_max_concurrent=profile.callerid_max_concurrent,
        max_call_s=profile.max_call_duration,
    )
