"""`dialguard demo`: the whole product in one command, with no Asterisk and no database to set up.

It starts an embedded PostgreSQL in a fresh temporary directory, the fake Asterisk, dialguard
itself (the same :class:`~dialguard.app.Service` that `serve` runs), and a simulated dialer whose
traffic makes every rule fire: repeat calls, blacklisted numbers, night-time destinations, an
unregistered and a rested caller ID, a paused campaign, tight campaign profiles, a caller ID the
carrier starts rejecting, and a short database stall that the gate answers fail-closed (announced
before it starts, so its WARNING line is expected). Per-caller-ID metrics are on, for the handful
of caller IDs it uses, so every panel of the Grafana dashboard has data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dialguard.app import Service, open_stores
from dialguard.config import Settings
from dialguard.policy.codes import Rule
from dialguard.policy.feedback import ComplaintRequest
from dialguard.policy.model import LogQuery
from dialguard.store.decisions import list_decisions
from dialguard.store.embedded import temporary_data_dir
from dialguard.testing import FakeAsterisk, Outcome

# Callers are national US numbers, as a US PBX sends them.
CALLERS = [f"212555{n:04d}" for n in range(100, 116)]
HAMMER = [f"212555{n:04d}" for n in range(200, 203)]  # dedicated to the "tight" campaign
ROTATORS = [f"212555{n:04d}" for n in range(203, 206)]  # three numbers for one destination
TALKER = "2125550210"
PACER = "2125550212"  # makes calls faster than its campaign allows
LONG_CALLS = "2125550211"
NIGHT = "2125550220"
UNREGISTERED = "2125550999"
RESTED = "2125550998"
REJECTED = "2125550997"  # the carrier starts refusing this caller ID's calls
# At any instant at least one of these zones is outside 08:00-21:00 local time.
NIGHT_OWLS = [
    "011442079460123",  # London
    "0118131234567{}",  # Tokyo
    "011649303123{}",  # Auckland
    "213264{:04d}",  # Los Angeles
    "808555{:04d}",  # Honolulu
]


@dataclass
class Scenario:
    name: str
    weight: float
    place: Callable[[int], tuple[str, str, str, Outcome | None]]
    """(destination exten, caller number, campaign, carrier outcome) for call i."""


def _fresh(prefix: str) -> Callable[[int], str]:
    counter = itertools.count(1000)
    return lambda _: f"{prefix}{next(counter) % 10000:04d}"


def _cycle(items: list[str]) -> Callable[[], str]:
    """Each item in turn, on a counter of the scenario's own."""
    counter = itertools.count()
    return lambda: items[next(counter) % len(items)]


def scenarios(rng: random.Random) -> list[Scenario]:
    fresh = _fresh("917264")
    rotating = _cycle(ROTATORS)
    repeat_pool = [f"6462641{n:03d}" for n in range(20)]
    return [
        Scenario("fresh", 6, lambda i: (fresh(i), rng.choice(CALLERS), "spring", None)),
        Scenario(
            "repeat", 2, lambda i: (rng.choice(repeat_pool), rng.choice(CALLERS), "spring", None)
        ),
        Scenario("blacklisted", 0.6, lambda i: ("7182641234", CALLERS[0], "spring", None)),
        Scenario("invalid", 0.3, lambda i: ("12345", CALLERS[1], "spring", None)),
        Scenario("unregistered", 0.3, lambda i: (fresh(i), UNREGISTERED, "spring", None)),
        Scenario("rested", 0.3, lambda i: (fresh(i), RESTED, "spring", None)),
        Scenario("paused", 0.3, lambda i: (fresh(i), CALLERS[2], "winter", None)),
        Scenario(
            "night",
            0.8,
            lambda i: (
                rng.choice(NIGHT_OWLS).format(rng.randrange(10000)),
                CALLERS[3],
                "world",
                None,
            ),
        ),
        # Campaign "tight" has no interval, so caps, cooldown, rotation and rates show.
        Scenario(
            "hammer",
            1.5,
            lambda i: ("3472640001", HAMMER[i % len(HAMMER)], "tight", Outcome.answered(0.05)),
        ),
        # Three caller IDs in turn for one destination: the third is one too many.
        Scenario("parade", 0.4, lambda i: ("3472640003", rotating(), "tight", None)),
        Scenario(
            "conversation",
            0.5,
            lambda i: ("3472640002", CALLERS[7], "tight", Outcome.answered(2.5)),
        ),
        Scenario("rotate", 1, lambda i: (fresh(i), rng.choice(CALLERS), "rotate", None)),
        Scenario(
            "long-calls",
            0.8,
            lambda i: (fresh(i), LONG_CALLS, "tight", Outcome.answered(6.0)),
        ),
        Scenario("carrier-reject", 1.2, lambda i: (fresh(i), REJECTED, "spring", Outcome.sip(603))),
    ]


Call = tuple[str, str, str, Outcome | None]


def tour() -> list[Call]:
    """An opening sequence in which every rule denies at least once, whatever the timing."""
    calls: list[Call] = [
        # A conversation (campaign "tight" counts 2 s and more), for destination_cooldown.
        ("3472640002", TALKER, "tight", Outcome.answered(2.5)),
        ("9172640001", CALLERS[0], "spring", None),
        ("12345", CALLERS[1], "spring", None),  # invalid_number
        ("9172640002", UNREGISTERED, "spring", None),  # callerid_unknown
        ("9172640003", RESTED, "spring", None),  # callerid_rested
        ("9172640004", CALLERS[2], "winter", None),  # campaign_paused
        ("7182641234", CALLERS[0], "spring", None),  # blacklisted
        ("6462641000", CALLERS[3], "spring", None),
        ("6462641000", CALLERS[3], "spring", None),  # destination_interval
    ]
    # calling_hours: at any moment it is night in at least one of these zones.
    calls += [(z.format(i), NIGHT, "world", None) for i, z in enumerate(NIGHT_OWLS)]
    # destination_cap: "tight" has no interval and allows 3 calls a minute to one number.
    calls += [("3472640001", HAMMER[i % 2], "tight", Outcome.answered(0.05)) for i in range(4)]
    # callerid_rotation: one destination, a third caller ID.
    calls += [("3472640003", ROTATORS[i], "tight", None) for i in range(3)]
    # campaign_rotation: "rotate" may use 3 caller IDs a day.
    calls += [(f"91726410{i:02d}", CALLERS[4 + i], "rotate", None) for i in range(4)]
    # callerid_rate: "pace" allows 3 calls a minute from one caller ID.
    calls += [(f"91726420{i:02d}", PACER, "pace", None) for i in range(4)]
    # callerid_concurrency: "tight" allows 2 calls up at once from one caller ID.
    calls += [(f"91726430{i:02d}", LONG_CALLS, "tight", Outcome.answered(6.0)) for i in range(3)]
    # destination_cooldown: the conversation above has ended by now.
    calls += [("3472640002", TALKER, "tight", None)]
    return calls


async def _seed(service: Service) -> None:
    stores = service.stores
    for number in [
        *CALLERS,
        *HAMMER,
        *ROTATORS,
        TALKER,
        PACER,
        LONG_CALLS,
        NIGHT,
        RESTED,
        REJECTED,
    ]:
        await stores.callerids.add("+1" + number, None)
    await stores.callerids.set_state("+1" + RESTED, "rested", "manual")
    await stores.blacklist.add_number(
        "+17182641234", source="complaint", reason="asked not to call"
    )
    await stores.blacklist.add_prefix("+1900", reason="premium-rate numbers")
    await stores.campaigns.set(
        "spring", "default", {"calling_hours": "00:00-24:00", "callerid_caps": "20/1m,600/1h"}
    )
    await stores.campaigns.set("winter", "default", {})
    await stores.campaigns.set_paused("winter", True, "script under review")
    await stores.campaigns.set("world", "default", {})
    await stores.campaigns.set(
        "tight",
        "default",
        {
            "calling_hours": "00:00-24:00",
            "destination_min_interval": "off",
            "destination_caps": "3/1m",
            "conversation_min_seconds": "2",
            "conversation_cooldown": "1h",
            "callerid_caps": "4/1m",
            "callerid_max_concurrent": "2",
        },
    )
    await stores.campaigns.set(
        "pace",
        "default",
        {"calling_hours": "00:00-24:00", "callerid_caps": "3/1m", "callerid_max_concurrent": "off"},
    )
    await stores.campaigns.set(
        "rotate",
        "default",
        {
            "calling_hours": "00:00-24:00",
            "campaign_callerids_per_day": "3",
            "callerid_caps": "20/1m,600/1h",
        },
    )


def _rule_counts(service: Service) -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in service.registry.collect():
        if metric.name != "dialguard_decisions":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                rule = sample.labels["rule"]
                counts[rule] = counts.get(rule, 0.0) + sample.value
    return counts


async def _stall_database(service: Service, seconds: float) -> None:
    """Hold a lock every decision needs for longer than the decision deadline."""
    async with service.stores.pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE decisions IN ACCESS EXCLUSIVE MODE")
        await asyncio.sleep(seconds)


def _summary(counts: dict[str, float], elapsed: float) -> str:
    allowed = int(counts.get("none", 0))
    denied = {k: int(v) for k, v in counts.items() if k != "none" and v}
    parts = ", ".join(f"{k} {v}" for k, v in sorted(denied.items(), key=lambda kv: -kv[1]))
    return f"[{elapsed:5.1f}s] allowed {allowed}, denied {sum(denied.values())}: {parts}"


async def run_demo(settings: Settings, *, duration: float | None, rate: float) -> int:
    rng = random.Random(7)
    with temporary_data_dir(prefix="dialguard-demo-") as workdir:
        async with FakeAsterisk(
            settings.ari.username,
            settings.ari.password or "dialguard",
            stasis_args=("${CAMPAIGN}",),
            keep_dial_cause=True,
            verbose_events=False,
        ) as fake:
            demo_settings = _demo_settings(settings, workdir, fake.base_url)
            async with open_stores(demo_settings, schema="migrate") as stores:
                service = Service(demo_settings, stores, drain_timeout=5.0)
                await _seed(service)
                await service.start()
                try:
                    return await _drive(service, fake, rng, duration, rate)
                finally:
                    await service.stop()


async def _place(
    fake: FakeAsterisk, number: str, caller: str, campaign: str, outcome: Outcome | None
) -> None:
    if outcome is not None:
        fake.set_outcome(number, outcome)
    await fake.originate_outbound(number, caller, variables={"CAMPAIGN": campaign})


async def _conversation_recorded(service: Service) -> bool:
    """True once the opening conversation's outcome is in the database."""
    rows = await list_decisions(service.stores.pool, LogQuery(destination="+13472640002"))
    return any((row["answered_seconds"] or 0) >= 2 for row in rows)


def _demo_settings(settings: Settings, workdir: Path, ari_url: str) -> Settings:
    return replace(
        settings,
        database=replace(settings.database, url=None, data_dir=workdir),
        ari=replace(settings.ari, url=ari_url, password=settings.ari.password or "dialguard"),
        gate=replace(settings.gate, spool_dir=workdir / "spool", fail_mode="closed"),
        # A handful of caller IDs: their own series are few, and the dashboard's per-caller-ID
        # panels have data.
        metrics=replace(settings.metrics, per_callerid=True),
        # A short judging window, so that a demo minute shows a caller ID rested for carrier
        # blocks; production judges over the last 50 completed calls.
        feedback=replace(settings.feedback, carrier_block_window=8),
    )


async def _drive(
    service: Service, fake: FakeAsterisk, rng: random.Random, duration: float | None, rate: float
) -> int:
    await fake.wait_for(lambda: service.gate.ready, timeout=10.0)
    api, metrics = service.settings.api.listen, service.settings.metrics.listen
    print(
        f"dialguard demo: admin API http://{api[0]}:{api[1]}, "
        f"metrics http://{metrics[0]}:{metrics[1]}/metrics; Ctrl-C stops",
        flush=True,
    )
    plan = scenarios(rng)
    weights = [s.weight for s in plan]
    started = time.monotonic()
    next_report = started + 2.0
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    background: set[asyncio.Task[Any]] = set()
    opening = tour()
    for number, caller, campaign, outcome in opening[:-1]:
        await _place(fake, number, caller, campaign, outcome)
        await asyncio.sleep(1.0 / rate)
    # store_unavailable: the database stalls longer than the decision deadline.
    print(
        "dialguard demo: stalling the database for 1.2 s on purpose: the next call is denied "
        "store_unavailable (fail-closed) and a WARNING says the database could not be reached",
        flush=True,
    )
    stall = asyncio.create_task(_stall_database(service, 1.2))
    await asyncio.sleep(0.2)
    await _place(fake, "9172649001", CALLERS[9], "spring", None)
    await stall
    for _ in range(150):  # its outcome is in the database within a few seconds
        if await _conversation_recorded(service):
            break
        await asyncio.sleep(0.1)
    await _place(fake, *opening[-1])
    complaint_sources = itertools.cycle(["carrier", "12321", "crm", "regulator"])
    next_complaint = time.monotonic() + 1.5
    for i in itertools.count():
        now = time.monotonic()
        elapsed = now - started
        if stop.is_set() or (duration is not None and elapsed >= duration):
            break
        scenario = rng.choices(plan, weights)[0]
        number, caller, campaign, outcome = scenario.place(i)
        await _place(fake, number, caller, campaign, outcome)
        if now >= next_complaint and scenario.name == "fresh":
            # Someone called a moment ago complains: the number is blacklisted and the
            # complaint counts against the caller ID and the campaign.
            await service.feedback.complain(
                ComplaintRequest(
                    destination=number,
                    source=next(complaint_sources),
                    caller_id=caller,
                    campaign=campaign,
                    text="asked not to be called again",
                )
            )
            next_complaint = now + 1.5
        if now >= next_report:
            print(_summary(_rule_counts(service), elapsed), flush=True)
            next_report = now + 2.0
        await asyncio.sleep(1.0 / rate)
    await asyncio.gather(*background, return_exceptions=True)
    await asyncio.sleep(1.0)
    counts = _rule_counts(service)
    print(_summary(counts, time.monotonic() - started), flush=True)
    missing = [r.value for r in Rule if not counts.get(r.value)]
    if duration is None:
        return 0
    if missing:
        print(f"dialguard demo: rules that never fired: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"every rule fired: {len(list(Rule))} of {len(list(Rule))}", flush=True)
    return 0
