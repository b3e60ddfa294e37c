"""Broadcast mode's claims, lease loop and takeovers, against fakes of the gate, ARI and the
lease store (the real ones: tests/integration/test_instances.py and test_real_asterisk_*)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dialguard.ari.errors import AriNotFound, AriUnavailable, ChannelGone
from dialguard.ari.events import Channel, Event, OtherEvent
from dialguard.broadcast import Broadcast, BroadcastConfig, broadcast_args, profiles_digest
from dialguard.tasks import TaskSet

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def channel_json(channel_id: str, app_name: str = "StasisBroadcast") -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": f"Local/2122641486@dialguard-broadcast-0000;{channel_id}",
        "state": "Ring",
        "caller": {"number": "2125550100", "name": ""},
        "connected": {"number": "", "name": ""},
        "dialplan": {
            "context": "dialguard-broadcast",
            "exten": "2122641486",
            "priority": 2,
            "app_name": app_name,
            "app_data": "1000,^dialguard-,spring",
        },
        "creationtime": f"2026-12-06T10:00:0{channel_id[-1]}.000+0000",
    }


class FakeGate:
    def __init__(self) -> None:
        self.ready = True
        self.events: list[Event] = []
        self.parked: list[tuple[str, tuple[str, ...]]] = []

    def status(self) -> dict[str, bool]:
        return {"ari_connected": True}

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    async def on_connect(self) -> None:
        return None

    def on_disconnect(self) -> None:
        return None

    async def decide_parked(self, channel: Channel, args: tuple[str, ...]) -> None:
        self.parked.append((channel.id, args))


class FakeAri:
    def __init__(self) -> None:
        self.claims: list[str] = []
        self.answer: bool | Exception = True
        self.apps: dict[str, list[str]] = {}
        self.channels: dict[str, dict[str, Any]] = {}

    async def claim(self, channel_id: str) -> bool:
        self.claims.append(channel_id)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def request(
        self, method: str, path: str, params: Any = None, *, channel_id: str | None = None
    ) -> Any:
        kind, name = path.strip("/").split("/", 1)
        if kind == "applications":
            if name not in self.apps:
                raise AriNotFound("Application not found")
            return {"name": name, "channel_ids": self.apps[name]}
        if name not in self.channels:
            raise ChannelGone("Channel not found", channel_id=channel_id)
        return self.channels[name]


@dataclass
class Row:
    instance_id: str
    app: str
    profiles_hash: str
    alive: bool
    started_at: datetime = NOW
    seen_at: datetime = NOW


@dataclass
class FakeInstances:
    rows: list[Row] = field(default_factory=list)
    lease: int | None = 1
    takeovers: list[str] = field(default_factory=list)
    released: list[tuple[str, bool]] = field(default_factory=list)
    taken_by_another: set[str] = field(default_factory=set)
    running: list[int] = field(default_factory=list)
    reclaims: int = 0
    busy_reclaims: int = 0  # how many times a survivor still holds this instance's takeover

    async def beat(self, instance_id: str, app: str, profiles_hash: str) -> int | None:
        return self.lease

    async def seen(self, grace: float) -> list[Row]:
        return self.rows

    async def take_over(self, instance_id: str, grace: float) -> str | None:
        if instance_id in self.taken_by_another:
            return None
        self.takeovers.append(instance_id)
        return next(r.app for r in self.rows if r.instance_id == instance_id)

    async def taken_over(self, instance_id: str, *, done: bool) -> None:
        self.released.append((instance_id, done))
        if done:
            self.rows = [r for r in self.rows if r.instance_id != instance_id]

    async def reclaim(self, instance_id: str) -> int | None:
        self.reclaims += 1
        return None if self.reclaims <= self.busy_reclaims else 7

    async def release_reclaim(self, lease: int) -> None:
        self.released.append((f"own:{lease}", False))

    async def decisions_running(self, since: datetime | None) -> tuple[int, datetime]:
        return (self.running.pop(0) if self.running else 0), NOW

    async def close(self) -> None:
        return None


class FakeMetrics:
    def __init__(self) -> None:
        self.claims: list[str] = []
        self.alive = 0
        self.mismatch = False
        self.takeovers: list[int] = []
        self.errors: list[str] = []

    def claim(self, result: str) -> None:
        self.claims.append(result)

    def instances_alive(self, count: int) -> None:
        self.alive = count

    def profiles_mismatch(self, mismatch: bool) -> None:
        self.mismatch = mismatch

    def takeover(self, calls: int) -> None:
        self.takeovers.append(calls)

    def background_error(self, task: str) -> None:
        self.errors.append(task)


class Harness:
    def __init__(self, *, digest: str = "same") -> None:
        self.gate = FakeGate()
        self.ari = FakeAri()
        self.instances = FakeInstances(
            rows=[Row("me", "dialguard-me", digest, True)],
        )
        self.metrics = FakeMetrics()
        self.tasks = TaskSet()
        self.digest = digest
        self.broadcast = Broadcast(
            BroadcastConfig(app="dialguard-me", instance_id="me", grace=0.0),
            self.gate,
            self.ari,
            self.instances,
            self.tasks,
            lambda: self.digest,
            self.metrics,
        )

    async def tick(self) -> None:
        await self.broadcast._tick()
        assert await self.tasks.drain(2.0)


def call_broadcast(channel_id: str) -> OtherEvent:
    return OtherEvent(
        type="CallBroadcast",
        raw={"type": "CallBroadcast", "channel": channel_json(channel_id), "called": "x"},
    )


def test_the_stasis_arguments_of_a_parked_broadcast_are_the_first_after_the_filter() -> None:
    assert broadcast_args("1000,^dialguard-,spring") == ("spring",)
    assert broadcast_args("1000,^dialguard-,spring,extra") == ("spring",)
    assert broadcast_args("1000,^dialguard-,") == ()  # an empty campaign: StasisStart args []
    assert broadcast_args("1000,^dialguard-") == ()


def test_the_profiles_digest_depends_on_values_not_on_order() -> None:
    one = profiles_digest({"a": {"x": 1, "y": (2, 3)}, "b": {"x": 1}})
    assert one == profiles_digest({"b": {"x": 1}, "a": {"y": (2, 3), "x": 1}})
    assert one != profiles_digest({"a": {"x": 1, "y": (2, 4)}, "b": {"x": 1}})


async def test_each_broadcast_is_claimed_and_the_answer_counted() -> None:
    h = Harness()
    await h.tick()
    for answer, expected in (
        (True, "won"),
        (False, "lost"),
        (AriNotFound("not in broadcast state"), "late"),
        (AriUnavailable("timeout"), "error"),
    ):
        h.ari.answer = answer
        h.broadcast.on_event(call_broadcast("c1"))
        assert await h.tasks.drain(1.0)
        assert h.metrics.claims[-1] == expected
    assert h.ari.claims == ["c1"] * 4
    assert h.gate.events == []  # the gate never sees a broadcast


async def test_other_events_go_to_the_gate() -> None:
    h = Harness()
    event = OtherEvent(type="ChannelVarset", raw={"type": "ChannelVarset"})
    h.broadcast.on_event(event)
    assert h.gate.events == [event]


async def test_an_instance_whose_profiles_differ_from_the_oldest_claims_nothing() -> None:
    h = Harness(digest="mine")
    h.instances.rows = [
        Row("old", "dialguard-old", "theirs", True),
        Row("me", "dialguard-me", "mine", True),
    ]
    await h.broadcast.on_connect()
    await h.tick()
    assert h.metrics.mismatch and h.metrics.alive == 2
    assert not h.broadcast.ready and h.broadcast.status()["profiles_agree"] is False
    h.broadcast.on_event(call_broadcast("c1"))
    assert await h.tasks.drain(1.0)
    assert h.ari.claims == []
    # Reloaded with the group's profiles: ready and claiming again.
    h.digest = "theirs"
    await h.tick()
    assert not h.metrics.mismatch and h.broadcast.ready
    h.broadcast.on_event(call_broadcast("c2"))
    assert await h.tasks.drain(1.0)
    assert h.ari.claims == ["c2"]


async def test_without_its_lease_an_instance_is_not_ready_and_stops_claiming_after_the_grace() -> (
    None
):
    h = Harness()
    await h.broadcast.on_connect()
    await h.tick()
    assert h.broadcast.ready
    h.instances.lease = None  # another process runs under this instance id
    await h.tick()
    assert not h.broadcast.ready and not h.broadcast.claiming  # grace 0 in this harness


async def test_a_dead_instance_is_taken_over_its_parked_calls_decided_and_it_is_forgotten() -> None:
    h = Harness()
    h.instances.rows.append(Row("dead", "dialguard-dead", "same", False))
    h.ari.apps["dialguard-dead"] = ["c2", "c1", "gone", "c3"]
    h.ari.channels = {
        "c1": channel_json("c1"),
        "c2": channel_json("c2"),
        # Followed after its verdict: on its way to the carrier, not parked.
        "c3": channel_json("c3", app_name="Dial"),
    }
    h.instances.running = [2, 1, 0]  # decisions that started before the takeover still run
    await h.tick()
    assert h.instances.takeovers == ["dead"]
    assert h.gate.parked == [("c1", ("spring",)), ("c2", ("spring",))]  # oldest first
    assert h.instances.released == [("dead", True)]
    assert h.metrics.takeovers == [2]
    assert h.instances.running == []  # it waited until none was left
    await h.tick()
    assert h.instances.takeovers == ["dead"]  # forgotten: not taken over again


async def test_a_dead_instance_another_survivor_holds_is_left_to_it() -> None:
    h = Harness()
    h.instances.rows.append(Row("dead", "dialguard-dead", "same", False))
    h.instances.taken_by_another.add("dead")
    await h.tick()
    assert h.gate.parked == [] and h.instances.released == []


async def test_a_takeover_that_fails_releases_the_lock_and_is_tried_again() -> None:
    h = Harness()
    h.instances.rows.append(Row("dead", "dialguard-dead", "same", False))
    h.ari.apps["dialguard-dead"] = ["c1"]

    async def broken(*args: object, **kwargs: object) -> Any:
        raise AriUnavailable("Asterisk does not answer")

    h.ari.request = broken  # type: ignore[method-assign]
    await h.tick()
    assert h.instances.released == [("dead", False)]
    assert h.metrics.errors == ["instances"]
    del h.ari.request  # the class's own again
    h.ari.channels["c1"] = channel_json("c1")
    await h.tick()
    assert h.instances.released[-1] == ("dead", True)
    assert h.gate.parked == [("c1", ("spring",))]


async def test_an_instance_back_on_ari_decides_what_was_parked_in_its_own_application() -> None:
    h = Harness()
    h.ari.apps["dialguard-me"] = ["c1"]
    h.ari.channels["c1"] = channel_json("c1")
    h.instances.busy_reclaims = 3  # a survivor is taking it over: wait for it
    await h.tick()
    await h.broadcast.on_connect()
    assert await h.tasks.drain(2.0)
    assert h.instances.reclaims == 4
    assert h.gate.parked == [("c1", ("spring",))]
    assert h.instances.released == [("own:7", False)]
    assert h.broadcast.ready


async def test_the_lease_loop_counts_a_failure_and_carries_on() -> None:
    h = Harness()

    async def down(*args: object) -> int | None:
        raise ConnectionError("database down")

    h.instances.beat = down  # type: ignore[method-assign, assignment]
    twice = asyncio.Event()
    count = h.metrics.background_error

    def counted(task: str) -> None:
        count(task)
        if len(h.metrics.errors) >= 2:
            twice.set()

    h.metrics.background_error = counted  # type: ignore[method-assign]
    loop = asyncio.create_task(h.broadcast.run())
    try:
        async with asyncio.timeout(2):
            await twice.wait()
    finally:
        loop.cancel()
    assert h.metrics.errors == ["instances", "instances"]
    assert not h.broadcast.ready
