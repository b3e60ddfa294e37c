"""What became of each allowed call, read from the trunk channels' events.

The gate tells the tracker which channel it allowed and under which decision. The ``Dial``
event links that channel (the caller) to the trunk channel (the peer); the peer's answer and its
``ChannelDestroyed`` (the only reliable cause: ``ChannelHangupRequest.cause`` is a bit mask when
soft) give the outcome, recorded once per decision.

The ARI proxy allows channels that ARE the trunk leg (an originate to ``PJSIP/<num>@carrier``).
It learns the channel id from Asterisk's answer, which may come after the channel's first
events, or even after its end. So the tracker keeps a short memory of the trunk channels no
decision explains yet (the bypass detector announces each one as it appears) and replays it
when the proxy links the channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dialguard.policy.codes import Outcome, RestReason
from dialguard.policy.outcome import classify, rejection_label
from dialguard.store.errors import StoreUnavailable

log = logging.getLogger(__name__)

# A channel that dies with cause 0 this soon after `continue` never reached a real extension:
# Asterisk answers 204 to a continue into a missing context or extension, then drops the call.
MISCONFIGURED_WITHIN = 2.0


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """What became of one allowed call. ``decision_id`` is None for a call allowed in fail-open
    mode, whose decision waits in the spool: ``channel_id`` then finds it once written back."""

    decision_id: int | None
    outcome: Outcome
    answered_seconds: int | None
    cause: int | None
    sip_code: int | None
    at: datetime
    campaign: str
    caller_id: str
    channel_id: str | None = None


class OutcomeSink(Protocol):
    async def record(self, outcome: CallOutcome) -> None: ...


class OutcomeMetrics(Protocol):
    def call_outcome(
        self, outcome: str, campaign: str | None, caller_id: str | None = None
    ) -> None: ...
    def carrier_rejection(self, label: str, campaign: str | None) -> None: ...
    def dialplan_misconfigured(self) -> None: ...


@dataclass
class _Allowed:
    channel_id: str
    decision_id: int | None  # None: allowed in fail-open mode, with nothing in the database yet
    campaign: str
    caller_id: str
    continued_at: float
    trunk_channel: str | None = None
    # When the dialling channel itself went up, for a call whose Dial went unheard: Dial()
    # answers its caller when the trunk leg answers.
    answered_at: datetime | None = None


@dataclass
class _TrunkLeg:
    call: _Allowed
    answered_at: datetime | None = None
    seen: float = field(default_factory=time.monotonic)


@dataclass
class _Ended:
    cause: int
    tech_cause: int | None
    at: datetime
    noted: float


@dataclass
class _UnlinkedTrunk:
    """A trunk channel seen on the trunk that no allowed decision has claimed (yet)."""

    seen: float
    dialed: bool = False
    answered_at: datetime | None = None
    ended: _Ended | None = None


# How long the end of an unlinked trunk channel is remembered for a proxy link that arrives
# late: Asterisk answers an originate within milliseconds, so a minute is plenty.
UNLINKED_END_MEMORY = 60.0


class OutcomeTracker:
    """Links allowed channels to their trunk legs and records outcomes through ``sink``.

    Memory is bounded: entries older than ``max_age`` seconds (a call that never ended in our
    sight) are dropped by :meth:`expire`, which the owner calls periodically.
    """

    def __init__(
        self,
        sink: OutcomeSink,
        metrics: OutcomeMetrics | None,
        spawn: Callable[[Awaitable[None]], object],
        *,
        max_age: float = 7200.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._spawn = spawn
        self._max_age = max_age
        self._clock = clock
        self._allowed: dict[str, _Allowed] = {}
        self._trunk: dict[str, _TrunkLeg] = {}
        self._unlinked: dict[str, _UnlinkedTrunk] = {}
        # Calls whose end this process saw and handed to the sink (which may still be writing
        # it, or have spooled it): never settled again as ended unheard. Channel -> when.
        self._finished: dict[str, float] = {}

    def allowed(
        self, channel_id: str, decision_id: int | None, campaign: str, caller_id: str
    ) -> None:
        self._allowed[channel_id] = _Allowed(
            channel_id, decision_id, campaign, caller_id, self._clock()
        )

    def allowed_trunk(
        self, channel_id: str, decision_id: int | None, campaign: str, caller_id: str
    ) -> None:
        """An allowed call whose channel is itself the trunk leg (a proxied originate or dial).

        What the trunk channel already did before this link (answered, even ended) is taken
        from the memory of unlinked trunk channels, so a late link loses no outcome.
        """
        call = _Allowed(
            channel_id, decision_id, campaign, caller_id, self._clock(), trunk_channel=channel_id
        )
        early = self._unlinked.pop(channel_id, None)
        answered_at = early.answered_at if early is not None else None
        if early is not None and early.ended is not None:
            end = early.ended
            self._finish(
                call, _answered_seconds(answered_at, end.at), end.cause, end.tech_cause, end.at
            )
            return
        self._allowed[channel_id] = call
        self._trunk[channel_id] = _TrunkLeg(call, answered_at=answered_at)

    def not_placed(
        self,
        decision_id: int | None,
        campaign: str,
        caller_id: str,
        at: datetime,
        *,
        channel_id: str | None = None,
    ) -> None:
        """An allowed call that never reached the trunk: Asterisk refused it or was away.

        Its outcome (``failed``) is recorded at once, so that it does not count as a call up.
        """
        if channel_id is not None:
            self._trunk.pop(channel_id, None)
            self._allowed.pop(channel_id, None)
        call = _Allowed(channel_id or "", decision_id, campaign, caller_id, self._clock())
        self._finish(call, None, None, None, at)

    def trunk_created(self, channel_id: str) -> None:
        """A channel appeared on a trunk: remember what it does until a decision claims it."""
        if channel_id not in self._trunk:
            self._unlinked.setdefault(channel_id, _UnlinkedTrunk(self._clock()))

    def awaiting_dial(self, channel_id: str) -> bool:
        """True for an unclaimed trunk channel that is up but has not dialed anything yet.

        ``POST /channels/create`` makes such a channel; it places no call until it is dialed.
        """
        early = self._unlinked.get(channel_id)
        return early is not None and not early.dialed and early.ended is None

    def unclaimed_call(self, channel_id: str) -> bool:
        """True for a trunk channel that placed a call (it dialed) and no decision claimed."""
        early = self._unlinked.get(channel_id)
        return early is not None and early.dialed

    def is_allowed_channel(self, channel_id: str) -> bool:
        return channel_id in self._allowed

    def is_tracked_trunk(self, channel_id: str) -> bool:
        return channel_id in self._trunk

    def on_dial(self, caller_id: str | None, peer_id: str, dialstatus: str, at: datetime) -> bool:
        """Returns True when the dial belongs to an allowed call."""
        leg = self._trunk.get(peer_id)
        if leg is None:
            call = self._allowed.get(caller_id) if caller_id else None
            if call is None:
                self._note_unlinked(peer_id, dialed=True, answered_at=_answer_time(dialstatus, at))
                return False
            call.trunk_channel = peer_id
            leg = self._trunk[peer_id] = _TrunkLeg(call)
            self._unlinked.pop(peer_id, None)
        if dialstatus == "ANSWER" and leg.answered_at is None:
            leg.answered_at = at
        return True

    def on_answer(self, channel_id: str, at: datetime) -> None:
        leg = self._trunk.get(channel_id)
        if leg is not None:
            if leg.answered_at is None:
                leg.answered_at = at
            return
        call = self._allowed.get(channel_id)
        if call is not None and call.trunk_channel is None:
            if call.answered_at is None:
                call.answered_at = at
            return
        self._note_unlinked(channel_id, answered_at=at)

    def on_destroyed(
        self, channel_id: str, cause: int, tech_cause: int | None, at: datetime
    ) -> None:
        leg = self._trunk.pop(channel_id, None)
        if leg is not None:
            self._allowed.pop(leg.call.channel_id, None)
            answered = _answered_seconds(leg.answered_at, at)
            self._finish(leg.call, answered, cause, tech_cause, at)
            return
        early = self._unlinked.get(channel_id)
        if early is not None and early.ended is None:
            early.ended = _Ended(cause, tech_cause, at, self._clock())
        call = self._allowed.get(channel_id)
        if call is None or call.trunk_channel is not None:
            # Not ours, or its trunk leg is still up and will tell the outcome.
            return
        del self._allowed[channel_id]
        if cause == 0 and self._clock() - call.continued_at <= MISCONFIGURED_WITHIN:
            log.error(
                "channel %s died with cause 0 right after continue: the dialplan target of the"
                " allowed label is missing (Asterisk accepts a continue into nowhere)",
                channel_id,
            )
            if self._metrics is not None:
                self._metrics.dialplan_misconfigured()
        self._finish(call, _answered_seconds(call.answered_at, at), cause, tech_cause, at)

    @property
    def max_age_s(self) -> int:
        return int(self._max_age)

    @property
    def calls_tracked(self) -> int:
        """Allowed calls followed to their end now."""
        return len(self._allowed)

    def reconcile(
        self,
        rows: Sequence[Mapping[str, Any]],
        present: set[str],
        *,
        tracked: bool = True,
        up: AbstractSet[str] = frozenset(),
    ) -> tuple[int, list[str]]:
        """Square the calls up with the channels Asterisk has (``present``; ``up``: those of
        them answered), after a time of not listening. ``rows``: the allowed decisions with no
        outcome (``id``, ``channel_id``, ``campaign``, ``caller_id``). A call none of whose
        channels is left ended unheard: its end is recorded now, with no cause. One still up
        and not tracked (the process restarted) is tracked from here. Returns how many ended,
        and the channels to follow: those tracked from here, and, with ``tracked``, every
        dialling channel tracked here that is still up, since a subscription to it may have
        ended with the connection (and the Dial that tied it to its trunk leg may have been
        missed: its own end then tells the outcome). With ``tracked`` the calls tracked here
        are squared too.

        A call found answered whose answer went unheard counts as answered from now: its
        outcome says answered, and its seconds are those from here on (a lower bound).
        """
        now = datetime.now(UTC)
        ended = 0
        followed: list[str] = []
        # The calls tracked here are squared only after a time of not listening (``tracked``):
        # while events flow, their own ChannelDestroyed tells their end, with its cause.
        for channel_id, call in list(self._allowed.items()) if tracked else ():
            if channel_id in present or (call.trunk_channel or "") in present:
                if channel_id in present and call.trunk_channel != channel_id:
                    followed.append(channel_id)
                self._seen_up(call, up, now)
                continue
            del self._allowed[channel_id]
            if call.trunk_channel:
                self._trunk.pop(call.trunk_channel, None)
            self._finish(call, None, None, None, now)
            ended += 1
        for row in rows:
            channel_id = str(row["channel_id"])
            if channel_id in self._allowed or channel_id in self._trunk:
                continue
            if channel_id in self._finished:
                continue  # its outcome is on its way
            call = _Allowed(
                channel_id, int(row["id"]), str(row["campaign"]), str(row["caller_id"]),
                self._clock(),
            )  # fmt: skip
            if channel_id in present:
                self._allowed[channel_id] = call
                followed.append(channel_id)
                self._seen_up(call, up, now)
            else:
                self._finish(call, None, None, None, now)
                ended += 1
        return ended, followed

    def _seen_up(self, call: _Allowed, up: AbstractSet[str], now: datetime) -> None:
        """``call`` is up, as far as its channels in ``up`` tell: its answer, if unheard."""
        leg = self._trunk.get(call.trunk_channel) if call.trunk_channel else None
        if leg is not None:
            if leg.answered_at is None and call.trunk_channel in up:
                leg.answered_at = now
        elif call.answered_at is None and call.channel_id in up:
            call.answered_at = now

    def expire(self) -> int:
        now = self._clock()
        cutoff = now - self._max_age
        stale = [cid for cid, call in self._allowed.items() if call.continued_at < cutoff]
        for cid in stale:
            call = self._allowed.pop(cid)
            if call.trunk_channel:
                self._trunk.pop(call.trunk_channel, None)
        for cid in [c for c, seen in self._finished.items() if seen < cutoff]:
            del self._finished[cid]
        forgotten = [
            cid
            for cid, early in self._unlinked.items()
            if early.seen < cutoff
            or (early.ended is not None and early.ended.noted < now - UNLINKED_END_MEMORY)
        ]
        for cid in forgotten:
            del self._unlinked[cid]
        return len(stale)

    def _note_unlinked(
        self, channel_id: str, *, dialed: bool = False, answered_at: datetime | None = None
    ) -> None:
        early = self._unlinked.get(channel_id)
        if early is None:
            return  # not a trunk channel, or one already explained
        early.dialed = early.dialed or dialed
        if early.answered_at is None:
            early.answered_at = answered_at

    def _finish(
        self,
        call: _Allowed,
        answered: int | None,
        cause: int | None,
        sip_code: int | None,
        at: datetime,
    ) -> None:
        outcome = classify(answered, cause, sip_code)
        if call.channel_id:
            self._finished[call.channel_id] = self._clock()
        if self._metrics is not None:
            self._metrics.call_outcome(outcome.value, call.campaign, call.caller_id)
            label = rejection_label(cause, sip_code)
            if label is not None:
                self._metrics.carrier_rejection(label, call.campaign)
        if call.decision_id is None and not call.channel_id:
            return  # counted; neither a decision nor a channel to write it against
        self._spawn(
            self._sink.record(
                CallOutcome(
                    call.decision_id,
                    outcome,
                    answered,
                    cause,
                    sip_code,
                    at,
                    call.campaign,
                    call.caller_id,
                    call.channel_id or None,
                )
            )
        )


def _answer_time(dialstatus: str, at: datetime) -> datetime | None:
    return at if dialstatus == "ANSWER" else None


def _answered_seconds(answered_at: datetime | None, ended_at: datetime) -> int | None:
    if answered_at is None:
        return None
    return max(0, round((ended_at - answered_at).total_seconds()))


class RecordedOutcome(Protocol):
    @property
    def rested(self) -> bool: ...


class OutcomeStore(Protocol):
    async def latest_for_channel(self, channel_id: str) -> Mapping[str, Any] | None: ...
    async def record_outcome(
        self,
        decision_id: int,
        *,
        outcome: str,
        answered_seconds: int | None,
        cause: int | None,
        sip_code: int | None,
        at: datetime,
    ) -> RecordedOutcome: ...


class RestMetrics(Protocol):
    def callerid_rested(self, reason: str, campaign: str | None) -> None: ...


class OutcomeSpool(Protocol):
    """Where an outcome waits when the database cannot take it (the fail-open spool)."""

    def append_outcome(self, outcome: CallOutcome) -> None: ...


class StoreOutcomeSink:
    """Records outcomes in the database, retrying through a short outage.

    The recording transaction also judges the caller ID's carrier-block signal; when it rests
    the caller ID, that is counted here. An outcome is never dropped while the ``spool`` can
    hold it: a fail-open call's outcome goes there at once (its decision is there too), and any
    other after its last attempt. :meth:`write_back` records them when the spool replays.
    """

    def __init__(
        self,
        store: OutcomeStore,
        metrics: RestMetrics | None = None,
        *,
        attempts: int = 30,
        pause: float = 1.0,
        on_error: Callable[[str], None] | None = None,
        spool: OutcomeSpool | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._attempts = attempts
        self._pause = pause
        self._on_error = on_error
        self._spool = spool

    async def record(self, outcome: CallOutcome) -> None:
        if outcome.decision_id is None:
            if self._spool is not None:
                self._spool.append_outcome(outcome)
            return
        for attempt in range(self._attempts):
            try:
                await self._record(outcome.decision_id, outcome)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # An outage (StoreUnavailable) or anything unforeseen: logged, counted, retried.
                if self._on_error is not None:
                    self._on_error("outcome_sink")
                if attempt + 1 == self._attempts:
                    self._give_up(outcome, exc)
                    return
                if isinstance(exc, StoreUnavailable):
                    # Every call ending during an outage waits here: one line each, not one a try.
                    level = logging.WARNING if attempt == 0 else logging.DEBUG
                    log.log(level, "outcome of decision %s waits: %s", outcome.decision_id, exc)
                else:
                    log.exception("outcome of decision %s failed; retrying", outcome.decision_id)
                await asyncio.sleep(self._pause)

    async def write_back(self, outcomes: list[CallOutcome]) -> list[CallOutcome]:
        """Record spooled outcomes, in order; returns those whose decision is not in the
        database yet. A store error propagates: the spool keeps them all for its next try, and
        an outcome recorded twice counts once (a decision takes one outcome)."""
        waiting: list[CallOutcome] = []
        for outcome in outcomes:
            decision_id = outcome.decision_id
            if decision_id is None and outcome.channel_id:
                found = await self._store.latest_for_channel(outcome.channel_id)
                decision_id = int(found["id"]) if found is not None else None
            if decision_id is None:
                waiting.append(outcome)
                continue
            await self._record(decision_id, outcome)
        return waiting

    async def _record(self, decision_id: int, outcome: CallOutcome) -> None:
        recorded = await self._store.record_outcome(
            decision_id,
            outcome=outcome.outcome.value,
            answered_seconds=outcome.answered_seconds,
            cause=outcome.cause,
            sip_code=outcome.sip_code,
            at=outcome.at,
        )
        if recorded.rested and self._metrics is not None:
            log.warning(
                "caller ID %s rested: carrier rejections reached the block threshold",
                outcome.caller_id,
            )
            self._metrics.callerid_rested(
                RestReason.CARRIER_BLOCK_SUSPECTED.value, outcome.campaign
            )

    def _give_up(self, outcome: CallOutcome, exc: Exception) -> None:
        if self._spool is None:
            log.error("outcome of decision %s lost: %s", outcome.decision_id, exc)
            return
        log.warning(
            "outcome of decision %s kept in the spool after %d attempts: %s",
            outcome.decision_id,
            self._attempts,
            exc,
        )
        self._spool.append_outcome(outcome)
