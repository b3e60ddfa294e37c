"""Several instances gate one Asterisk (``gate.mode = "broadcast"``), and any of them may die.

The dialplan runs ``StasisBroadcast(timeout_ms,^<ari.app>-,args)``: Asterisk sends
``CallBroadcast`` to every application whose name matches, and each instance holds its own,
``<ari.app>-<instance id>``. Every instance that hears the broadcast claims the channel
(``POST /events/claim``); Asterisk answers the first claim 204 and the others 409. The winner
alone then receives ``StasisStart`` and the gate decides the call as in ``stasis`` mode; a loser
drops the channel without a word.

Death and takeover. Each instance holds a lease in PostgreSQL: a row in ``dg_instances`` and a
session-level advisory lock on it, on a connection of its own (:mod:`dialguard.store.instances`).
When the process dies, PostgreSQL ends the session and the lock goes with it: the survivors
see that on their next look (every ``heartbeat``), once the dead one's last heartbeat is older
than ``grace`` (which lets an instance whose connection merely broke take its lease again).
Asterisk keeps the calls the dead instance had claimed parked in its application, which
``GET /applications/<app>`` still lists with their channels (it cannot tell a dead application
from a live one: hence the database). One survivor takes the dead instance over:

1. it holds the dead instance's *takeover lock* (an advisory lock on its own lease session), so
   no two survivors decide the same calls, and a survivor that dies mid-way releases it to the
   next;
2. it waits until no decision statement that started before the death still runs on the server,
   so that whatever the dead instance decided is committed (or rolled back) by then;
3. for each parked channel it asks the decider to *recall* the decision recorded for the channel
   (the decisions table keeps the channel id): a recorded decision is applied again, never made
   twice; only a channel with none is decided, and its decision is recorded with the channel;
4. it forgets the dead instance once every channel is handled, and releases the lock.

The claim (Asterisk's, then the takeover lock), the record (one decision row per channel) and the
recall (read after every earlier decision statement ended) thus agree: at most one decision is
recorded for a channel, and a call is allowed at most once. With no survivor, the dialplan's
``TIMEOUT(absolute)`` ends the call with cause 21.

One policy. Each instance publishes a digest of its profiles with its heartbeat. The oldest live
instance's profiles are the policy; an instance whose digest differs logs why, sets
``dialguard_profiles_mismatch`` to 1, reports not ready and claims no call until its profiles
match (``SIGHUP`` reloads them). Campaign overrides live in the database already.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from dialguard.ari.errors import AriError, AriNotFound, ChannelGone, MalformedEvent
from dialguard.ari.events import Channel, Event, OtherEvent
from dialguard.tasks import TaskSet

log = logging.getLogger(__name__)

# The dialplan application that parks a broadcast call (GET /channels: dialplan.app_name).
BROADCAST_APP = "StasisBroadcast"


@dataclass(frozen=True, slots=True)
class BroadcastConfig:
    app: str  # this instance's application, <ari.app>-<instance id>
    instance_id: str
    # How often the lease is renewed and the others are looked at.
    heartbeat: float = 0.2
    # How old a lost lease's last heartbeat must be before its instance counts as dead.
    grace: float = 0.6
    # How long a takeover waits for the decision statements running at the death to end.
    settle: float = 1.0
    # Parked channels decided at once in a takeover.
    concurrency: int = 8


class Claims(Protocol):
    async def claim(self, channel_id: str) -> bool: ...
    async def request(
        self, method: str, path: str, params: Any = None, *, channel_id: str | None = None
    ) -> Any: ...


class Gate(Protocol):
    @property
    def ready(self) -> bool: ...
    def status(self) -> dict[str, bool]: ...
    def on_event(self, event: Event) -> None: ...
    async def on_connect(self) -> None: ...
    def on_disconnect(self) -> None: ...
    async def decide_parked(self, channel: Channel, args: tuple[str, ...]) -> None: ...


class InstanceRow(Protocol):
    @property
    def instance_id(self) -> str: ...
    @property
    def profiles_hash(self) -> str: ...
    @property
    def alive(self) -> bool: ...


class Instances(Protocol):
    async def beat(self, instance_id: str, app: str, profiles_hash: str) -> int | None: ...
    async def seen(self, grace: float) -> list[Any]: ...
    async def take_over(self, instance_id: str, grace: float) -> str | None: ...
    async def taken_over(self, instance_id: str, *, done: bool) -> None: ...
    async def reclaim(self, instance_id: str) -> int | None: ...
    async def release_reclaim(self, lease: int) -> None: ...
    async def decisions_running(self, since: datetime | None) -> tuple[int, datetime]: ...
    async def close(self) -> None: ...


class BroadcastMetrics(Protocol):
    def claim(self, result: str) -> None: ...
    def instances_alive(self, count: int) -> None: ...
    def profiles_mismatch(self, mismatch: bool) -> None: ...
    def takeover(self, calls: int) -> None: ...
    def background_error(self, task: str) -> None: ...


def profiles_digest(profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """A digest of the profiles' values by name: equal on instances that decide alike."""
    text = json.dumps(
        {name: dict(profiles[name]) for name in sorted(profiles)}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def broadcast_args(app_data: str) -> tuple[str, ...]:
    """The arguments a parked channel's StasisStart carried, from ``timeout,filter,args``.

    Asterisk 22.10 hands the winner the first argument after the filter only, and none when
    that one is empty, so the same here.
    """
    parts = app_data.split(",")
    return tuple(p for p in parts[2:3] if p)


class Broadcast:
    """This instance's part in a group of instances: claims, its lease and takeovers.

    Sits between the events listener and the gate (``on_event``, ``on_connect``,
    ``on_disconnect``). :meth:`run` is the lease loop, for a supervisor to own; :meth:`stop`
    gives the lease up (the others then take over whatever this instance still holds). Claims
    and takeovers run in ``tasks``.
    """

    def __init__(
        self,
        config: BroadcastConfig,
        gate: Gate,
        ari: Claims,
        instances: Instances,
        tasks: TaskSet,
        profiles_hash: Callable[[], str],
        metrics: BroadcastMetrics | None = None,
    ) -> None:
        self._config = config
        self._gate = gate
        self._ari = ari
        self._instances = instances
        self._tasks = tasks
        self._profiles_hash = profiles_hash
        self._metrics = metrics
        self._leased_since: float | None = None
        self._lease_lost_at: float | None = None
        self._looked = False
        self._agree = True
        self._reference: str | None = None
        self._taking: set[str] = set()
        self._own_reconciled = False
        self.alive: list[str] = []

    # -- readiness ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self._gate.ready
            and self._leased_since is not None
            and self._looked
            and self._agree
            and self._own_reconciled
        )

    def status(self) -> dict[str, bool]:
        return {
            **self._gate.status(),
            "leased": self._leased_since is not None,
            "profiles_agree": self._agree,
        }

    @property
    def claiming(self) -> bool:
        """Claim only with the policy of the others, and only while the others count this
        instance alive (its lease held, or lost for less than the grace time)."""
        if not self._agree:
            return False
        if self._leased_since is not None:
            return True
        lost = self._lease_lost_at
        return lost is not None and self._now() - lost < self._config.grace

    # -- listener callbacks -------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if isinstance(event, OtherEvent) and event.type == "CallBroadcast":
            self._on_broadcast(event.raw)
            return
        self._gate.on_event(event)

    async def on_connect(self) -> None:
        self._own_reconciled = False
        await self._gate.on_connect()
        self._tasks.spawn(self._reconcile_own())

    def on_disconnect(self) -> None:
        self._own_reconciled = False
        self._gate.on_disconnect()

    def _on_broadcast(self, raw: Mapping[str, Any]) -> None:
        channel = raw.get("channel")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        if not isinstance(channel_id, str):
            log.warning("CallBroadcast without a channel id: ignored")
            return
        if not self.claiming:
            log.info("channel %s: not claimed (this instance is not ready to decide)", channel_id)
            return
        self._tasks.spawn(self._claim(channel_id))

    async def _claim(self, channel_id: str) -> None:
        try:
            won = await self._ari.claim(channel_id)
        except AriNotFound:
            # Gone, or the broadcast ended (timed out) before the claim arrived.
            self._count_claim("late")
            log.debug("channel %s: claimed too late (gone or no longer broadcast)", channel_id)
            return
        except AriError as exc:
            self._count_claim("error")
            log.warning("channel %s: claim failed: %s", channel_id, exc)
            return
        self._count_claim("won" if won else "lost")
        log.debug("channel %s: claim %s", channel_id, "won" if won else "lost")

    def _count_claim(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.claim(result)

    # -- the lease loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Renew the lease, look at the others and take over the dead, every ``heartbeat``."""
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost_lease()
                if self._metrics is not None:
                    self._metrics.background_error("instances")
                log.warning("instances: cannot renew the lease: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self._config.heartbeat)

    async def stop(self) -> None:
        """Give the lease up: the others take over anything this instance still holds."""
        self._leased_since = None
        with contextlib.suppress(Exception):
            await self._instances.close()

    async def _tick(self) -> None:
        config = self._config
        lease = await self._instances.beat(config.instance_id, config.app, self._profiles_hash())
        if lease is None:
            self._lost_lease()
            log.error(
                "instance id %s is held by another running process: give each instance its own"
                " gate.instance_id; this one claims no calls",
                config.instance_id,
            )
            return
        if self._leased_since is None:
            self._leased_since = self._now()
            self._lease_lost_at = None
            log.info("instance %s holds its lease (app %s)", config.instance_id, config.app)
        rows = await self._instances.seen(config.grace)
        alive = [r for r in rows if r.alive]
        self.alive = [r.instance_id for r in alive]
        if self._metrics is not None:
            self._metrics.instances_alive(len(alive))
        self._judge_profiles(alive)
        self._looked = True
        # A lease just taken again (the database restarted, say) gives the others the grace
        # time to take theirs again too before any of them counts as dead.
        if self._now() - self._leased_since < config.grace:
            return
        for row in rows:
            if row.alive or row.instance_id == config.instance_id:
                continue
            if row.instance_id in self._taking:
                continue
            self._taking.add(row.instance_id)
            self._tasks.spawn(self._take_over(row.instance_id))

    def _lost_lease(self) -> None:
        if self._leased_since is not None:
            self._lease_lost_at = self._now()
        self._leased_since = None

    def _judge_profiles(self, alive: list[Any]) -> None:
        reference = alive[0] if alive else None
        mine = self._profiles_hash()
        agree = reference is None or reference.profiles_hash == mine
        changed = reference is not None and reference.instance_id != self._reference
        if agree != self._agree or (not agree and changed):
            if agree or reference is None:
                log.info("profiles agree with the other instances again: claiming calls")
            else:
                log.error(
                    "profiles differ from those of instance %s, the oldest alive (digest %s,"
                    " ours %s): not ready, claiming no calls; give every instance the same"
                    " [profiles] and reload (SIGHUP)",
                    reference.instance_id,
                    reference.profiles_hash,
                    mine,
                )
        self._agree = agree
        self._reference = reference.instance_id if reference is not None else None
        if self._metrics is not None:
            self._metrics.profiles_mismatch(not agree)

    # -- takeover -----------------------------------------------------------------------------

    async def _take_over(self, instance_id: str) -> None:
        try:
            app = await self._instances.take_over(instance_id, self._config.grace)
            if app is None:
                return  # alive again, already forgotten, or another survivor has it
            done = False
            try:
                await self._settle()
                channels = await self._parked_in(app)
                log.warning(
                    "instance %s is gone: deciding the %d calls parked with it (app %s)",
                    instance_id,
                    len(channels),
                    app,
                )
                await self._decide_all(channels)
                done = True
                if self._metrics is not None:
                    self._metrics.takeover(len(channels))
            finally:
                await self._instances.taken_over(instance_id, done=done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._metrics is not None:
                self._metrics.background_error("instances")
            log.warning("taking over instance %s failed (%s); retrying", instance_id, exc)
        finally:
            self._taking.discard(instance_id)

    async def _settle(self) -> None:
        """Wait (at most ``settle``) for decision statements running now to end."""
        running, since = await self._instances.decisions_running(None)
        give_up = self._now() + self._config.settle
        while running and self._now() < give_up:
            await asyncio.sleep(0.01)
            running, _ = await self._instances.decisions_running(since)
        if running:
            log.warning("takeover: %d decision statements still running; going on", running)

    async def _reconcile_own(self) -> None:
        """Decide the calls parked in this instance's own application while it was away (or
        before a restart under the same instance id), holding its own takeover lock: a survivor
        taking this instance over holds the same lock, so the two never decide the same calls."""
        lease = await self._reclaim()
        try:
            await self._decide_own()
        finally:
            if lease:
                with contextlib.suppress(Exception):
                    await self._instances.release_reclaim(lease)

    async def _reclaim(self) -> int | None:
        """Wait for a survivor that is taking this instance over to finish; None when the
        database cannot say (the calls are decided all the same: nobody else can reach them)."""
        while True:
            try:
                lease = await self._instances.reclaim(self._config.instance_id)
            except Exception as exc:
                log.warning("reconciling %s without its takeover lock: %s", self._config.app, exc)
                return None
            if lease is not None:
                return lease
            await asyncio.sleep(0.05)

    async def _decide_own(self) -> None:
        try:
            await self._settle()
        except Exception as exc:
            log.warning("reconciling without waiting for decisions in flight: %s", exc)
        delay = 0.1
        while True:
            try:
                channels = await self._parked_in(self._config.app)
                break
            except AriError as exc:
                log.warning("reconciling app %s failed (%s); retrying", self._config.app, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if channels:
            log.warning(
                "deciding %d calls parked in %s while disconnected", len(channels), self._config.app
            )
        await self._decide_all(channels)
        self._own_reconciled = True

    async def _parked_in(self, app: str) -> list[tuple[Channel, tuple[str, ...]]]:
        """The channels parked by StasisBroadcast in ``app``, oldest first."""
        try:
            found = await self._ari.request("GET", f"/applications/{app}")
        except AriNotFound:
            return []  # Asterisk forgets an application without a socket once it holds nothing
        ids = found.get("channel_ids") if isinstance(found, dict) else None
        parked: list[tuple[Channel, tuple[str, ...]]] = []
        for channel_id in ids or ():
            try:
                raw = await self._ari.request(
                    "GET", f"/channels/{channel_id}", channel_id=channel_id
                )
                channel = Channel.from_json(raw)
            except ChannelGone:
                continue
            except MalformedEvent as exc:
                log.error("channel %s: cannot take over: %s", channel_id, exc.message)
                continue
            if channel.app_name != BROADCAST_APP:
                continue  # followed after its verdict, or on its way out
            parked.append((channel, broadcast_args(channel.app_data)))
        parked.sort(key=lambda item: item[0].creationtime)
        return parked

    async def _decide_all(self, channels: list[tuple[Channel, tuple[str, ...]]]) -> None:
        queue = list(reversed(channels))

        async def work() -> None:
            while queue:
                channel, args = queue.pop()
                await self._gate.decide_parked(channel, args)

        await asyncio.gather(*(work() for _ in range(self._config.concurrency)))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()
