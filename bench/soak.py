"""A soak with faults: two `dialguard serve` processes, one PostgreSQL, one (fake) Asterisk.

Steady traffic for ``--minutes`` while faults land on a schedule: each instance's ARI
websocket cut (with a call parked in its Stasis whose StasisStart is lost with the socket,
which only the reconciliation on reconnect can decide), a complaint import of 10,000 rows,
a PostgreSQL restart, a 10 s stall of the database (SIGSTOP of the server and every backend,
then SIGCONT), one instance SIGKILLed at the moment the stall ends (with whatever its spool
holds) and started again, and a blacklist import of 1,000,000 rows. Afterwards it checks the
decisions table against the rules and against what the Asterisk saw, and prints a markdown
report.

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 2 --rate 10 --json soak.json

Set-up. PostgreSQL is a dedicated embedded server in a temporary directory, started by this
process (so the soak may restart and stop it, and signals only its own server). Instance ``a``
runs ``gate.fail_mode = closed``, instance ``b`` ``open`` (so the stall and the restart fill
``b``'s spool). One websocket holds an ARI application, so each instance has its own
application name (``dialguard-a``, ``dialguard-b``) and the Asterisk splits the calls between
them: each call's dialplan enters ``Stasis(dialguard-<shard>)`` and, when no websocket holds
that application, the other one (a fail-over dialplan; only when neither is held does the call
fail closed). Every call still parked in Stasis 5 s after it entered is hung up, as the shipped
dialplan's ``TIMEOUT(absolute)=5`` does: that is the deadline a verdict must beat.

The traffic: fresh destinations from a pool of caller IDs sized so that the caller-ID rate cap
(5 a minute) binds now and then; 5 % of the calls repeat a destination called in the last
minutes (the 4 h interval must deny them, whichever instance decides), and 5 % are twins: the
same destination offered to both instances at the same instant (only one may be allowed).
Carrier outcomes: answered after 0.5–3 s of talk, busy, congestion, or no answer.

The checks, after every call has ended and both instances have written back what they hold:

* answered within the deadline: the verdict (continue or hang-up) reached the Asterisk before
  the 5 s absolute timeout;
* double allows among the decisions the database made (not those allowed unchecked in
  fail-open mode, which are counted apart): two allowed attempts to one destination within
  the 4 h interval, a caller ID over 5/1m or 60/1h, over 10 calls up at once, or a number
  allowed after the import that blacklisted it had finished;
* phantom calls: allowed decisions with no outcome once every call has ended (they would count
  as calls up for ``max_call_duration``); lost outcomes (calls that reached the trunk and whose
  decision has none); lost decisions (calls continued to ``allowed`` with no allowed decision
  in the table: for fail-open calls, a lost spool entry); spool lines never written back;
  channels with two allowed decisions.

Run as root, the embedded server runs as the system user ``dialguard`` (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil  # type: ignore[import-untyped]

from dialguard.store.connection import create_pool
from dialguard.store.embedded import EmbeddedPostgres, temporary_data_dir
from dialguard.store.migrate import migrate
from dialguard.testing import Call, FakeAsterisk, FakeChannel, Outcome
from dialguard.testing.apps import AppRegistry, build_event
from dialguard.testing.pbx import Pbx, PbxConfig

DIALGUARD = str(Path(sys.executable).parent / "dialguard")
APPS = {"a": "dialguard-a", "b": "dialguard-b"}
FAIL_MODES = {"a": "closed", "b": "open"}
ABSOLUTE_TIMEOUT = 5.0  # the shipped dialplan's TIMEOUT(absolute)=5
# The default profile's limits the checks hold the decisions to.
INTERVAL = timedelta(hours=4)
CALLER_CAPS = ((5, timedelta(minutes=1)), (60, timedelta(hours=1)))
MAX_CONCURRENT = 10
SETTLE = 2.0  # seconds after a fault still counted as "during" it
COMPLAINT_ROWS = 10_000
NEVER = datetime(9999, 1, 1, tzinfo=UTC)
BLACKLIST_ROWS = 1_000_000
PROBE_BASE = 7_000_000  # destinations of the calls offered at a websocket cut


def destination(index: int) -> str:
    """The index-th traffic destination: 917-2xx-xxxx to 917-9xx-xxxx, valid NANP numbers."""
    return f"917{2 + (index // 1_000_000) % 8}{index % 1_000_000:06d}"


def e164(national: str) -> str:
    return "+1" + national


def caller(index: int) -> str:
    return f"2125{index:06d}"


# -- what the Asterisk saw ---------------------------------------------------------------------


@dataclass(eq=False)
class CallRecord:
    """One call offered: where it went and when its verdict came back (perf_counter seconds)."""

    seq: int
    shard: str
    number: str
    caller: str
    kind: str  # fresh, repeat or twin
    call: Call | None = None
    app: str | None = None
    channel_id: str | None = None
    offered_at: float | None = None
    verdict_at: float | None = None
    verdict: str | None = None  # allowed, denied
    rule: str | None = None
    decision_id: str | None = None
    timed_out: bool = False
    no_app: bool = False
    ended_at: float | None = None

    @property
    def latency(self) -> float | None:
        if self.offered_at is None or self.verdict_at is None:
            return None
        return self.verdict_at - self.offered_at


@dataclass
class Ledger:
    records: dict[int, CallRecord] = field(default_factory=dict)
    by_channel: dict[str, CallRecord] = field(default_factory=dict)


class SoakPbx(Pbx):
    """The fake's telephony with the soak's dialplan: a Stasis() per shard with fail-over to the
    other application, and the dialplan's absolute timeout while a channel waits in Stasis."""

    def __init__(
        self, config: PbxConfig, apps: AppRegistry, ledger: Ledger, timeout: float
    ) -> None:
        super().__init__(config, apps, keep_calls=False)
        self.ledger = ledger
        self.timeout = timeout

    async def _enter_stasis(self, ch: FakeChannel, args: tuple[str, ...]) -> bool:
        record = self.ledger.records[int(ch.variables["SOAKSEQ"])]
        other = "b" if record.shard == "a" else "a"
        for shard in (record.shard, other):
            app = APPS[shard]
            if self.apps.get(app) is None:
                continue
            ch.set_dialplan(2, "Stasis", ",".join((app, *args)))
            ch.stasis_app = app
            ch.stasis_args = args
            await self.set_var(ch, "STASISSTATUS", "")
            record.app = app
            record.channel_id = ch.id
            self.ledger.by_channel[ch.id] = record
            record.offered_at = time.perf_counter()
            start = build_event("StasisStart", args=list(args), channel=self.snapshot(ch))
            if record.kind != "probe":
                await self.apps.send_to_app(app, start)
            # else its StasisStart is lost with the websocket the soak is about to cut.
            self.spawn(self._absolute_timeout(ch, record))
            return True
        record.no_app = True
        await self.set_var(ch, "STASISSTATUS", "FAILED")
        return False

    async def destroy(self, ch: FakeChannel, cause: int, tech_cause: int | None = None) -> None:
        await super().destroy(ch, cause, tech_cause)
        call = ch.call
        if call is not None and call.ended.is_set() and call.stasis is not None:
            record = self.ledger.by_channel.get(call.stasis.id)
            if record is not None and record.ended_at is None:
                record.ended_at = time.perf_counter()

    async def _absolute_timeout(self, ch: FakeChannel, record: CallRecord) -> None:
        await asyncio.sleep(self.timeout)
        if ch.destroyed or ch.stasis_app is None:
            return  # continued (the dialplan clears the timeout) or gone
        record.timed_out = True
        await self.hangup(ch, 16)


class SoakFake(FakeAsterisk):
    """The fake Asterisk with :class:`SoakPbx`, stamping each channel's verdict as it arrives."""

    def __init__(self, ledger: Ledger, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger = ledger
        self._pbx = SoakPbx(self._pbx.config, self._apps, ledger, ABSOLUTE_TIMEOUT)

    def _record(
        self, method: str, path: str, query: dict[str, str], body: Any, status: int, response: Any
    ) -> None:
        parts = path.split("/")
        if len(parts) >= 3 and parts[1] == "channels":
            record = self.ledger.by_channel.get(parts[2])
            if record is not None:
                self._note(record, method, parts, query, body)
        super()._record(method, path, query, body, status, response)

    @staticmethod
    def _note(
        record: CallRecord, method: str, parts: list[str], query: dict[str, str], body: Any
    ) -> None:
        params = {**query, **(body if isinstance(body, dict) else {})}
        tail = parts[3] if len(parts) > 3 else ""
        if tail == "variable":
            if params.get("variable") == "DIALGUARD_RULE":
                record.rule = str(params.get("value"))
            elif params.get("variable") == "DIALGUARD_DECISION_ID":
                record.decision_id = str(params.get("value"))
            return
        verdict = None
        if tail == "continue":
            verdict = "allowed" if params.get("label") == "allowed" else "denied"
        elif method == "DELETE" and tail == "":
            verdict = "denied"
        if verdict is not None and record.verdict_at is None:
            record.verdict_at = time.perf_counter()
            record.verdict = verdict


# -- the parties ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Instance:
    """One `dialguard serve` process; owns it and its log file. :meth:`stop` ends it."""

    def __init__(self, shard: str, workdir: Path, dsn: str, ari_url: str) -> None:
        self.shard = shard
        self.app = APPS[shard]
        self.fail_mode = FAIL_MODES[shard]
        self.data_dir = workdir / f"instance-{shard}"
        self.data_dir.mkdir()
        self.api = f"http://127.0.0.1:{free_port()}"
        self.metrics = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / f"instance-{shard}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.env = {
            **os.environ,
            "DIALGUARD_DATABASE_URL": dsn,
            "DIALGUARD_DATA_DIR": str(self.data_dir),
            "DIALGUARD_ARI_URL": ari_url,
            "DIALGUARD_ARI_PASSWORD": "dialguard",
            "DIALGUARD_ARI_APP": self.app,
            "DIALGUARD_API_LISTEN": self.api.removeprefix("http://"),
            "DIALGUARD_METRICS_LISTEN": self.metrics.removeprefix("http://"),
            "DIALGUARD_GATE_FAIL_MODE": self.fail_mode,
            # Any hour, and caller IDs drawn from one pool for one campaign.
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
        }

    async def start(self) -> float:
        """Start the process and wait until /readyz; returns the seconds it took."""
        began = time.perf_counter()
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                DIALGUARD,
                "serve",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.starts += 1
        await self.wait_ready()
        return time.perf_counter() - began

    async def wait_ready(self, within: float = 60.0) -> None:
        async with aiohttp.ClientSession() as session, asyncio.timeout(within):
            while True:
                if self.proc is None or self.proc.returncode is not None:
                    raise RuntimeError(f"instance {self.shard} exited; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.api + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int | None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    def spool_lines(self) -> int:
        return spool_lines(self.data_dir)


def spool_lines(data_dir: Path) -> int:
    """Lines in the spool files of a data directory: fail-open decisions and outcomes not yet
    written back."""
    total = 0
    for path in (data_dir / "spool").glob("*.jsonl"):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
            total += sum(1 for _ in handle)
    return total


class Database:
    """The soak's own embedded PostgreSQL: restartable and stoppable, as only its owner may."""

    def __init__(self, workdir: Path) -> None:
        self.server = EmbeddedPostgres(workdir / "pgdata")
        self.dsn = ""

    def start(self) -> str:
        self.dsn = self.server.start()
        return self.dsn

    def stop(self) -> None:
        self.server.stop()

    def processes(self) -> list[psutil.Process]:
        """The postmaster (first) and every process under it."""
        pid = int((self.server.data_dir / "postmaster.pid").read_text().split()[0])
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    async def now(self) -> datetime:
        conn = await asyncpg.connect(self.dsn)
        try:
            value: datetime = await conn.fetchval("SELECT now()")
            return value
        finally:
            await conn.close()


# -- faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    name: str
    start: float  # perf_counter
    end: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def covers(self, t: float) -> bool:
        return self.start <= t <= (self.end or self.start) + SETTLE


class Soak:
    """Owns the run: the database, the fake Asterisk, the instances and the traffic."""

    def __init__(self, options: SoakOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.ledger = Ledger()
        self.rng = random.Random(options.seed)
        self.db = Database(workdir)
        self.fake: SoakFake | None = None
        self.instances: dict[str, Instance] = {}
        self.faults: list[Fault] = []
        self.imports_done: dict[str, datetime] = {}
        self.callers = [caller(i) for i in range(max(20, int(options.rate * 60 / 4)))]
        self.started = 0.0
        self.killed: tuple[str, float] | None = None  # the application and when

    async def fault(self, name: str, action: Callable[[Fault], Awaitable[None]]) -> Fault:
        record = Fault(name, time.perf_counter())
        self.faults.append(record)
        try:
            await action(record)
        except Exception as exc:  # reported, and the run goes on
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = time.perf_counter()
        print(
            f"[{record.start - self.started:6.1f}s] {name}: {record.end - record.start:.1f} s"
            f" {record.detail or ''}{' ' + record.error if record.error else ''}",
            file=sys.stderr,
            flush=True,
        )
        return record

    async def cut_websocket(self, shard: str) -> None:
        fake, app = self.fake, APPS[shard]
        assert fake is not None

        async def act(record: Fault) -> None:
            # A call parked in Stasis as the socket dies, its StasisStart lost with it: only
            # the reconciliation on reconnect can decide it.
            probe = await self.place(destination(PROBE_BASE + len(self.faults)), shard, "probe")
            await fake.drop_websocket(app)
            cut = time.perf_counter()
            await fake.wait_for(lambda: fake.app_connected(app), timeout=30, interval=0.01)
            record.detail["reconnected_s"] = round(time.perf_counter() - cut, 3)
            await self.instances[shard].wait_ready(30)
            record.detail["ready_s"] = round(time.perf_counter() - cut, 3)
            await fake.wait_for(lambda: probe.verdict_at, timeout=ABSOLUTE_TIMEOUT + 1)
            record.detail["parked_call_decided_ms"] = round((probe.latency or 0) * 1000, 1)

        await self.fault(f"websocket cut ({app})", act)

    async def restart_database(self) -> None:
        async def act(record: Fault) -> None:
            await asyncio.to_thread(self.db.stop)
            record.detail["stopped_s"] = round(time.perf_counter() - record.start, 3)
            await asyncio.to_thread(self.db.start)

        await self.fault("PostgreSQL restart", act)

    async def stall_database_then_kill(self, seconds: float) -> None:
        stopped: list[psutil.Process] = []

        async def stall(record: Fault) -> None:
            try:
                for proc in self.db.processes():
                    proc.send_signal(signal.SIGSTOP)
                    stopped.append(proc)
                record.detail["processes"] = len(stopped)
                await asyncio.sleep(seconds)
            finally:
                for proc in reversed(stopped):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.send_signal(signal.SIGCONT)

        await self.fault(f"database stall {seconds:.0f} s (SIGSTOP)", stall)
        victim = self.instances["b"]

        async def kill(record: Fault) -> None:
            await asyncio.sleep(0.2)
            record.detail["spool_lines_at_kill"] = victim.spool_lines()
            self.killed = (victim.app, time.perf_counter())
            await victim.kill()
            record.detail["restart_s"] = round(await victim.start(), 3)

        await self.fault(f"SIGKILL and restart ({victim.app})", kill)

    async def import_file(self, name: str, key: str, argv: Sequence[str]) -> None:
        async def act(record: Fault) -> None:
            proc = await asyncio.create_subprocess_exec(
                DIALGUARD,
                *argv,
                "--json",
                env={**os.environ, "DIALGUARD_DATABASE_URL": self.db.dsn},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await proc.communicate()
            except BaseException:
                if proc.returncode is None:
                    proc.kill()  # the soak is ending: leave no import running behind it
                    await proc.wait()
                raise
            record.detail["exit"] = proc.returncode
            if proc.returncode != 0:
                raise RuntimeError(err.decode(errors="replace").strip()[-500:])
            summary = json.loads(out.decode().strip().splitlines()[-1])
            record.detail["imported"] = summary.get("imported")
            self.imports_done[key] = await self.db.now()

        await self.fault(name, act)

    def write_complaints(self) -> Path:
        """10,000 complaints: destinations later traffic will reach (they become blacklisted),
        laid on caller IDs and a campaign of their own so the traffic's stay active."""
        path = self.workdir / "complaints.csv"
        with path.open("w") as out:
            out.write("destination,source,caller_id,campaign,text\n")
            for i in range(COMPLAINT_ROWS):
                number = e164(destination(16 * i + 6))
                complainer = e164(f"2126{i % 100:06d}")
                out.write(f"{number},carrier,{complainer},soak-complaints,soak\n")
        return path

    def write_blacklist(self) -> Path:
        """1,000,000 numbers: every eighth traffic destination (one in eight later calls is
        blacklisted), the rest beyond the traffic's range."""
        path = self.workdir / "blacklist.csv"
        with path.open("w") as out:
            out.write("number\n")
            out.writelines(
                f"+1{destination(8 * i + 4)}\n" if i < 500_000 else f"+1347{2_000_000 + i}\n"
                for i in range(BLACKLIST_ROWS)
            )
        return path

    async def run_faults(self, seconds: float) -> None:
        start = self.started
        complaints, blacklist = self.write_complaints(), self.write_blacklist()

        async def at(fraction: float) -> None:
            await asyncio.sleep(max(0.0, start + fraction * seconds - time.perf_counter()))

        await at(0.08)
        await self.cut_websocket("a")
        await at(0.14)
        await self.cut_websocket("b")
        await at(0.22)
        importing = asyncio.create_task(
            self.import_file(
                f"complaint import ({COMPLAINT_ROWS:,} rows)",
                "complaint",
                ["complaints", "import", str(complaints)],
            )
        )
        await at(0.36)
        # One fault at a time: the restart would end the import (the CLI gives up on it).
        await importing
        await self.restart_database()
        await at(0.50)
        await self.stall_database_then_kill(self.options.stall_seconds)
        await at(0.66)
        await self.import_file(
            f"blacklist import ({BLACKLIST_ROWS:,} rows)",
            "import",
            ["blacklist", "import", str(blacklist)],
        )

    # -- traffic -------------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        roll = self.rng.random()
        if roll < 0.6:
            return Outcome.answered(self.rng.uniform(0.5, 3.0))
        if roll < 0.75:
            return Outcome.busy()
        if roll < 0.85:
            return Outcome.congestion()
        return Outcome.no_answer(1.0)

    async def place(self, number: str, shard: str, kind: str) -> CallRecord:
        fake = self.fake
        assert fake is not None
        seq = len(self.ledger.records)
        who = self.rng.choice(self.callers)
        record = CallRecord(seq, shard, number, who, kind)
        self.ledger.records[seq] = record
        record.call = await fake.originate_outbound(
            number,
            who,
            variables={"SOAKSEQ": str(seq)},
            outcome=self.outcome(),
        )
        return record

    async def offer(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        rate = self.options.rate
        fresh = 0
        recent: list[str] = []
        tick = 0
        while tick / rate < seconds:
            delay = begin + tick / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tick += 1
            roll = self.rng.random()
            shard = self.rng.choice("ab")
            if roll < 0.05 and recent:
                await self.place(self.rng.choice(recent[-2000:]), shard, "repeat")
                continue
            number = destination(fresh)
            fresh += 1
            recent.append(number)
            if roll < 0.10:
                await self.place(number, "a", "twin")
                await self.place(number, "b", "twin")
            else:
                await self.place(number, shard, "fresh")

    # -- the run -------------------------------------------------------------------------------

    async def prepare(self) -> None:
        dsn = await asyncio.to_thread(self.db.start)
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            await migrate(pool)
            numbers = [e164(c) for c in self.callers] + [e164(f"2126{i:06d}") for i in range(100)]
            await pool.execute("INSERT INTO callerids (number) SELECT unnest($1::text[])", numbers)
            await pool.execute("INSERT INTO campaigns (name) VALUES ('soak-complaints')")
        finally:
            await pool.close()

    async def run(self) -> dict[str, Any]:
        seconds = self.options.minutes * 60
        await self.prepare()
        self.fake = SoakFake(
            self.ledger,
            stasis_args=("${CAMPAIGN}",),
            keep_dial_cause=True,
            verbose_events=False,
            validate_requests=False,
            keep_records=False,
        )
        async with self.fake:
            for shard in ("a", "b"):
                self.instances[shard] = Instance(
                    shard, self.workdir, self.db.dsn, self.fake.base_url
                )
            try:
                await asyncio.gather(*(i.start() for i in self.instances.values()))
                self.started = time.perf_counter()
                faults = asyncio.create_task(self.run_faults(seconds))
                try:
                    await self.offer(seconds)
                    print("traffic done; waiting for the faults to finish", file=sys.stderr)
                    await faults
                finally:
                    faults.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await faults
                ended = await self.settle()
                return await self.report(seconds, ended)
            finally:
                codes = await asyncio.gather(*(i.stop() for i in self.instances.values()))
                print(f"instances stopped: exit codes {codes}", file=sys.stderr)

    async def settle(self) -> bool:
        """Wait for every call to end, then for the instances to write back what they hold."""
        records = list(self.ledger.records.values())
        fake = self.fake
        assert fake is not None
        ended = True
        try:
            await fake.wait_for(
                lambda: all(r.call is None or r.call.ended.is_set() for r in records),
                timeout=90,
                interval=0.2,
            )
        except TimeoutError:
            ended = False
        # Until nothing is left to write back, or nothing has changed for 10 s.
        deadline = time.perf_counter() + 60
        last: tuple[int, int] | None = None
        quiet_since = time.perf_counter()
        while time.perf_counter() < deadline:
            spooled = sum(i.spool_lines() for i in self.instances.values())
            up = await self._fetchval(
                "SELECT count(*) FROM decisions WHERE allowed AND outcome_at IS NULL"
            )
            if spooled == 0 and up == 0:
                break
            if (spooled, up) != last:
                last, quiet_since = (spooled, up), time.perf_counter()
            elif time.perf_counter() - quiet_since > 10:
                break
            await asyncio.sleep(0.5)
        return ended

    async def _fetchval(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.db.dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def report(self, seconds: float, ended: bool) -> dict[str, Any]:
        conn = await asyncpg.connect(self.db.dsn)
        try:
            rows = await conn.fetch(
                "SELECT id, at, caller_id, destination, allowed, rule, source, channel_id,"
                " spool_id, outcome, outcome_at, facts ? 'fail_open' AS fail_open"
                " FROM decisions WHERE source = 'gate'"
            )
            blacklisted = await conn.fetchval(
                "SELECT count(*) FROM decisions d JOIN blacklist_numbers b"
                "  ON b.number = substr(d.destination, 2)::bigint AND b.campaign = ''"
                " WHERE d.allowed AND NOT d.facts ? 'fail_open' AND d.source = 'gate'"
                "   AND d.at > CASE b.source WHEN 'complaint' THEN $1::timestamptz"
                "                            ELSE $2::timestamptz END",
                self.imports_done.get("complaint", NEVER),
                self.imports_done.get("import", NEVER),
            )
        finally:
            await conn.close()
        return build_report(self, [dict(r) for r in rows], int(blacklisted or 0), seconds, ended)


# -- the report ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def double_allows(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Allowed decisions the database made that its own rules should have denied."""
    checked = [r for r in rows if r["allowed"] and not r["fail_open"]]
    found = {"destination_interval": 0, "callerid_rate": 0, "callerid_concurrency": 0}
    by_destination: dict[str, list[datetime]] = defaultdict(list)
    by_caller: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in checked:
        by_destination[r["destination"]].append(r["at"])
        by_caller[r["caller_id"]].append(r)
    for ats in by_destination.values():
        ats.sort()
        found["destination_interval"] += sum(
            1 for a, b in itertools.pairwise(ats) if b - a < INTERVAL
        )
    for calls in by_caller.values():
        calls.sort(key=lambda r: r["at"])
        ats = [r["at"] for r in calls]
        for cap, window in CALLER_CAPS:
            lo = 0
            for hi, at in enumerate(ats):
                while ats[lo] <= at - window:
                    lo += 1
                if hi - lo + 1 > cap:
                    found["callerid_rate"] += 1
        for i, d in enumerate(calls):
            up = sum(1 for e in calls[:i] if e["outcome_at"] is None or e["outcome_at"] > d["at"])
            if up >= MAX_CONCURRENT:
                found["callerid_concurrency"] += 1
    return found


def build_report(
    soak: Soak, rows: list[dict[str, Any]], blacklisted: int, seconds: float, ended: bool
) -> dict[str, Any]:
    records = list(soak.ledger.records.values())
    by_channel: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["channel_id"]:
            by_channel[r["channel_id"]].append(r)
    offered = [r for r in records if r.offered_at is not None or r.no_app]
    in_time = [
        r
        for r in offered
        if not r.timed_out and r.latency is not None and r.latency <= ABSOLUTE_TIMEOUT
    ]
    verdicts: dict[str, int] = defaultdict(int)
    for c in offered:
        if c.verdict == "allowed":
            key = "allowed" if c.decision_id else "allowed in fail-open (spooled)"
        elif c.verdict == "denied":
            key = f"denied: {c.rule or 'no rule'}"
        elif c.no_app:
            key = "no application held (dialplan failed closed)"
        elif c.timed_out:
            key = "no verdict (absolute timeout)"
        else:
            key = "no verdict"
        verdicts[key] += 1

    faults = soak.faults

    def during(r: CallRecord) -> bool:
        return r.offered_at is not None and any(f.covers(r.offered_at) for f in faults)

    latencies_out = [r.latency * 1000 for r in offered if r.latency is not None and not during(r)]
    latencies_in = [r.latency * 1000 for r in offered if r.latency is not None and during(r)]

    allowed_calls = [r for r in offered if r.verdict == "allowed" and r.channel_id]
    lost_decisions = [
        r
        for r in allowed_calls
        if not any(row["allowed"] for row in by_channel.get(r.channel_id or "", []))
    ]
    lost_spooled = [r for r in lost_decisions if not r.decision_id]
    twice = sum(1 for ch_rows in by_channel.values() if sum(x["allowed"] for x in ch_rows) > 1)
    phantoms = [r for r in rows if r["allowed"] and r["outcome_at"] is None]
    reached_trunk = {
        r.channel_id
        for r in allowed_calls
        if r.call is not None and r.call.trunk is not None and r.call.trunk.destroyed
    }
    lost_outcomes = [r for r in phantoms if r["channel_id"] in reached_trunk]
    phantom_causes: dict[str, int] = defaultdict(int)
    for r in phantoms:
        phantom_causes[phantom_cause(r, soak.ledger.by_channel.get(r["channel_id"]), soak)] += 1
    two_allowed = [
        [
            {k: str(v) for k, v in x.items() if k in ("id", "at", "spool_id", "outcome")}
            for x in ch_rows
        ]
        for ch_rows in by_channel.values()
        if sum(x["allowed"] for x in ch_rows) > 1
    ]
    spool_left = {i.app: i.spool_lines() for i in soak.instances.values()}
    doubles = double_allows(rows)
    doubles["blacklisted"] = blacklisted
    fail_open = [r for r in rows if r["allowed"] and r["fail_open"]]
    fault_rows = []
    for f in faults:
        calls = [r for r in offered if r.offered_at is not None and f.covers(r.offered_at)]
        lat = [r.latency * 1000 for r in calls if r.latency is not None]
        mix: dict[str, int] = defaultdict(int)
        for c in calls:
            mix[(c.rule or "") if c.verdict == "denied" else (c.verdict or "none")] += 1
        fault_rows.append(
            {
                "fault": f.name,
                "at_s": round(f.start - soak.started, 1),
                "lasted_s": round(f.end - f.start, 2),
                "detail": f.detail,
                "error": f.error,
                "calls": len(calls),
                "in_time": sum(1 for r in calls if r in in_time),
                "p50_ms": _round(percentile(lat, 0.5)),
                "p99_ms": _round(percentile(lat, 0.99)),
                "max_ms": _round(max(lat) if lat else None),
                "verdicts": dict(sorted(mix.items())),
            }
        )
    late = sorted((r.latency or 0) * 1000 for r in offered if r not in in_time)
    return {
        "minutes": soak.options.minutes,
        "rate": soak.options.rate,
        "seconds": seconds,
        "offered": len(offered),
        "answered_in_time": len(in_time),
        "answered_share": round(len(in_time) / max(len(offered), 1), 6),
        "late_ms": [round(x, 1) for x in late[:20]],
        "verdicts": dict(sorted(verdicts.items())),
        "fail_open_allowed_rows": len(fail_open),
        "double_allows": doubles,
        "phantom_calls": len(phantoms),
        "phantom_causes": dict(sorted(phantom_causes.items())),
        "two_allowed_sample": two_allowed[:10],
        "lost_outcomes": len(lost_outcomes),
        "lost_decisions": len(lost_decisions),
        "lost_spool_entries": len(lost_spooled) + sum(spool_left.values()),
        "spool_lines_left": spool_left,
        "channels_with_two_allowed": twice,
        "all_calls_ended": ended,
        "p50_ms_outside": _round(percentile(latencies_out, 0.5)),
        "p99_ms_outside": _round(percentile(latencies_out, 0.99)),
        "p50_ms_during": _round(percentile(latencies_in, 0.5)),
        "p99_ms_during": _round(percentile(latencies_in, 0.99)),
        "max_ms": _round(max(latencies_out + latencies_in, default=None)),
        "faults": fault_rows,
        "phantom_sample": [phantom_detail(r, soak) for r in phantoms[:20]],
        "lost_decision_sample": [asdict_light(r) for r in lost_decisions[:10]],
    }


def phantom_cause(row: dict[str, Any], record: CallRecord | None, soak: Soak) -> str:
    """Why an allowed decision has no outcome, from what the Asterisk saw of its call."""
    if record is None:
        return "no call seen for its channel"
    if record.verdict == "denied":
        return "committed after the gate gave up; the call was denied"
    if record.verdict == "allowed" and not record.decision_id and not row["fail_open"]:
        return "committed after the gate gave up; the call went out in fail-open"
    ended = record.ended_at
    for fault in soak.faults:
        cut = fault.name == f"websocket cut ({record.app})"
        if cut and ended is not None and fault.start <= ended <= fault.end + 0.5:
            return "the call ended while its instance's websocket was cut"
    killed = soak.killed
    if (
        killed is not None
        and record.app == killed[0]
        and (record.ended_at is None or record.ended_at >= killed[1])
    ):
        return "the call ended after the instance that allowed it was killed"
    if record.verdict == "allowed" and (record.call is None or record.call.trunk is None):
        return "allowed, never reached the trunk"
    return "other"


def phantom_detail(row: dict[str, Any], soak: Soak) -> dict[str, Any]:
    record = soak.ledger.by_channel.get(row["channel_id"])
    detail: dict[str, Any] = {
        k: str(row[k]) for k in ("id", "at", "channel_id", "spool_id", "fail_open")
    }
    detail["cause"] = phantom_cause(row, record, soak)
    if record is not None:
        detail.update(asdict_light(record))
        for key in ("offered_at", "verdict_at", "ended_at"):
            if detail[key] is not None:
                detail[key] = round(detail[key] - soak.started, 3)
    return detail


def asdict_light(r: CallRecord) -> dict[str, Any]:
    """The record's fields but its call (whose channels refer back to it)."""
    return {f.name: getattr(r, f.name) for f in fields(r) if f.name != "call"}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def markdown(report: dict[str, Any]) -> str:
    doubles = report["double_allows"]
    lines = [
        "| measure | result | target |",
        "|---|---:|---:|",
        f"| calls offered ({report['minutes']} min at {report['rate']:g}/s) |"
        f" {report['offered']:,} | |",
        f"| answered within the 5 s deadline | {report['answered_in_time']:,}"
        f" ({100 * report['answered_share']:.2f} %) | 100 % |",
    ]
    for key, count in report["verdicts"].items():
        lines.append(f"| {key} | {count:,} | |")
    lines += [
        f"| double allows (interval · caller-ID caps · concurrency · blacklisted) |"
        f" {sum(doubles.values())} ({doubles['destination_interval']} ·"
        f" {doubles['callerid_rate']} · {doubles['callerid_concurrency']} ·"
        f" {doubles['blacklisted']}) | 0 |",
        f"| allowed unchecked in fail-open (spooled, written back) |"
        f" {report['fail_open_allowed_rows']:,} | |",
        f"| phantom calls (allowed, no outcome, after every call ended) |"
        f" {report['phantom_calls']} | 0 |",
        *(f"| · {cause} | {n} | |" for cause, n in report["phantom_causes"].items()),
        f"| lost outcomes (call reached the trunk, decision has none) |"
        f" {report['lost_outcomes']} | 0 |",
        f"| lost decisions (continued to allowed, no allowed row) |"
        f" {report['lost_decisions']} | 0 |",
        f"| lost spool entries (fail-open calls with no row, lines left) |"
        f" {report['lost_spool_entries']} | 0 |",
        f"| channels with two allowed decisions | {report['channels_with_two_allowed']} | 0 |",
        f"| gate p50 / p99 outside the faults, ms | {report['p50_ms_outside']} /"
        f" {report['p99_ms_outside']} | |",
        f"| gate p50 / p99 during the faults (each + {SETTLE:g} s), ms |"
        f" {report['p50_ms_during']} / {report['p99_ms_during']} | |",
        "",
        "| fault | at s | lasted s | calls during | in time | p50 / p99 / max ms | verdicts |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for f in report["faults"]:
        detail = ", ".join(f"{k} {v}" for k, v in f["detail"].items())
        name = f["fault"] + (f" ({detail})" if detail else "")
        if f["error"]:
            name += f" **error: {f['error']}**"
        mix = ", ".join(f"{k or 'denied, no rule'} {v}" for k, v in f["verdicts"].items())
        lines.append(
            f"| {name} | {f['at_s']} | {f['lasted_s']} | {f['calls']} | {f['in_time']} |"
            f" {f['p50_ms']} / {f['p99_ms']} / {f['max_ms']} | {mix} |"
        )
    return "\n".join(lines)


def failures(report: dict[str, Any]) -> list[str]:
    """The targets missed, one line each (empty when all are met)."""
    missed = []
    if report["answered_in_time"] != report["offered"]:
        missed.append(f"{report['offered'] - report['answered_in_time']} calls answered late")
    if sum(report["double_allows"].values()):
        missed.append(f"double allows: {report['double_allows']}")
    for key in ("phantom_calls", "lost_outcomes", "lost_decisions", "lost_spool_entries"):
        if report[key]:
            missed.append(f"{key}: {report[key]}")
    if report["channels_with_two_allowed"]:
        missed.append(f"channels with two allowed decisions: {report['channels_with_two_allowed']}")
    for f in report["faults"]:
        if f["error"]:
            missed.append(f"fault {f['fault']} failed: {f['error']}")
    return missed


@dataclass(frozen=True)
class SoakOptions:
    minutes: float = 10.0
    rate: float = 20.0
    stall_seconds: float = 10.0
    seed: int = 16
    keep: Path | None = None  # copy the instances' logs here


@contextlib.asynccontextmanager
async def soak_run(options: SoakOptions) -> AsyncIterator[Soak]:
    """A Soak in a fresh directory; the database is stopped and the directory removed after."""
    with temporary_data_dir("dialguard-soak-") as workdir:
        soak = Soak(options, workdir)
        try:
            yield soak
        finally:
            for proc in _stopped(soak):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGCONT)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(soak.db.stop)
            if options.keep is not None:
                options.keep.mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("instance-*.log"):
                    shutil.copy(log, options.keep / log.name)


def _stopped(soak: Soak) -> list[psutil.Process]:
    """The database's processes, if it is running (to be sure none is left stopped)."""
    try:
        return soak.db.processes()
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


async def run_soak(options: SoakOptions) -> dict[str, Any]:
    async with soak_run(options) as soak:
        return await soak.run()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="calls offered per second")
    parser.add_argument("--stall-seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the full report here")
    parser.add_argument("--keep-logs", type=Path, help="copy the instances' logs here")
    args = parser.parse_args()
    options = SoakOptions(args.minutes, args.rate, args.stall_seconds, args.seed, args.keep_logs)
    report = await run_soak(options)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    missed = failures(report)
    for line in missed:
        print(f"MISSED: {line}", file=sys.stderr)
    print(json.dumps({"load_average": os.getloadavg()}), file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    try:
        import uvloop

        sys.exit(uvloop.run(main()))
    except ImportError:
        sys.exit(asyncio.run(main()))
