"""A soak with faults on a real Asterisk: `dialguard serve` gating the shipped [dialguard-out]
dialplan of Asterisk 22 with a sipp carrier, while faults land on a schedule.

    .venv/bin/python bench/soak_real.py --minutes 2 --rate 10 [--json soak-real.json]

Parties: Asterisk and the sipp carrier (dialguard.testing.real_asterisk: as root, in a private
network namespace), one `dialguard serve` (``--fail-mode``: closed by default) that reaches ARI
through a relay this process can cut, a dedicated embedded PostgreSQL this process can stall
and restart, and this process: the dialer (ARI originates of Local/<destination>@dialguard-out)
and the harness's observer application, which records every event on the Asterisk. In fail
mode open the calls the stalls let through unchecked wait in dialguard's spool, and the soak
waits until it is written back.

Traffic: fresh destinations, each carrying what the carrier does with it (answer and talk for
0.2 to 2 s, busy 486, reject 403 or 608, congestion 503), from a pool of caller IDs sized so
that the default caller-ID cap (5 a minute) binds now and then; 5 % of the calls repeat a
destination offered earlier in the run, which the 4 h interval must deny whenever the earlier
one was allowed, and 5 % are twins: two calls to one destination at the same instant, of which
one at most may be allowed.

With ``--instances 2`` (or more) the instances run in broadcast mode and the calls go to
[dialguard-broadcast]: StasisBroadcast offers each to every instance, one claims it, and a call
parked with an instance that died is taken over by another. Cuts and kills land on each
instance in turn.

Faults, in turn, one every ``--fault-every`` seconds:

* ``cut``: the ARI link (websocket and HTTP connections) is frozen, a call is offered, and
  the link is cut while the call waits in Stasis: only the reconciliation after the reconnect
  can decide it;
* ``stall``: the database stops for 3 s (SIGSTOP of the server and every backend);
* ``kill``: dialguard is SIGKILLed with a call waiting in Stasis, and started again;
* ``restart``: the database restarts (fast shutdown, start).

Checks, once every call has ended and dialguard has written back (each must be 0):

* ``late``: calls the dialplan's 5 s absolute timeout ended, or that never left Stasis, other
  than those waiting while dialguard was dead (``kill``: that timeout is the fail-safe);
* ``ungated``: calls that reached the carrier with no allowed decision for their channel;
* ``double_allows``: allowed decisions the rules forbid (bench/soak.py's check);
* ``phantoms``: allowed decisions with no outcome;
* ``spool_left``: spool lines never written back (fail mode open);
* ``wrong_outcomes``: a recorded outcome that contradicts what the carrier did (an outcome
  settled without detail, for a call that ended while dialguard was not listening, is counted
  apart as ``outcomes_without_detail``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.migrate import migrate
from dialguard.testing.polling import wait_ready
from dialguard.testing.real_asterisk import RealAsterisk, TcpRelay, carrier_number
from gate_real import asterisk_home
from soak import Database, double_allows, free_port, percentile, spool_lines

DIALGUARD = str(Path(sys.executable).parent / "dialguard")
# What the carrier does, and how often: (SIP code, share of the calls).
CARRIER = ((200, 0.70), (486, 0.12), (503, 0.08), (403, 0.05), (608, 0.05))
EXPECTED = {200: "answered", 486: "busy", 503: "congestion", 403: "carrier_rejected",
            608: "carrier_rejected"}  # fmt: skip
FAULTS = ("cut", "stall", "kill", "restart")
STALL_SECONDS = 3.0
SETTLE = 2.0  # seconds after a fault still counted as during it
# What the shipped dialplan logs when no dialguard holds or claims the call.
DOWN_LOGS = (
    "WARNING,dialguard-out: dialguard not connected",
    "WARNING,dialguard-broadcast: no dialguard instance claimed",
)
# The dialplan applications a gated call waits for its verdict in.
STASIS_APPS = {"Stasis", "StasisBroadcast"}
PROBES = 8_000  # the numbers of the calls offered into faults: lines from 202-200-0 up


def line(n: int) -> str:
    """The n-th destination's first seven digits (n < 64,000): 201-200-0 on, valid NANP numbers
    of New Jersey and Washington, DC. The carrier's three digits follow."""
    return f"{201 + n // 8000}{200 + (n // 10) % 800}{n % 10}"


@dataclass(eq=False)
class Offered:
    """One call offered to the gate, and what the carrier was asked to do with it."""

    n: int
    stasis_id: str
    destination: str
    caller_id: str
    sip_code: int
    at: float
    repeat: bool = False
    probe: str | None = None  # the fault it was offered into
    twin: bool = False  # offered with another call to the same destination at the same instant


@dataclass
class Fault:
    name: str
    start: float
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def covers(self, t: float) -> bool:
        return self.start - SETTLE <= t <= (self.end or self.start) + SETTLE


class Serve:
    """One `dialguard serve` under test, and the relay it reaches ARI through; owns both, its
    process and its log. With ``broadcast`` it is instance ``name`` of a broadcast group."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        dsn: str,
        asterisk: RealAsterisk,
        fail_mode: str,
        *,
        broadcast: bool,
    ) -> None:
        self.name = name
        self.relay = TcpRelay(asterisk.host, asterisk.port)
        self.api = f"127.0.0.1:{free_port()}"
        self.data_dir = workdir / f"serve-{name}"
        self.log_path = workdir / f"serve-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {
            **os.environ,
            "DIALGUARD_DATABASE_URL": dsn,
            "DIALGUARD_DATA_DIR": str(self.data_dir),
            "DIALGUARD_ARI_URL": "",  # the relay's, once it listens
            "DIALGUARD_ARI_USERNAME": asterisk.username,
            "DIALGUARD_ARI_PASSWORD": asterisk.password,
            "DIALGUARD_API_LISTEN": self.api,
            "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "DIALGUARD_GATE_FAIL_MODE": fail_mode,
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
        }
        if broadcast:
            self.env |= {"DIALGUARD_GATE_MODE": "broadcast", "DIALGUARD_GATE_INSTANCE_ID": name}
        self.data_dir.mkdir()

    def spool_lines(self) -> int:
        return spool_lines(self.data_dir)

    async def start(self) -> float:
        if not self.env["DIALGUARD_ARI_URL"]:
            await self.relay.start()
            self.env["DIALGUARD_ARI_URL"] = self.relay.url()
        began = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                DIALGUARD, "serve", env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=log,
            )  # fmt: skip
        await self.wait_ready(60)
        return time.perf_counter() - began

    async def wait_ready(self, within: float) -> None:
        await wait_ready(f"http://{self.api}", self._why_exited, within)

    async def _why_exited(self) -> str | None:
        if self.proc is None or self.proc.returncode is None:
            return None
        return self.log_path.read_text(errors="replace")

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int | None:
        try:
            if self.proc is None or self.proc.returncode is not None:
                return None if self.proc is None else self.proc.returncode
            self.proc.terminate()
            try:
                return await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                return await self.proc.wait()
        finally:
            await self.relay.close()


class RealSoak:
    """Owns the run: the database, the Asterisk, the relay, dialguard and the traffic."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rng = random.Random(args.seed)
        self.db = Database(workdir)
        self.offered: list[Offered] = []
        self.faults: list[Fault] = []
        self.callers = [f"2125{i:06d}" for i in range(max(10, int(args.rate * 60 / 4)))]
        self.asterisk: RealAsterisk | None = None
        self.serves: list[Serve] = []
        self.broadcast = args.instances > 1
        self.started = 0.0
        self.spool_left = 0

    # -- traffic ------------------------------------------------------------------------------

    async def offer(self, n: int, *, probe: str | None = None) -> Offered:
        assert self.asterisk is not None
        earlier = [o for o in self.offered if not o.repeat]
        repeat = probe is None and bool(earlier) and self.rng.random() < 0.05
        if repeat:
            first = self.rng.choice(earlier)
            destination, code = first.destination, first.sip_code
        else:
            code = self.rng.choices([c for c, _ in CARRIER], [w for _, w in CARRIER])[0]
            hold = self.rng.uniform(0.2, 2.0) if code == 200 else 0.0
            destination = carrier_number(line(n), code, hold=hold)
        caller = self.rng.choice(self.callers)
        context = "dialguard-broadcast" if self.broadcast else "dialguard-out"
        twin = probe is None and not repeat and self.rng.random() < 0.05
        placed = await asyncio.gather(
            *(
                self.asterisk.originate_outbound(
                    destination, caller, ring_seconds=30, context=context
                )
                for _ in range(2 if twin else 1)
            )
        )
        at = time.perf_counter()
        records = [
            Offered(n, call.stasis_id, destination, "+1" + caller, code, at, repeat, probe, twin)
            for call in placed
        ]
        self.offered.extend(records)
        return records[0]

    async def traffic(self, seconds: float) -> None:
        rate, began = self.args.rate, time.perf_counter()
        pending: set[asyncio.Task[Any]] = set()
        n = 0
        while time.perf_counter() - began < seconds:
            await asyncio.sleep(max(0.0, began + n / rate - time.perf_counter()))
            task = asyncio.create_task(self.offer(n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.gather(*pending, return_exceptions=True)

    # -- faults -------------------------------------------------------------------------------

    async def faults_on_schedule(self, seconds: float) -> None:
        every, i = self.args.fault_every, 0
        while time.perf_counter() - self.started + every < seconds:
            await asyncio.sleep(every)
            name = FAULTS[i % len(FAULTS)]
            i += 1
            record = Fault(name, time.perf_counter())
            self.faults.append(record)
            try:
                await getattr(self, f"_{name}")(record)
            except Exception as exc:  # reported, and the run goes on
                record.error = f"{type(exc).__name__}: {exc}"
            record.end = time.perf_counter()
            print(
                f"[{record.start - self.started:6.1f}s] {name}:"
                f" {record.end - record.start:.1f} s {record.detail or ''}"
                f"{' ' + record.error if record.error else ''}",
                file=sys.stderr,
                flush=True,
            )

    async def _probe(self, fault: str) -> Offered:
        """A call offered into a fault, waiting in Stasis when this returns."""
        asterisk = self.asterisk
        assert asterisk is not None
        call = await self.offer(PROBES + len(self.faults), probe=fault)
        await asterisk.events.wait_for(
            lambda: STASIS_APPS & dict(asterisk.events.dialplan_apps(call.stasis_id)).keys(),
            timeout=5,
            interval=0.02,
        )
        return call

    async def _decided(self, probe: Offered, since: float) -> float | None:
        """Seconds from `since` until the probe left Stasis; None if it had not within 10 s."""
        asterisk = self.asterisk
        assert asterisk is not None

        def left() -> bool:
            steps = [app for app, _ in asterisk.events.dialplan_apps(probe.stasis_id)]
            ended = asterisk.events.of("ChannelHangupRequest", probe.stasis_id)
            return bool(ended) or steps[-1] not in STASIS_APPS

        try:
            await asterisk.events.wait_for(left, timeout=10, interval=0.02)
        except TimeoutError:
            return None
        return round(time.perf_counter() - since, 3)

    def _victim(self, fault: str) -> Serve:
        """The instance this cut or kill lands on: each in turn, for each kind of fault."""
        done = sum(1 for f in self.faults if f.name == fault)
        return self.serves[(done - 1) % len(self.serves)]

    async def _cut(self, record: Fault) -> None:
        serve = self._victim("cut")
        serve.relay.freeze()  # the probe's StasisStart never reaches that instance
        probe = await self._probe("cut")
        serve.relay.cut()
        decided = await self._decided(probe, time.perf_counter())
        await serve.wait_ready(30)
        record.detail = {"instance": serve.name, "probe": probe.stasis_id,
                         "probe_decided_s": decided}  # fmt: skip

    async def _stall(self, record: Fault) -> None:
        processes = self.db.processes()
        for p in processes:
            p.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            for p in processes:
                with contextlib.suppress(Exception):
                    p.send_signal(signal.SIGCONT)
        record.detail = {"processes": len(processes)}

    async def _kill(self, record: Fault) -> None:
        serve = self._victim("kill")
        serve.relay.freeze()
        probe = await self._probe("kill")
        await serve.kill()
        killed = time.perf_counter()
        serve.relay.cut()
        restarted = await serve.start()
        record.detail = {
            "instance": serve.name,
            "probe": probe.stasis_id,
            "restart_s": round(restarted, 3),
            "probe_decided_s": await self._decided(probe, killed),
        }

    async def _restart(self, record: Fault) -> None:
        began = time.perf_counter()
        await asyncio.to_thread(self.db.stop)
        await asyncio.to_thread(self.db.start)
        record.detail = {"down_s": round(time.perf_counter() - began, 3)}

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        dsn = await asyncio.to_thread(self.db.start)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            await migrate(pool)
            for c in self.callers:
                await CallerIdStore(pool).add("+1" + c, None)
        finally:
            await pool.close()
        async with RealAsterisk(asterisk_home(), verbose=0) as asterisk:
            if not asterisk.sip:
                raise SystemExit("the real-Asterisk soak needs the SIP stack (root)")
            self.asterisk = asterisk
            names = "abcdefgh"[: self.args.instances] if self.broadcast else "a"
            self.serves = [
                Serve(name, self.workdir, dsn, asterisk, self.args.fail_mode,
                      broadcast=self.broadcast)
                for name in names
            ]  # fmt: skip
            try:
                for serve in self.serves:
                    await serve.start()
                seconds = self.args.minutes * 60
                self.started = time.perf_counter()
                await asyncio.gather(self.traffic(seconds), self.faults_on_schedule(seconds))
                ended = await self.settle()
                took = time.perf_counter() - self.started
                self.spool_left = self.spool_lines()
            finally:
                codes = await asyncio.gather(*(serve.stop() for serve in self.serves))
                print(f"dialguard stopped: exit codes {codes}", file=sys.stderr)
            rows = await self.decisions()
            return self.report(rows, took, ended)

    async def settle(self) -> bool:
        """Wait until every offered call has ended, then until no allowed decision waits for
        its outcome and the spool is written back (or nothing has changed for 10 s)."""
        assert self.asterisk is not None
        ended = True
        try:
            async with asyncio.timeout(90):
                while True:
                    _, listed = await self.asterisk.rest("GET", "/channels")
                    if not [c for c in listed or [] if c["id"].startswith(("gate-", "dialer-"))]:
                        break
                    await asyncio.sleep(0.5)
        except TimeoutError:
            ended = False
        last, quiet_since = (-1, -1), time.perf_counter()
        async with asyncio.timeout(60):
            while True:
                left = (
                    await self._fetchval(
                        "SELECT count(*) FROM decisions WHERE allowed AND outcome_at IS NULL"
                    ),
                    self.spool_lines(),
                )
                if left == (0, 0) or time.perf_counter() - quiet_since > 10:
                    break
                if left != last:
                    last, quiet_since = left, time.perf_counter()
                await asyncio.sleep(0.5)
        return ended

    def spool_lines(self) -> int:
        return sum(serve.spool_lines() for serve in self.serves)

    async def _fetchval(self, query: str) -> Any:
        conn = await asyncpg.connect(self.db.dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    async def decisions(self) -> list[dict[str, Any]]:
        conn = await asyncpg.connect(self.db.dsn)
        try:
            rows = await conn.fetch(
                "SELECT id, at, caller_id, destination, allowed, rule, channel_id, outcome,"
                " outcome_at, cause, sip_code, facts ? 'fail_open' AS fail_open"
                " FROM decisions WHERE source = 'gate'"
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    # -- the report ---------------------------------------------------------------------------

    def report(self, rows: list[dict[str, Any]], seconds: float, ended: bool) -> dict[str, Any]:
        assert self.asterisk is not None
        seen = Seen.of(self.asterisk)
        by_channel: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_channel[str(r["channel_id"])].append(r)
        killed = [f for f in self.faults if f.name == "kill"]
        counts = {"allowed": 0, "denied": 0, "failed_closed": 0, "late_while_dead": 0,
                  "outcomes_without_detail": 0}  # fmt: skip
        failures: dict[str, list[str]] = {
            k: [] for k in ("late", "ungated", "allowed_twice", "phantoms", "wrong_outcomes")
        }
        for o in self.offered:
            c = o.stasis_id
            allowed = [r for r in by_channel.get(c, []) if r["allowed"]]
            if c in seen.timed_out or c not in seen.left:
                dead = o.probe == "kill" or any(f.covers(o.at) for f in killed)
                counts["late_while_dead"] += dead
                if not dead:
                    failures["late"].append(c)
            elif c in seen.failed_closed:
                counts["failed_closed"] += 1
            else:
                counts["allowed" if c in seen.dialled else "denied"] += 1
            if c in seen.dialled and not allowed:
                failures["ungated"].append(c)
            if len(allowed) > 1:
                failures["allowed_twice"].append(c)
            for r in allowed:
                if r["outcome_at"] is None:
                    failures["phantoms"].append(c)
                elif c not in seen.dialled:
                    continue
                elif r["cause"] is None and r["sip_code"] is None and r["outcome"] == "failed":
                    counts["outcomes_without_detail"] += 1
                elif r["outcome"] != EXPECTED[o.sip_code]:
                    failures["wrong_outcomes"].append(
                        f"{c}: carrier {o.sip_code}, recorded {r['outcome']}"
                        f" (cause {r['cause']}, SIP {r['sip_code']})"
                    )
        doubles = double_allows(rows)
        checks = {k: len(v) for k, v in failures.items()}
        checks["double_allows"] = sum(doubles.values())
        checks["calls_left_up"] = 0 if ended else 1
        checks["fault_errors"] = sum(1 for f in self.faults if f.error)
        checks["spool_left"] = self.spool_left
        stasis = [
            seen.stasis_ms[o.stasis_id] for o in self.offered if o.stasis_id in seen.stasis_ms
        ]
        return {
            "seconds": round(seconds, 1),
            "offered": len(self.offered),
            "repeats": sum(o.repeat for o in self.offered),
            "twins": sum(o.twin for o in self.offered) // 2,
            "instances": len(self.serves),
            "decisions": len(rows),
            "fail_mode": self.args.fail_mode,
            "allowed_fail_open": sum(1 for r in rows if r["allowed"] and r["fail_open"]),
            **counts,
            "stasis_p50_ms": _round(percentile(stasis, 0.5)),
            "stasis_p99_ms": _round(percentile(stasis, 0.99)),
            "double_allows": doubles,
            "faults": [fault_summary(f, self.started) for f in self.faults],
            "failures": {k: v[:20] for k, v in failures.items() if v},
            "checks": checks,
        }


def fault_summary(f: Fault, started: float) -> dict[str, Any]:
    return {
        "name": f.name,
        "at_s": round(f.start - started, 1),
        "took_s": round(f.end - f.start, 1),
        **f.detail,
        "error": f.error,
    }


@dataclass
class Seen:
    """What the observer saw of each gated channel."""

    left: set[str] = field(default_factory=set)  # left Stasis (a verdict or a hang-up)
    timed_out: set[str] = field(default_factory=set)  # the 5 s absolute timeout fired
    failed_closed: set[str] = field(default_factory=set)  # Stasis() failed: nobody held the app
    dialled: set[str] = field(default_factory=set)  # dialled the carrier
    stasis_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, asterisk: RealAsterisk) -> Seen:
        seen = cls()
        entered: dict[str, float] = {}
        for e in asterisk.events.all:
            event, channel = e.event, e.channel_id or ""
            if e.type == "Dial" and (event.get("caller") or {}).get("id", "").startswith("gate-"):
                seen.dialled.add(event["caller"]["id"])
            if not channel.startswith("gate-"):
                continue
            if e.type == "ChannelDialplan":
                app, exten = event.get("dialplan_app"), event["channel"]["dialplan"]["exten"]
                if app in STASIS_APPS:
                    entered[channel] = e.received
                else:
                    seen.leaves(channel, entered, e.received)
                if exten == "T":
                    seen.timed_out.add(channel)
                elif str(event.get("dialplan_app_data", "")).startswith(DOWN_LOGS):
                    seen.failed_closed.add(channel)
            elif e.type in ("ChannelHangupRequest", "ChannelDestroyed"):
                seen.leaves(channel, entered, e.received)
        return seen

    def leaves(self, channel: str, entered: dict[str, float], at: float) -> None:
        if channel in entered and channel not in self.left:
            self.left.add(channel)
            self.stasis_ms[channel] = (at - entered[channel]) * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['instances']} instance(s). Offered {report['offered']} calls in"
        f" {report['seconds']} s ({report['repeats']} repeats, {report['twins']} pairs of"
        f" twins): {report['allowed']} allowed and dialled, {report['denied']} denied,"
        f" {report['failed_closed']} failed closed, {report['late_while_dead']} ended by the"
        " 5 s timeout while dialguard was dead.",
        f"Fail mode {report['fail_mode']}: {report['allowed_fail_open']} allowed unchecked"
        f" (fail-open, written back). In Stasis p50 {report['stasis_p50_ms']} ms,"
        f" p99 {report['stasis_p99_ms']} ms;"
        f" outcomes without detail: {report['outcomes_without_detail']}.",
        "",
        "| check | count |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in report["checks"].items()),
        "",
        "| fault | at s | took s | detail |",
        "|---|---:|---:|---|",
        *(
            f"| {f['name']} | {f['at_s']} | {f['took_s']} |"
            f" { ({k: v for k, v in f.items() if k not in ('name', 'at_s', 'took_s')}) } |"
            for f in report["faults"]
        ),
    ]
    return "\n".join(lines)


async def soak_real(args: argparse.Namespace) -> dict[str, Any]:
    """One run, in a temporary folder removed after it; the report."""
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-soak-real-"))
    os.chmod(workdir, 0o711)  # the embedded server runs as its own user when we are root
    soak = RealSoak(args, workdir)
    try:
        return await soak.run()
    finally:
        with contextlib.suppress(Exception):
            soak.db.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=10.0, help="calls offered a second")
    parser.add_argument("--fault-every", type=float, default=15.0, help="seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        choices=range(1, 9),
        help="dialguard instances: 2 or more run in broadcast mode ([dialguard-broadcast]),"
        " and cuts and kills land on each in turn",
    )
    parser.add_argument(
        "--fail-mode",
        choices=["closed", "open"],
        default="closed",
        help="dialguard's gate.fail_mode: open lets calls through unchecked (spooled) while"
        " the database is away",
    )
    parser.add_argument("--json", type=Path, help="write the report here too")
    return parser.parse_args(argv)


async def main() -> int:
    args = options()
    report = await soak_real(args)
    print(markdown(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 1 if any(report["checks"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
