"""The ARI front door: every channel that enters ``Stasis(dialguard, ...)`` is decided.

Filter, then match: :meth:`Gate.on_event` runs on the websocket reader, so it only routes; each
StasisStart is decided in its own task under a deadline, and the reader never waits for it.

On each connect the gate subscribes to the trunks and reconciles the channels left parked in
Stasis while it was away, both in a background task, each retried with jittered backoff until
it succeeds (readiness waits for both). New calls are decided meanwhile, not queued behind the
reconciliation; the parked channels are decided oldest first (``creationtime``), a few at a
time, since the oldest are nearest the dialplan's ``TIMEOUT(absolute)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dialguard.ari.client import (
    AriRequest,
    continue_request,
    hangup_request,
    set_variable_request,
)
from dialguard.ari.errors import (
    AriError,
    AriUnavailable,
    ChannelGone,
    DialplanTargetNotFound,
    MalformedEvent,
    NotInStasis,
)
from dialguard.ari.events import (
    ApplicationReplaced,
    Channel,
    ChannelCreated,
    ChannelDestroyed,
    ChannelStateChange,
    Dial,
    Event,
    StasisStart,
)
from dialguard.ari.listener import jittered_backoff
from dialguard.outcomes import OutcomeTracker
from dialguard.policy.model import Decision, DecisionRequest
from dialguard.tasks import TaskSet

log = logging.getLogger(__name__)


class AriCommands(Protocol):
    async def hangup(self, channel_id: str, *, reason_code: int | None = None) -> None: ...
    async def list_channels(self) -> list[dict[str, Any]]: ...
    async def subscribe(self, event_source: str) -> dict[str, Any]: ...
    async def filter_events(self, allowed: Iterable[str]) -> dict[str, Any]: ...
    def subscribe_request(self, event_source: str) -> AriRequest: ...
    async def request(
        self, method: str, path: str, params: Any = None, *, channel_id: str | None = None
    ) -> Any: ...
    async def request_in_order(self, requests: Sequence[AriRequest]) -> list[Any | AriError]: ...


class Decide(Protocol):
    async def decide(self, request: DecisionRequest) -> Decision: ...
    async def recall(self, channel_id: str) -> Decision | None: ...
    async def calls_up(self, origin: str, within_s: int) -> list[dict[str, Any]]: ...


class GateMetrics(Protocol):
    def ari_connected(self, connected: bool) -> None: ...
    def dialplan_misconfigured(self) -> None: ...
    def ari_reconnect(self) -> None: ...
    def ungated_call(self) -> None: ...
    def background_error(self, task: str) -> None: ...


class SpoolBarrier(Protocol):
    """The fail-open spool, as far as the gate waits for it."""

    async def durable(self, within: float | None = None) -> bool: ...


# The event types Gate.on_event acts on. Asterisk is asked to send only these (and those of the
# owner's own, see GateConfig.events); the listener drops any other unparsed.
HANDLED_EVENTS = frozenset(
    {
        "StasisStart",
        "Dial",
        "ChannelStateChange",
        "ChannelCreated",
        "ChannelDestroyed",
        "ApplicationReplaced",
    }
)


@dataclass(frozen=True, slots=True)
class GateConfig:
    app: str
    trunks: tuple[str, ...]
    allow_label: str
    deny_cause: int
    deny_label: str | None
    campaign_from: str
    destination_from: str
    enforce_gate: bool = False
    ungated_grace: float = 2.0
    # Subscribe the application to each allowed channel before continuing it. Without
    # subscribeAll, Asterisk sends a Dial() only to applications subscribed to the dialling
    # channel (not to those subscribed to the trunk endpoint), and the Dial event is what links
    # the trunk leg, and so its outcome, to the decision.
    follow_allowed_channels: bool = False
    # Parked channels decided at once during a reconciliation: enough to clear a backlog in
    # well under the dialplan's 5 s, few enough that the oldest go first and new calls still
    # find the database free.
    reconcile_concurrency: int = 8
    # How long a fail-open allow waits for its spool line to reach the disk before it goes on.
    spool_wait: float = 1.0
    # The event types the application asks Asterisk for (its eventFilter). The rest (a
    # ChannelVarset for every variable a dialplan or a SIP channel sets, ChannelDialplan for
    # every step: five in six of what a gated call brings) never cross the websocket.
    events: frozenset[str] = HANDLED_EVENTS


class Gate:
    """Owns the tasks it spawns; :meth:`drain` waits for them, :meth:`close` cancels them."""

    def __init__(
        self,
        config: GateConfig,
        decider: Decide,
        ari: AriCommands,
        outcomes: OutcomeTracker,
        tasks: TaskSet,
        metrics: GateMetrics | None = None,
        *,
        spool: SpoolBarrier | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self._config = config
        self._spool = spool
        self._backoff = backoff or jittered_backoff(base=0.2, cap=5.0)
        self._decider = decider
        self._ari = ari
        self._outcomes = outcomes
        self._metrics = metrics
        self._tasks = tasks
        self._deciding: set[str] = set()
        self._origin: str | None = None
        self._connected = False
        self._subscribed = False
        self._reconciled = False
        # Channels this connection has started deciding, while its reconciliation runs: the
        # reconciliation skips them (a StasisStart can beat it to a channel it also lists).
        self._settled: set[str] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._replaced = False
        self._connections = 0
        self._trunk_prefixes = tuple(t + "-" for t in config.trunks)
        self._linked_trunks: set[str] = set()
        self._trunks_up: set[str] = set()
        self.decided = 0

    @property
    def events(self) -> frozenset[str]:
        """The event types this gate asks Asterisk for."""
        return self._config.events

    # -- readiness ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._connected and self._subscribed and self._reconciled and not self._replaced

    def status(self) -> dict[str, bool]:
        return {
            "ari_connected": self._connected,
            "subscribed": self._subscribed,
            "reconciled": self._reconciled,
            "replaced": self._replaced,
        }

    # -- listener callbacks -------------------------------------------------------------------

    async def on_connect(self) -> None:
        """Start subscribing and reconciling in the background, and return at once.

        The listener delivers events only after this returns: returning at once lets new
        StasisStart events through while the reconciliation runs.
        """
        self._connected = True
        self._replaced = False
        self._subscribed = not self._config.trunks
        self._reconciled = False
        self._settled = set()
        self._connections += 1
        if self._metrics is not None:
            self._metrics.ari_connected(True)
            if self._connections > 1:
                self._metrics.ari_reconnect()
        self._stop_connecting()
        self._connecting = asyncio.create_task(self._after_connect(), name="ari-after-connect")

    def on_disconnect(self) -> None:
        self._connected = False
        self._subscribed = False
        self._reconciled = False
        self._settled = None
        self._stop_connecting()
        if self._metrics is not None:
            self._metrics.ari_connected(False)

    async def _after_connect(self) -> None:
        await self._until_done("ari_identify", "asking Asterisk who it is", self._identify)
        await asyncio.gather(
            self._until_done("ari_subscribe", "subscribing to the trunks", self._subscribe),
            self._until_done("ari_reconcile", "reconciling parked channels", self._reconcile_all),
            self._until_done("calls_up", "checking the calls left up", self._settle_after_connect),
        )

    async def _settle_after_connect(self) -> None:
        await self.check_calls_up(after_connect=True)

    async def _identify(self) -> None:
        """This gate's origin, recorded with its decisions: the Asterisk (its entity id) and
        the application. Several Asterisks may share one database, and one Asterisk several
        applications."""
        info = await self._ari.request("GET", "/asterisk/info")
        entity = (info.get("system") or {}).get("entity_id") if isinstance(info, dict) else None
        self._origin = f"{entity or self._config.app}/{self._config.app}"

    async def check_calls_up(self, *, after_connect: bool = False) -> None:
        """The calls this gate allowed that have no outcome yet: those that ended while it did
        not listen (a dropped websocket, a restart, a spool written back late) get their end
        recorded, unheard, so that none counts as up for hours; those still up are followed
        to their end. Runs after each connect, and from the owner's housekeeping."""
        if self._origin is None or not self._connected:
            return
        rows = await self._decider.calls_up(self._origin, self._outcomes.max_age_s)
        if not rows and not self._outcomes.calls_tracked:
            return
        channels = await self._ari.list_channels()
        present = {str(c.get("id")) for c in channels}
        up = {str(c.get("id")) for c in channels if c.get("state") == "Up"}
        ended, followed = self._outcomes.reconcile(rows, present, tracked=after_connect, up=up)
        if self._config.follow_allowed_channels:
            # Idempotent; one that ended meanwhile fails here, and the retry finds it gone.
            for channel_id in followed:
                await self._ari.subscribe(f"channel:{channel_id}")
        if ended:
            log.warning(
                "calls left up: %d ended unheard (recorded as ended), %d still up (followed)",
                ended,
                len(followed),
            )
        elif followed:
            log.info("following %d allowed calls still up", len(followed))

    async def _until_done(self, task: str, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` until it succeeds, pausing with jittered backoff after each failure."""
        attempt = 0
        while True:
            try:
                await step()
                if attempt:
                    log.info("%s succeeded after %d failed attempts", what, attempt)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._metrics is not None:
                    self._metrics.background_error(task)
                delay = self._backoff(attempt)
                attempt += 1
                log.warning(
                    "%s failed (%s: %s); attempt %d, retrying in %.2f s",
                    what,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _subscribe(self) -> None:
        # Subscribing is idempotent: a retry asks for every trunk again.
        await self._filter_events()
        for trunk in self._config.trunks:
            await self._ari.subscribe(f"endpoint:{trunk}")
        self._subscribed = True

    async def _filter_events(self) -> None:
        try:
            await self._ari.filter_events(self._config.events)
        except AriUnavailable:
            raise  # retried
        except AriError as exc:
            # An Asterisk older than 16.3 has no filter: the listener drops the rest itself.
            log.warning(
                "Asterisk refused the event filter (%s): every event of the application's"
                " channels comes over the websocket and is dropped here",
                exc,
            )

    async def _reconcile_all(self) -> None:
        """Decide every channel parked in our Stasis app, oldest first, a few at a time."""
        parked: list[Channel] = []
        for raw in await self._ari.list_channels():
            if not self._is_parked_here(raw):
                continue
            try:
                parked.append(Channel.from_json(raw))
            except MalformedEvent as exc:
                log.error("channel %s: cannot reconcile: %s", raw.get("id"), exc.message)
        if parked:
            log.warning("reconciling %d channels parked in Stasis while disconnected", len(parked))
        parked.sort(key=lambda channel: channel.creationtime)
        queue = deque(parked)

        async def work() -> None:
            while queue:
                await self._reconcile(queue.popleft())

        await asyncio.gather(*(work() for _ in range(self._config.reconcile_concurrency)))
        self._reconciled = True
        self._settled = None

    def _stop_connecting(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()

    async def close(self) -> None:
        """Cancel and await the subscription and reconciliation of the current connection."""
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def on_event(self, event: Event) -> None:
        match event:
            case StasisStart(application=app) if app == self._config.app:
                self._spawn(self._decide_channel(event.channel, event.args))
            case Dial(caller=caller, peer=peer, dialstatus=status, timestamp=at):
                if self._outcomes.on_dial(caller.id if caller else None, peer.id, status, at):
                    self._linked_trunks.add(peer.id)
            case ChannelStateChange(channel=channel, timestamp=at) if channel.state == "Up":
                self._outcomes.on_answer(channel.id, at)
            case ChannelCreated(channel=channel) if self._is_trunk_channel(channel):
                self._watch_trunk(channel)
            case ChannelDestroyed(channel=channel, cause=cause, tech_cause=tech, timestamp=at):
                self._linked_trunks.discard(channel.id)
                self._trunks_up.discard(channel.id)
                self._outcomes.on_destroyed(channel.id, cause, tech, at)
            case ApplicationReplaced(application=app):
                self._replaced = True
                log.error(
                    "another connection took the ARI application %s: this instance receives no"
                    " more calls and reports not ready",
                    app,
                )
            case _:
                return

    # -- lifecycle ----------------------------------------------------------------------------

    async def drain(self, within: float) -> bool:
        """Wait for decisions in flight; False if some were still running at the timeout."""
        return await self._tasks.drain(within)

    # -- the decision path --------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        self._tasks.spawn(coro)

    async def _reconcile(self, channel: Channel) -> None:
        args = tuple(a for a in channel.app_data.split(",")[1:])
        await self._decide_channel(channel, args, reconciling=True)

    async def decide_parked(self, channel: Channel, args: tuple[str, ...]) -> None:
        """Decide a channel found parked (by another instance's takeover, say) with ``args`` as
        its Stasis arguments: a decision already recorded for it is applied, not made again."""
        await self._decide_channel(channel, args, reconciling=True)

    async def _decide_channel(
        self, channel: Channel, args: tuple[str, ...], *, reconciling: bool = False
    ) -> None:
        if channel.id in self._deciding:
            return  # reconciliation and a late StasisStart for the same channel
        if self._settled is not None:
            if reconciling and channel.id in self._settled:
                return  # its StasisStart came first and was decided (or is being decided)
            self._settled.add(channel.id)
        self._deciding.add(channel.id)
        try:
            recalled = await self._decider.recall(channel.id) if reconciling else None
            if recalled is not None:
                log.warning(
                    "channel %s was decided before the restart (%s); applying that decision",
                    channel.id,
                    recalled.verdict.value,
                )
                await self._apply(channel, recalled)
            else:
                await self._decide_and_command(channel, args)
        except (ChannelGone, NotInStasis):
            log.info("channel %s left before the decision was applied", channel.id)
        except DialplanTargetNotFound as exc:
            await self._misconfigured(channel, exc)
        except AriError as exc:
            log.error("channel %s: ARI refused the command: %s", channel.id, exc)
        except Exception:
            # A compliance gate that cannot decide does not let the call through.
            log.exception("channel %s: deciding failed; hanging up", channel.id)
            await self._hang_up(channel)
        finally:
            self._deciding.discard(channel.id)

    async def _decide_and_command(self, channel: Channel, args: tuple[str, ...]) -> None:
        destination = await self._pick(self._config.destination_from, channel, args)
        campaign = await self._pick(self._config.campaign_from, channel, args)
        decision = await self._decider.decide(
            DecisionRequest(
                caller_id=channel.caller_number,
                destination=destination or "",
                campaign=campaign or None,
                source="gate",
                channel_id=channel.id,
                origin=self._origin,
            )
        )
        self.decided += 1
        log.debug(
            "channel %s: %s %s (%s)",
            channel.id,
            decision.verdict.value,
            decision.rule.value if decision.rule else "",
            decision.evidence,
        )
        await self._apply(channel, decision)

    async def _apply(self, channel: Channel, decision: Decision) -> None:
        if decision.allowed:
            await self._allow(channel, decision)
        else:
            await self._deny(channel, decision)

    async def _allow(self, channel: Channel, decision: Decision) -> None:
        await self._spooled(channel, decision)
        # Fail-open decisions have no id yet, but the call is allowed all the same: tracked, so
        # the bypass detector leaves its trunk leg alone.
        self._outcomes.allowed(
            channel.id, decision.decision_id, decision.campaign, decision.caller_id
        )
        requests = [
            set_variable_request(channel.id, "DIALGUARD_DECISION", "allow"),
            set_variable_request(
                channel.id, "DIALGUARD_DECISION_ID", str(decision.decision_id or "")
            ),
        ]
        if self._config.follow_allowed_channels:
            requests.append(self._ari.subscribe_request(f"channel:{channel.id}"))
        await self._command(
            channel, requests, continue_request(channel.id, label=self._config.allow_label)
        )

    async def _deny(self, channel: Channel, decision: Decision) -> None:
        rule = decision.rule.value if decision.rule else ""
        requests = [
            set_variable_request(channel.id, "DIALGUARD_DECISION", "deny"),
            set_variable_request(channel.id, "DIALGUARD_RULE", rule),
        ]
        if self._config.deny_label:
            verdict = continue_request(channel.id, label=self._config.deny_label)
        else:
            verdict = hangup_request(channel.id, reason_code=self._config.deny_cause)
        await self._command(channel, requests, verdict)

    async def _command(
        self, channel: Channel, before: list[AriRequest], verdict: AriRequest
    ) -> None:
        """Send the verdict's variables (and subscription) and the verdict itself in one
        pipelined exchange: Asterisk acts on them in order, so the variables are set when the
        dialplan goes on, for one round trip. The verdict's own error is raised; a failure of
        what goes before is logged, since the verdict stands without it (only the channel's
        variables, or the allowed call's outcome, may then be missing)."""
        *answers, outcome = await self._ari.request_in_order([*before, verdict])
        if isinstance(outcome, AriError):
            raise outcome
        for request, answer in zip(before, answers, strict=True):
            if isinstance(answer, AriError):
                log.warning(
                    "channel %s: %s %s failed before the verdict went through: %s",
                    channel.id,
                    request.method,
                    request.path,
                    answer,
                )

    async def _spooled(self, channel: Channel, decision: Decision) -> None:
        """A fail-open allow (no decision id) goes on once its spool line is on disk."""
        if decision.decision_id is not None or self._spool is None:
            return
        if not await self._spool.durable(self._config.spool_wait):
            log.error(
                "channel %s: allowed in fail-open mode before its spool line reached the disk"
                " (%.1f s); a crash now would lose it",
                channel.id,
                self._config.spool_wait,
            )

    async def _misconfigured(self, channel: Channel, exc: DialplanTargetNotFound) -> None:
        """A label dialguard continues to is missing from the dialplan: say so and fail closed."""
        log.error(
            "channel %s: the dialplan has no label for dialguard's verdict (%s); check"
            " gate.allow_label/gate.deny_label against [dialguard-out]; hanging up",
            channel.id,
            exc,
        )
        if self._metrics is not None:
            self._metrics.dialplan_misconfigured()
        await self._hang_up(channel)

    async def _hang_up(self, channel: Channel) -> None:
        """Fail closed: hang the channel up with the deny cause, whatever went wrong before."""
        try:
            await self._ari.hangup(channel.id, reason_code=self._config.deny_cause)
        except (ChannelGone, NotInStasis):
            log.info("channel %s left before it could be hung up", channel.id)
        except AriError as hangup_error:
            log.error("channel %s: hang-up failed too: %s", channel.id, hangup_error)

    async def _pick(self, source: str, channel: Channel, args: tuple[str, ...]) -> str | None:
        """Read a value as configured: ``exten``, ``arg:N`` (1-based) or ``var:NAME``."""
        if source == "exten":
            return channel.exten
        kind, _, name = source.partition(":")
        if kind == "arg":
            index = int(name) - 1
            return args[index].strip() if index < len(args) else None
        if name in channel.channelvars:
            return channel.channelvars[name]
        try:
            result = await self._ari.request(
                "GET", f"/channels/{channel.id}/variable", {"variable": name}, channel_id=channel.id
            )
        except ChannelGone:
            raise
        except AriError:
            return None
        value = result.get("value") if isinstance(result, dict) else None
        return str(value) if value else None

    # -- bypass detection ---------------------------------------------------------------------

    def _is_trunk_channel(self, channel: Channel) -> bool:
        return channel.name.startswith(self._trunk_prefixes)

    def _is_parked_here(self, raw: dict[str, Any]) -> bool:
        dialplan = raw.get("dialplan") or {}
        data = str(dialplan.get("app_data") or "")
        app = self._config.app
        return dialplan.get("app_name") == "Stasis" and (data == app or data.startswith(app + ","))

    def _watch_trunk(self, channel: Channel) -> None:
        # Told inline, before the next event is read: the ARI proxy links its channel only when
        # Asterisk's answer comes back, and the tracker must have kept what happened meanwhile.
        self._outcomes.trunk_created(channel.id)
        self._trunks_up.add(channel.id)
        self._spawn(self._watch_trunk_channel(channel))

    def _explained(self, channel_id: str) -> bool:
        """An allowed decision accounts for this trunk channel (dialplan gate or ARI proxy)."""
        return channel_id in self._linked_trunks or self._outcomes.is_tracked_trunk(channel_id)

    async def _watch_trunk_channel(self, channel: Channel) -> None:
        """A trunk channel that no allowed decision explains within the grace time is ungated."""
        while True:
            await asyncio.sleep(self._config.ungated_grace)
            if channel.id not in self._trunks_up:
                # It ended within the grace time (a quick rejection, say): still a call that
                # did not pass dialguard if it dialed and nothing claimed it. Nothing to hang up.
                if self._outcomes.unclaimed_call(channel.id) and not self._explained(channel.id):
                    self._report_ungated(channel, {}, ended=True)
                return
            if self._explained(channel.id):
                return
            # A channel made by POST /channels/create places no call until it is dialed: judge
            # it once it is (through the proxy, which then explains it, or straight to Asterisk).
            if not self._outcomes.awaiting_dial(channel.id):
                break
        snapshot = await self._still_up(channel.id)
        if snapshot is None:
            return
        self._report_ungated(channel, snapshot, ended=False)
        if self._config.enforce_gate:
            try:
                await self._ari.hangup(channel.id, reason_code=21)
            except (ChannelGone, AriUnavailable) as exc:
                log.info("channel %s: could not hang up the ungated call: %s", channel.id, exc)

    def _report_ungated(self, channel: Channel, snapshot: dict[str, Any], *, ended: bool) -> None:
        log.warning(
            "ungated call on trunk channel %s (%s) from caller ID %s: it did not pass dialguard%s",
            channel.id,
            channel.name,
            _presented_caller_id(snapshot, channel),
            " (it had already ended)" if ended else "",
        )
        if self._metrics is not None:
            self._metrics.ungated_call()

    async def _still_up(self, channel_id: str) -> dict[str, Any] | None:
        """The channel's current snapshot, ``{}`` when ARI cannot tell, None once it is gone."""
        try:
            found = await self._ari.request("GET", f"/channels/{channel_id}", channel_id=channel_id)
        except ChannelGone:
            return None
        except AriError:
            return {}
        return found if isinstance(found, dict) else {}


def _presented_caller_id(snapshot: dict[str, Any], channel: Channel) -> str:
    """The caller ID the carrier sees: an outgoing channel's connected line, else its caller.

    Read from the latest snapshot, since a dial sets it after the channel was created.
    """
    for party in ("connected", "caller"):
        value = snapshot.get(party)
        number = value.get("number") if isinstance(value, dict) else None
        if isinstance(number, str) and number:
            return number
    return channel.connected_number or channel.caller_number or "unknown"
