"""Gate throughput and latency, against the fake Asterisk or a real one.

``--asterisk fake`` (the default): the fake Asterisk offers StasisStart at a fixed rate to a
real `dialguard serve` process; latency runs from the StasisStart to the continue or hang-up
that dialguard sends back.

    .venv/bin/python bench/gate.py --rates 250 500 1000 --seconds 10

The fake Asterisk and the load generator run in this process, dialguard in its own, PostgreSQL
(embedded, fresh) in a third: three parties sharing the machine's cores, as on a real PBX host.

``--asterisk real``: a real Asterisk (DIALGUARD_TEST_ASTERISK, see
dialguard.testing.real_asterisk) runs the shipped [dialguard-out] dialplan, with a sipp carrier
that answers every call. At each rate the same calls are gated first by a no-op ARI application
(it holds the application name `dialguard` and only continues each channel to `allowed`), then
by `dialguard serve`; latency is the time a channel spends in Stasis, from its ChannelDialplan
event entering Stasis() to the next one (or its hang-up request), as an observer application
(subscribeAll) receives them. CPU per call is read for dialguard, PostgreSQL, Asterisk, sipp and
this process.

    .venv/bin/python bench/gate.py --asterisk real --rates 10 50 100 200 --seconds 10
    scripts/debian-postgres sh -c \
        '.venv/bin/python bench/gate.py --asterisk real --dsn "$DIALGUARD_TEST_DSN"'
    .venv/bin/python bench/gate.py --asterisk real --events-only --background 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from common import machine_cpu
from dialguard.store.callerids import CallerIdStore
from dialguard.store.connection import create_pool
from dialguard.store.embedded import EmbeddedPostgres
from dialguard.store.migrate import migrate
from dialguard.testing import FakeAsterisk, Outcome

DIALGUARD = str(Path(sys.executable).parent / "dialguard")
CALLERS = [f"2125{n:06d}" for n in range(1000, 1200)]


class TimedFake(FakeAsterisk):
    """The fake Asterisk, stamping when each channel's verdict (continue or hang-up) arrives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answered_at: dict[str, float] = {}

    def _record(
        self, method: str, path: str, query: dict[str, str], body: Any, status: int, response: Any
    ) -> None:
        if path.endswith("/continue") or method == "DELETE":
            channel = path.split("/")[2]
            self.answered_at.setdefault(channel, time.perf_counter())
        super()._record(method, path, query, body, status, response)


class CpuMeter:
    """CPU seconds (user + system) of the parties on the box, read before and after a step.

    The bench process holds the fake Asterisk and the load generator; PostgreSQL is the
    postmaster and every backend under it.
    """

    def __init__(self, dialguard_pid: int, postmaster_pid: int | None) -> None:
        self._bench = psutil.Process()
        self._dialguard = psutil.Process(dialguard_pid)
        self._postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None

    def sample(self) -> dict[str, float]:
        seconds = {
            "bench": _cpu(self._bench),
            "dialguard": _cpu(self._dialguard),
        }
        if self._postmaster is not None:
            family = [self._postmaster, *self._postmaster.children(recursive=True)]
            seconds["postgres"] = sum(_cpu(p) for p in family)
        # The whole machine, to tell how much went to anything else (or to the hypervisor).
        machine = machine_cpu()
        seconds["machine_all"] = machine.total
        seconds["machine_busy"] = machine.busy - machine.stolen
        seconds["machine_steal"] = machine.stolen
        return seconds


def cpu_figures(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, Any]:
    """CPU per offered call in ms for each party (the settling wait included), and the share
    of the machine's cores that was busy, that went to other processes, and that was stolen."""
    if not before:
        return {}
    spent = {name: after[name] - before[name] for name in after}
    parties = ("bench", "dialguard", "postgres")
    ours = sum(spent.get(name, 0.0) for name in parties)
    total = max(spent["machine_all"], 1e-9)
    return {
        "cpu_ms_per_call": {
            name: round(spent[name] * 1000 / max(calls, 1), 2) for name in parties if name in spent
        },
        "machine_busy_pct": round(100 * spent["machine_busy"] / total, 1),
        "others_busy_pct": round(100 * max(spent["machine_busy"] - ours, 0.0) / total, 1),
        "steal_pct": round(100 * spent["machine_steal"] / total, 1),
    }


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def postmaster_pid(data_dir: Path) -> int | None:
    """The embedded server's postmaster, from its pid file."""
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(30):
        while True:
            if proc.returncode is not None:
                raise RuntimeError("dialguard serve exited")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)


async def decision_buckets(metrics_url: str) -> dict[float, float]:
    """dialguard's own decision-time histogram (cumulative counts by upper bound, seconds)."""
    return {
        float(k): v
        for k, v in (await labelled(metrics_url, "dialguard_decision_seconds_bucket", "le")).items()
    }


async def labelled(metrics_url: str, name: str, label: str) -> dict[str, float]:
    """The samples of the series `name` on dialguard's /metrics, by the value of `label`."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as resp:
        text = await resp.text()
    prefix = f'{name}{{{label}="'
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            key, _, count = line[len(prefix) :].partition('"} ')
            values[key] = float(count)
    return values


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile q of the decisions made in between."""
    bounds = sorted(after)
    total = after[bounds[-1]] - before.get(bounds[-1], 0.0)
    for bound in bounds:
        if after[bound] - before.get(bound, 0.0) >= q * total:
            return bound
    return bounds[-1]


async def run_rate(
    fake: TimedFake,
    rate: float,
    seconds: float,
    offset: int,
    cpu: CpuMeter | None = None,
    metrics_url: str | None = None,
) -> dict[str, Any]:
    count = int(rate * seconds)
    cpu_before = cpu.sample() if cpu is not None else {}
    decisions_before = await decision_buckets(metrics_url) if metrics_url else {}
    sent: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    start = loop.time()
    late = 0
    for i in range(count):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late += 1
        n = offset + i
        call = await fake.originate_outbound(f"9172{n:06d}", CALLERS[n % len(CALLERS)])
        assert call.stasis is not None
        sent[call.stasis.id] = time.perf_counter()
    offered_for = loop.time() - start
    # Report what was answered, even if some verdicts never came.
    with contextlib.suppress(TimeoutError):
        await fake.wait_for(lambda: all(c in fake.answered_at for c in sent), timeout=10.0)
    cpu_after = cpu.sample() if cpu is not None else {}
    decisions_after = await decision_buckets(metrics_url) if metrics_url else {}
    latencies = sorted(
        (fake.answered_at[c] - t0) * 1000 for c, t0 in sent.items() if c in fake.answered_at
    )
    answered = len(latencies)
    last = max((fake.answered_at[c] for c in sent if c in fake.answered_at), default=0.0)
    first = min(sent.values())
    result: dict[str, Any] = {
        "offered_per_s": rate,
        "calls": count,
        "answered": answered,
        "achieved_offer_per_s": round(count / offered_for, 1),
        "answered_per_s": round(answered / max(last - first, 1e-9), 1),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2) if latencies else None,
        "max_ms": round(latencies[-1], 2) if latencies else None,
        "generator_late": late,
        **cpu_figures(cpu_before, cpu_after, count),
    }
    if decisions_after:
        # How much of the latency is the decision itself (histogram buckets: an upper bound).
        result["decision_p50_ms_at_most"] = (
            bucket_quantile(decisions_before, decisions_after, 0.5) * 1000
        )
        result["decision_p99_ms_at_most"] = (
            bucket_quantile(decisions_before, decisions_after, 0.99) * 1000
        )
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rates",
        type=float,
        nargs="+",
        help="calls offered per second, one step each (default 250 500 1000; real: 10 50 100 200)",
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--dsn", help="use this PostgreSQL instead of a fresh embedded one")
    parser.add_argument(
        "--subscribe-all",
        choices=["true", "false"],
        default="false",
        help="ari.subscribe_all for dialguard (true hears every channel on the PBX;"
        " false, the default, as dialguard's own)",
    )
    parser.add_argument(
        "--fake",
        choices=["validating", "lean"],
        default="validating",
        help="lean: the fake skips checking requests against the ARI definitions and keeps no"
        " records, so that less of the box's CPU goes to what stands in for a C Asterisk",
    )
    parser.add_argument(
        "--all-events",
        action="store_true",
        help="the fake sends every event Asterisk sends (ChannelVarset, ChannelDialplan, ...),"
        " not only those dialguard acts on: what dialguard hears from a real Asterisk",
    )
    parser.add_argument(
        "--asterisk",
        choices=["fake", "real"],
        default="fake",
        help="real: the Asterisk named by DIALGUARD_TEST_ASTERISK with a sipp carrier, and a"
        " no-op ARI application measured beside dialguard at each rate",
    )
    parser.add_argument(
        "--background",
        type=int,
        default=0,
        help="real only: this many unrelated channels (variables set, dialplan steps, about six"
        " events a second each) run on the Asterisk throughout",
    )
    parser.add_argument(
        "--background-calls",
        type=float,
        default=0,
        help="real only, with --events-only: this many unrelated calls a second (a Local pair"
        " dialling another, answered for half a second) start and end throughout",
    )
    parser.add_argument(
        "--events-only",
        action="store_true",
        help="real only: no gated calls; dialguard's CPU over --seconds with the --background"
        " channels, with subscribe_all true and false",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=3.0,
        help="real only: seconds of idle before each step, to tell each party's CPU per call"
        " from what it spends with no calls",
    )
    parser.add_argument(
        "--asterisk-verbose",
        type=int,
        default=0,
        help="real only: Asterisk's verbosity (3 logs every dialplan step, at a CPU cost)",
    )
    args = parser.parse_args()
    if args.asterisk == "real":
        from gate_real import run_real

        args.rates = args.rates or [10, 50, 100, 200]
        await run_real(args)
        return
    args.rates = args.rates or [250, 500, 1000]

    workdir = Path(tempfile.mkdtemp(prefix="dialguard-bench-gate-"))
    workdir.chmod(0o711)  # as root the embedded server runs as its own user: let it pass
    embedded = None
    dsn = args.dsn
    if dsn is None:
        embedded = EmbeddedPostgres(workdir / "pgdata")
        dsn = embedded.start()
    pool = await create_pool(dsn, min_size=1, max_size=2)
    await migrate(pool)
    for caller in CALLERS:
        await CallerIdStore(pool).add("+1" + caller, None)
    await pool.close()

    results = []
    fake = TimedFake(
        stasis_args=("${CAMPAIGN}",),
        keep_dial_cause=True,
        verbose_events=args.all_events,
        default_outcome=Outcome.answered(0.5),
        validate_requests=args.fake == "validating",
        keep_records=args.fake == "validating",
    )
    async with fake:
        api, metrics = free_port(), free_port()
        env = {
            **os.environ,
            "DIALGUARD_DATABASE_URL": dsn,
            "DIALGUARD_DATA_DIR": str(workdir),
            "DIALGUARD_ARI_URL": fake.base_url,
            "DIALGUARD_ARI_PASSWORD": "dialguard",
            "DIALGUARD_API_LISTEN": f"127.0.0.1:{api}",
            "DIALGUARD_METRICS_LISTEN": f"127.0.0.1:{metrics}",
            # Fresh destinations from 200 caller IDs: the checks all run, few deny.
            "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS": "off",
            "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
            "DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT": "off",
            "DIALGUARD_ARI_SUBSCRIBE_ALL": args.subscribe_all,
        }
        proc = await asyncio.create_subprocess_exec(
            DIALGUARD, "serve", env=env, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await wait_ready(f"http://127.0.0.1:{api}/readyz", proc)
            # Warm-up, not reported: first calls load number metadata and prepare statements.
            await run_rate(fake, 50, 2, 0)
            pg_pid = postmaster_pid(workdir / "pgdata") if embedded is not None else None
            cpu = CpuMeter(proc.pid, pg_pid)
            offset = 100
            for rate in args.rates:
                result = await run_rate(
                    fake, rate, args.seconds, offset, cpu, f"http://127.0.0.1:{metrics}/metrics"
                )
                offset += result["calls"]
                print(json.dumps(result), flush=True)
                results.append(result)
                await asyncio.sleep(2)
        finally:
            proc.terminate()
            await proc.wait()
    if embedded is not None:
        embedded.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"load_average": os.getloadavg()}))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
