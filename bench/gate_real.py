"""`bench/gate.py --asterisk real`: the gate on a real Asterisk, beside a no-op ARI application.

Parties: Asterisk and the sipp carrier (in a private network namespace as root, see
dialguard.testing.real_asterisk), the application holding `dialguard` in a process of its own
(`dialguard serve`, or the no-op application of bench/noop_ari.py), PostgreSQL (embedded and
fresh, or `--dsn`), and this process: the load generator (ARI originates of
Local/<destination>@dialguard-out) and the observer that times each channel in Stasis.

Latency of one call: from the observer's receipt of the ChannelDialplan event of the channel
entering Stasis() to the receipt of its next ChannelDialplan event (the `allowed` label) or its
ChannelHangupRequest. Both events travel the same way to the observer, so its own delay cancels
out; Asterisk's own timestamps of the same two events (millisecond resolution) are reported
beside, as a check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil  # type: ignore[import-untyped]

from common import machine_cpu
from dialguard.ari.client import AriClient
from dialguard.ari.errors import AriError
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.embedded import EmbeddedPostgres
from dialguard.store.migrate import migrate
from dialguard.testing.real_asterisk import RealAsterisk, asterisk_home_from_env, carrier_number
from gate import bucket_quantile, decision_buckets, labelled

DIALGUARD = str(Path(sys.executable).parent / "dialguard")
NOOP_APP = str(Path(__file__).resolve().parent / "noop_ari.py")
CALLERS = [f"2125{n:06d}" for n in range(1000, 1200)]
OBSERVER = "bench-observer"
PARKING = "bench-park"
GATED_PREFIX = "gate-"

# Unrelated PBX traffic for --background: each channel sets a variable and steps through the
# dialplan about once a second, forever, as agents' and IVR channels do.
BACKGROUND_DIALPLAN = """
[bench-background]
exten => s,1,Answer()
 same => n(loop),Set(STEP=$[${STEP} + 1])
 same => n,Set(NOTE=step ${STEP} of ${CHANNEL})
 same => n,Wait(1)
 same => n,Goto(loop)

; --background-calls: unrelated calls that start and end, as a PBX's inbound and internal calls
; do. Each dials a second Local pair, which answers and hangs up after half a second.
[bench-calls]
exten => s,1,Dial(Local/a@bench-calls,5)
 same => n,Hangup()
exten => a,1,Answer()
 same => n,Wait(0.5)
 same => n,Hangup()
exten => w,1,Wait(2)
 same => n,Hangup()
"""


def destination(n: int) -> str:
    """The n-th fresh destination: valid NANP numbers the carrier answers and ends at once."""
    area = 201 + n // 8000
    exchange = 200 + (n // 10) % 800
    return carrier_number(f"{area}{exchange}{n % 10}", 200)


# -- timing ----------------------------------------------------------------------------------


@dataclass
class StasisTimer:
    """When each gated channel entered Stasis and left it, by the observer's clock and by
    Asterisk's (event timestamps)."""

    entered: dict[str, float] = field(default_factory=dict)
    left: dict[str, float] = field(default_factory=dict)
    entered_at: dict[str, str] = field(default_factory=dict)
    left_at: dict[str, str] = field(default_factory=dict)
    hung_up: set[str] = field(default_factory=set)

    def feed(self, text: str) -> None:
        # Most events are of no interest: look before decoding.
        if "ChannelDialplan" not in text and "ChannelHangupRequest" not in text:
            return
        now = time.perf_counter()
        event = orjson.loads(text)
        kind = event.get("type")
        if kind not in ("ChannelDialplan", "ChannelHangupRequest"):
            return
        channel = event["channel"]["id"]
        if not channel.startswith(GATED_PREFIX):
            return
        if kind == "ChannelDialplan" and event.get("dialplan_app") == "Stasis":
            self.entered[channel] = now
            self.entered_at[channel] = event["timestamp"]
        elif channel in self.entered and channel not in self.left:
            self.left[channel] = now
            self.left_at[channel] = event["timestamp"]
            if kind == "ChannelHangupRequest":
                self.hung_up.add(channel)

    def latencies(self, channels: list[str]) -> tuple[list[float], list[float]]:
        """Milliseconds in Stasis by the observer's clock, and by Asterisk's."""
        observed, stamped = [], []
        for c in channels:
            if c in self.entered and c in self.left:
                observed.append((self.left[c] - self.entered[c]) * 1000)
                stamped.append((_ts(self.left_at[c]) - _ts(self.entered_at[c])) * 1000)
        return sorted(observed), sorted(stamped)


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[max(int(len(values) * q + 0.5) - 1, 0)], 2)


# -- CPU -------------------------------------------------------------------------------------


class Parties:
    """CPU seconds (user + system) of each party, read before and after a phase."""

    def __init__(self, asterisk: RealAsterisk, postmaster: int | None) -> None:
        self.processes: dict[str, psutil.Process] = {
            "bench": psutil.Process(),
            "asterisk": psutil.Process(asterisk.asterisk_pid),
        }
        if asterisk.sipp_pid is not None:
            self.processes["sipp"] = psutil.Process(asterisk.sipp_pid)
        self.postmaster = psutil.Process(postmaster) if postmaster else None
        self.app: psutil.Process | None = None  # the process holding `dialguard` in a phase

    def sample(self) -> dict[str, float]:
        seconds = {name: _cpu(p) for name, p in self.processes.items()}
        if self.app is not None:
            seconds["app"] = _cpu(self.app)
        if self.postmaster is not None:
            family = [self.postmaster, *self.postmaster.children(recursive=True)]
            seconds["postgres"] = sum(_cpu(p) for p in family)
        machine = machine_cpu()
        seconds["machine_all"] = machine.total
        seconds["machine_busy"] = machine.busy - machine.stolen
        seconds["machine_steal"] = machine.stolen
        return seconds


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
        # Exited children (the postmaster's short-lived workers) count where they belong.
        return float(times.user + times.system + times.children_user + times.children_system)
    except psutil.NoSuchProcess:
        return 0.0


def cpu_per_call(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, Any]:
    spent = {name: after[name] - before.get(name, after[name]) for name in after}
    total = max(spent["machine_all"], 1e-9)
    parties = [n for n in spent if not n.startswith("machine_")]
    return {
        "cpu_ms_per_call": {n: round(spent[n] * 1000 / max(calls, 1), 3) for n in parties},
        "machine_busy_pct": round(100 * spent["machine_busy"] / total, 1),
        "steal_pct": round(100 * spent["machine_steal"] / total, 1),
    }


def marginal(
    before: dict[str, float],
    after: dict[str, float],
    idle_before: dict[str, float],
    idle_after: dict[str, float],
    scale: float,
    calls: int,
) -> dict[str, float]:
    """CPU per call beyond what each party spends idle over the same time."""
    result = {}
    for name in after:
        if name.startswith("machine_") or name not in idle_after or name not in before:
            continue
        idle = (idle_after[name] - idle_before.get(name, idle_after[name])) * scale
        result[name] = round((after[name] - before[name] - idle) * 1000 / max(calls, 1), 3)
    return result


# -- the parties this process plays ---------------------------------------------------------


async def websocket_reader(
    session: aiohttp.ClientSession,
    asterisk: RealAsterisk,
    app: str,
    on_text: Callable[[str], None],
    *,
    subscribe_all: bool,
    connected: asyncio.Event,
) -> None:
    url = f"{asterisk.base_url}/events"
    params = {"app": app, "subscribeAll": "true" if subscribe_all else "false"}
    async with session.ws_connect(url, params=params, max_msg_size=0) as ws:
        connected.set()
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                on_text(message.data)


@contextlib.asynccontextmanager
async def reading(
    session: aiohttp.ClientSession,
    asterisk: RealAsterisk,
    app: str,
    on_text: Callable[[str], None],
    *,
    subscribe_all: bool = False,
) -> Any:
    """A websocket holding `app` while the block runs."""
    connected = asyncio.Event()
    task = asyncio.create_task(
        websocket_reader(
            session, asterisk, app, on_text, subscribe_all=subscribe_all, connected=connected
        )
    )
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await wait_application(asterisk, app)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_application(asterisk: RealAsterisk, app: str) -> None:
    """Until Asterisk knows the application (it announces nothing when a socket connects)."""
    async with asyncio.timeout(10):
        while True:
            status, _ = await asterisk.rest("GET", f"/applications/{app}")
            if status == 200:
                return
            await asyncio.sleep(0.02)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    asterisk: RealAsterisk
    client: AriClient
    timer: StasisTimer
    parties: Parties
    dsn: str
    workdir: Path
    sequence: Iterator[int]
    results: list[dict[str, Any]] = field(default_factory=list)
    metrics_url: str | None = None  # dialguard's, while it runs

    async def offer(self, rate: float, seconds: float) -> tuple[list[str], int]:
        """Originate calls at `rate` for `seconds`; the gated channels' ids and how many
        originates were sent late (the generator fell behind by more than 50 ms)."""
        count = max(int(rate * seconds), 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = 0
        channels: list[str] = []
        pending: set[asyncio.Task[Any]] = set()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1
            n = next(self.sequence)
            channel = f"{GATED_PREFIX}{n}"
            channels.append(channel)
            task = asyncio.create_task(
                self.client.originate(
                    f"Local/{destination(n)}@dialguard-out",
                    app=OBSERVER,
                    caller_id=f'"Bench" <{CALLERS[n % len(CALLERS)]}>',
                    dial_timeout=30,
                    channel_id=f"dialer-{n}",
                    other_channel_id=channel,
                )
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending, return_exceptions=True)
        return channels, late

    async def phase(self, app: str, rate: float) -> dict[str, Any]:
        seconds = self.args.seconds
        # Warm-up, not reported: the first calls load number metadata, prepare statements.
        warm, _ = await self.offer(min(rate, 50), 1.0)
        await self.settle(warm)
        # What each party spends with no calls (timers, housekeeping, qualify pings), so that
        # the marginal CPU of a call can be told from the idle cost.
        idle_before, idle_started = self.parties.sample(), time.perf_counter()
        await asyncio.sleep(self.args.idle_seconds)
        idle_after, idle_for = self.parties.sample(), time.perf_counter() - idle_started
        decisions_before = await decision_buckets(self.metrics_url) if self.metrics_url else {}
        events_before = await self.events_received()
        before, started = self.parties.sample(), time.perf_counter()
        channels, late = await self.offer(rate, seconds)
        await self.settle(channels)
        after, took = self.parties.sample(), time.perf_counter() - started
        decisions_after = await decision_buckets(self.metrics_url) if self.metrics_url else {}
        events_after = await self.events_received()
        observed, stamped = self.timer.latencies(channels)
        result = {
            "app": app,
            "offered_per_s": rate,
            "calls": len(channels),
            "timed": len(observed),
            "hung_up": len(self.timer.hung_up.intersection(channels)),
            "p50_ms": percentile(observed, 0.5),
            "p99_ms": percentile(observed, 0.99),
            "max_ms": round(observed[-1], 2) if observed else None,
            "asterisk_clock_p50_ms": percentile(stamped, 0.5),
            "asterisk_clock_p99_ms": percentile(stamped, 0.99),
            "generator_late": late,
            **cpu_per_call(before, after, len(channels)),
            "marginal_cpu_ms_per_call": marginal(
                before, after, idle_before, idle_after, took / idle_for, len(channels)
            ),
        }
        if events_after:
            # What reached dialguard's websocket per call, by type, beside anything between.
            per_call = {
                kind: round((n - events_before.get(kind, 0.0)) / max(len(channels), 1), 2)
                for kind, n in sorted(events_after.items())
                if n > events_before.get(kind, 0.0)
            }
            result["events_per_call"] = round(sum(per_call.values()), 2)
            result["events_per_call_by_type"] = per_call
        if decisions_after:
            # The decision's own share (dialguard's histogram: the bound of its bucket).
            for q in (0.5, 0.99):
                bound = bucket_quantile(decisions_before, decisions_after, q)
                result[f"decision_p{round(q * 100)}_ms_at_most"] = bound * 1000
        print(json.dumps(result), flush=True)
        self.results.append(result)
        return result

    async def events_received(self) -> dict[str, float]:
        """dialguard's count of the events it received, by type; {} when it does not run."""
        if self.metrics_url is None:
            return {}
        return await labelled(self.metrics_url, "dialguard_ari_events_total", "type")

    async def settle(self, channels: list[str], within: float = 15.0) -> None:
        """Wait until every channel left Stasis and Asterisk has no calls left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    if all(c in self.timer.left for c in channels):
                        break
                    await asyncio.sleep(0.05)
                while True:
                    _, listed = await self.asterisk.rest("GET", "/channels")
                    if not [c for c in listed or [] if c["id"].startswith(GATED_PREFIX)]:
                        break
                    await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def dialguard(self, subscribe_all: str) -> Any:
        """`dialguard serve` holding the application; SIGTERM on exit."""
        from gate import free_port, wait_ready

        api, metrics = free_port(), free_port()
        env = {
            **os.environ,
            "DIALGUARD_DATABASE_URL": self.dsn,
            "DIALGUARD_DATA_DIR": str(self.workdir),
            "DIALGUARD_ARI_URL": self.asterisk.base_url,
            "DIALGUARD_ARI_USERNAME": self.asterisk.username,
            "DIALGUARD_ARI_PASSWORD": self.asterisk.password,
            "DIALGUARD_API_LISTEN": f"127.0.0.1:{api}",
            "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{metrics}",
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS": "off",
            "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT": "off",
            "DIALGUARD_ARI_SUBSCRIBE_ALL": subscribe_all,
        }
        proc = await asyncio.create_subprocess_exec(
            DIALGUARD, "serve", env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await wait_ready(f"http://127.0.0.1:{api}/readyz", proc)
            self.parties.app = psutil.Process(proc.pid)
            self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
            print(json.dumps({"dialguard_serve_pid": proc.pid}), flush=True)  # for a profiler
            yield proc
        finally:
            self.parties.app = None
            self.metrics_url = None
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()

    @contextlib.asynccontextmanager
    async def noop(self) -> Any:
        """The no-op application (bench/noop_ari.py) holding `dialguard`; SIGTERM on exit."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            NOOP_APP,
            "--url",
            self.asterisk.base_url,
            "--user",
            self.asterisk.username,
            "--password",
            self.asterisk.password,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(15):
                if (await proc.stdout.readline()).strip() != b"ready":
                    raise SystemExit(f"the no-op application exited ({await proc.wait()})")
            await wait_application(self.asterisk, "dialguard")
            self.parties.app = psutil.Process(proc.pid)
            yield proc
        finally:
            self.parties.app = None
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


async def start_background(asterisk: RealAsterisk, client: AriClient, count: int) -> None:
    for i in range(count):
        await client.originate(
            "Local/s@bench-background",
            app=PARKING,
            channel_id=f"bg-{i}",
            other_channel_id=f"bgl-{i}",
        )
    async with asyncio.timeout(60):
        while True:
            _, listed = await asterisk.rest("GET", "/channels")
            if len([c for c in listed or [] if c["id"].startswith("bg")]) >= 2 * count:
                return
            await asyncio.sleep(0.2)


def asterisk_home() -> Path:
    """DIALGUARD_TEST_ASTERISK, else the tree scripts/setup unpacks into .cache/asterisk."""
    home = (
        asterisk_home_from_env() or Path(__file__).resolve().parents[1] / ".cache/asterisk/asterisk"
    )
    if not (home / "sbin" / "asterisk").is_file():
        raise SystemExit(f"no Asterisk at {home}: set DIALGUARD_TEST_ASTERISK (see README)")
    return home


async def postmaster_of(dsn: str) -> int | None:
    """The postmaster of a server on this machine: the parent of our own backend."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        parent = psutil.Process(backend).parent()  # while the backend lives
    except psutil.NoSuchProcess:
        return None
    finally:
        await conn.close()
    return int(parent.pid) if parent is not None else None


async def run_real(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="dialguard-bench-gate-real-"))
    os.chmod(workdir, 0o711)  # the embedded server runs as its own user when we are root
    embedded = None
    dsn = args.dsn
    if dsn is None:
        embedded = EmbeddedPostgres(workdir / "pgdata")
        dsn = embedded.start()
    try:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        await migrate(pool)
        for caller in CALLERS:
            await CallerIdStore(pool).add("+1" + caller, None)
        server_version = await pool.fetchval("SHOW server_version")
        jit = await pool.fetchval("SHOW jit")
        await pool.close()
        print(
            json.dumps({"postgres": server_version, "jit": jit, "embedded": embedded is not None}),
            flush=True,
        )
        extra = BACKGROUND_DIALPLAN if args.background or args.background_calls else ""
        async with (
            RealAsterisk(
                asterisk_home(),
                observe=False,
                extra_dialplan=extra,
                verbose=args.asterisk_verbose,
            ) as asterisk,
            aiohttp.ClientSession(headers=asterisk.auth_headers) as session,
            AriClient(
                asterisk.base_url, asterisk.username, asterisk.password, "dialguard"
            ) as client,
            reading(session, asterisk, PARKING, lambda _: None),
        ):
            if not asterisk.sip:
                raise SystemExit("the real-Asterisk gate benchmark needs the SIP stack (root)")
            timer = StasisTimer()
            run = Run(
                args,
                asterisk,
                client,
                timer,
                Parties(asterisk, await postmaster_of(dsn)),
                dsn,
                workdir,
                iter(range(10**9)),
            )
            if args.background:
                await start_background(asterisk, client, args.background)
            if args.events_only:
                await events_only(run)
            else:
                async with reading(session, asterisk, OBSERVER, timer.feed, subscribe_all=True):
                    await compare(run)
                print_table(run.results)
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"load_average": os.getloadavg()}))


async def compare(run: Run) -> None:
    for rate in run.args.rates:
        async with run.noop():
            await run.phase("no-op", rate)
        async with run.dialguard(run.args.subscribe_all):
            await run.phase("dialguard", rate)


@contextlib.asynccontextmanager
async def unrelated_calls(run: Run) -> AsyncIterator[None]:
    """--background-calls calls a second into [bench-calls] while the block runs."""
    rate = run.args.background_calls

    async def place() -> None:
        began = time.perf_counter()
        for n in itertools.count():
            await asyncio.sleep(max(0.0, began + n / rate - time.perf_counter()))
            with contextlib.suppress(AriError):
                await run.client.originate(
                    "Local/s@bench-calls", extension="w", context="bench-calls"
                )

    task = asyncio.create_task(place()) if rate else None
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def events_only(run: Run) -> None:
    """dialguard's CPU with nothing to gate, under the background channels alone."""
    # `true` first: Asterisk 22.10.1 keeps an application that was registered without
    # subscribeAll alive through its endpoint subscription after its socket closes, and then
    # ignores subscribeAll=true on the next connection, until Asterisk restarts.
    for subscribe_all in ("true", "true", "false", "false"):
        async with run.dialguard(subscribe_all), unrelated_calls(run):
            await asyncio.sleep(2)
            before = run.parties.sample()
            started = time.perf_counter()
            await asyncio.sleep(run.args.seconds)
            after = run.parties.sample()
            elapsed = time.perf_counter() - started
            _, listed = await run.asterisk.rest("GET", "/channels")
            result = {
                "subscribe_all": subscribe_all,
                "background_channels": run.args.background,
                "background_calls_per_s": run.args.background_calls,
                "channels_up": len(listed or []),
                "seconds": round(elapsed, 1),
                "dialguard_cpu_pct": round(100 * (after["app"] - before["app"]) / elapsed, 2),
                "asterisk_cpu_pct": round(
                    100 * (after["asterisk"] - before["asterisk"]) / elapsed, 2
                ),
            }
            print(json.dumps(result), flush=True)


def print_table(results: list[dict[str, Any]]) -> None:
    """The steps side by side, as bench/README.md shows them."""
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_rate.setdefault(r["offered_per_s"], {})[r["app"]] = r
    print()
    print(
        "| calls/s | no-op p50 / p99 ms | dialguard p50 / p99 ms | added p50 / p99 ms |"
        " decision p50 / p99 ≤ ms | events per call |"
        " CPU ms per call (beyond idle): dialguard · PostgreSQL · Asterisk (no-op step) |"
        " CPU ms per call: no-op application · dialguard ÷ no-op |"
        " machine busy % (no-op / dialguard) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|---|---|")
    for rate, apps in sorted(by_rate.items()):
        noop, dg = apps.get("no-op"), apps.get("dialguard")
        if noop is None or dg is None:
            continue
        added = [_minus(dg[k], noop[k]) for k in ("p50_ms", "p99_ms")]
        cpu, base = dg["marginal_cpu_ms_per_call"], noop["marginal_cpu_ms_per_call"]
        ratio = _ratio(cpu.get("app"), base.get("app"))
        print(
            f"| {rate:g} | {noop['p50_ms']} / {noop['p99_ms']} | {dg['p50_ms']} / {dg['p99_ms']}"
            f" | {added[0]} / {added[1]}"
            f" | {dg.get('decision_p50_ms_at_most')} / {dg.get('decision_p99_ms_at_most')}"
            f" | {dg.get('events_per_call')}"
            f" | {cpu.get('app')} · {cpu.get('postgres')} ·"
            f" {cpu.get('asterisk')} ({base.get('asterisk')}) |"
            f" {base.get('app')} · {ratio} |"
            f" {noop['machine_busy_pct']} / {dg['machine_busy_pct']} |"
        )


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b or b <= 0 else round(a / b, 1)
