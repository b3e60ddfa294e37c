"""Latency the ARI proxy adds: a dialer talking to the fake Asterisk directly, then via dialguard.

    .venv/bin/python bench/proxy.py        # about a minute with the defaults

Three processes on 127.0.0.1, each on its own uvloop: the fake Asterisk (key events only), the
real ``dialguard`` service (app.Service: the proxy, the gate with its outcome tracker, the
decider on the embedded PostgreSQL), and this client. One dialer sends requests one after
another over one keep-alive connection, alternating direct and proxied, so both see the same
moment of the machine. For each kind of request, the latency of each path over ``--requests``
requests after a warm-up, and what the proxy adds (the difference of the percentiles):

* ``GET /ari/channels``: a pass-through (small JSON answer, read whole);
* ``GET /ari/api-docs/channels.json``: a pass-through streamed (66 KB);
* ``POST /ari/channels?endpoint=PJSIP/<number>@carrier&...``: an origination to the trunk; the
  proxy decides it first (one ``dg_decide`` round trip) and links the new channel. Every
  destination is fresh, so every origination is allowed and placed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from common import add_server_arguments, die, fresh_number, load_average, machine, server
from dialguard.store.connection import create_pool
from dialguard.store.migrate import migrate

BENCH_DB = "dialguard_bench_proxy"
CALLER = "+12125550100"
ASTERISK = ("dialguard", "bench-asterisk")
DIALER = ("dialer", "bench-dialer")


@dataclass
class Figures:
    request: str
    path: str  # "direct" or "proxy"
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


# -- the fake Asterisk and the service, each in a process of its own ----------------------------


def run_fake(conn: Connection) -> None:
    async def main() -> None:
        from dialguard.testing import FakeAsterisk, Outcome

        async with FakeAsterisk(
            *ASTERISK, verbose_events=False, default_outcome=Outcome.answered(0.05)
        ) as fake:
            conn.send(fake.base_url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    uvloop.run(main())


def run_service(conn: Connection, ari_url: str, database_url: str, data_dir: str) -> None:
    async def main() -> None:
        import logging

        from dialguard.app import Service, Stores
        from dialguard.config import load_settings

        logging.basicConfig(level=logging.WARNING)
        settings = load_settings(
            None,
            {
                "DIALGUARD_ARI_URL": ari_url,
                "DIALGUARD_ARI_USERNAME": ASTERISK[0],
                "DIALGUARD_ARI_PASSWORD": ASTERISK[1],
                "DIALGUARD_ARI_SUBSCRIBE_ALL": "false",
                "DIALGUARD_API_LISTEN": "127.0.0.1:0",
                "DIALGUARD_METRICS_LISTEN": "127.0.0.1:0",
                "DIALGUARD_PROXY_LISTEN": "127.0.0.1:0",
                "DIALGUARD_PROXY_USERNAME": DIALER[0],
                "DIALGUARD_PROXY_PASSWORD": DIALER[1],
                "DIALGUARD_DATA_DIR": data_dir,
                # One caller ID places every call: its own caps would decide, not the proxy.
                "DIALGUARD_PROFILES_DEFAULT_CALLING_HOURS": "00:00-24:00",
                "DIALGUARD_PROFILES_DEFAULT_CALLERID_CAPS": "off",
                "DIALGUARD_PROFILES_DEFAULT_CALLERID_MAX_CONCURRENT": "off",
                "DIALGUARD_PROFILES_DEFAULT_CAMPAIGN_CALLERIDS_PER_DAY": "off",
            },
        )
        pool = await create_pool(database_url, min_size=4, max_size=8)
        service = Service(settings, Stores.on(pool))
        await service.start()
        try:
            async with asyncio.timeout(10):
                while True:
                    if service.gate.ready:
                        break
                    await asyncio.sleep(0.05)
            assert service.proxy is not None
            conn.send(service.proxy.base_url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            registry = service.registry
            conn.send(
                {
                    "decisions": registry.get_sample_value("dialguard_decision_seconds_count"),
                    "decision_seconds": registry.get_sample_value("dialguard_decision_seconds_sum"),
                    "ungated": registry.get_sample_value("dialguard_ungated_calls_total"),
                }
            )
        finally:
            await service.stop()
            await pool.close()

    uvloop.run(main())


# -- the dialer ---------------------------------------------------------------------------------


async def timed(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    async with session.request(method, url, **kw) as resp:
        await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {url.split('?')[0]} -> {resp.status}")
    return (time.perf_counter() - started) * 1000


def figures(request: str, path: str, samples: list[float]) -> Figures:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Figures(request, path, len(samples), cuts[49], cuts[89], cuts[98], max(samples))


async def measure(args: argparse.Namespace, asterisk_url: str, proxy_url: str) -> list[Figures]:
    asterisk_auth = {"Authorization": aiohttp.encode_basic_auth(*ASTERISK)}
    dialer_auth = {"Authorization": aiohttp.encode_basic_auth(*DIALER)}
    results: list[Figures] = []
    number = iter(range(10**9))

    def originate_params() -> dict[str, str]:
        return {
            "endpoint": f"PJSIP/+{fresh_number(next(number))}@carrier",
            "extension": "s",
            "context": "default",
            "callerId": f'"Bench" <{CALLER}>',
        }

    kinds: list[tuple[str, str, str, Any]] = [
        ("GET /ari/channels", "GET", "/channels", dict),
        ("GET /ari/api-docs/channels.json", "GET", "/api-docs/channels.json", dict),
        ("POST /ari/channels (originate)", "POST", "/channels", originate_params),
    ]
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), headers=asterisk_auth
        ) as direct,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), headers=dialer_auth) as via,
    ):
        for label, method, tail, params in kinds:
            samples: dict[str, list[float]] = {"direct": [], "proxy": []}
            for i in range(args.warmup + args.requests):
                for path, session, base in (
                    ("direct", direct, asterisk_url),
                    ("proxy", via, proxy_url),
                ):
                    elapsed = await timed(session, method, base + tail, params=params())
                    if i >= args.warmup:
                        samples[path].append(elapsed)
            for path in ("direct", "proxy"):
                results.append(figures(label, path, samples[path]))
            direct_f, proxy_f = results[-2], results[-1]
            print(
                f"{label}: direct p50 {direct_f.p50_ms:.3f} p99 {direct_f.p99_ms:.3f} ms;"
                f" proxy p50 {proxy_f.p50_ms:.3f} p99 {proxy_f.p99_ms:.3f} ms;"
                f" added p50 {proxy_f.p50_ms - direct_f.p50_ms:+.3f}"
                f" p99 {proxy_f.p99_ms - direct_f.p99_ms:+.3f} ms",
                file=sys.stderr,
            )
            # Let the answered test calls of this round end before the next one.
            await asyncio.sleep(0.5)
    return results


async def prepare_database(admin_url: str) -> str:
    from common import admin_connection, with_database

    async with admin_connection(admin_url) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {BENCH_DB}")
    url = with_database(admin_url, BENCH_DB)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        await migrate(pool)
        from dialguard.store.callerids import CallerIdStore

        await CallerIdStore(pool).add(CALLER, None)
    finally:
        await pool.close()
    return url


def report(results: list[Figures]) -> str:
    lines = [
        f"machine: {machine()}; load {load_average()}",
        "",
        "| request | path | n | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for f in results:
        lines.append(
            f"| {f.request} | {f.path} | {f.count} | {f.p50_ms:.3f} | {f.p90_ms:.3f}"
            f" | {f.p99_ms:.3f} | {f.max_ms:.3f} |"
        )
    lines += ["", "| request | added p50 ms | added p99 ms |", "|---|---:|---:|"]
    for direct_f, proxy_f in zip(results[::2], results[1::2], strict=True):
        lines.append(
            f"| {direct_f.request} | {proxy_f.p50_ms - direct_f.p50_ms:+.3f}"
            f" | {proxy_f.p99_ms - direct_f.p99_ms:+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--requests", type=int, default=2000, help="measured per path and kind")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured first requests")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.requests < 100:
        die("--requests must be at least 100 for a p99")

    context = multiprocessing.get_context("spawn")
    with server(args) as admin_url, tempfile.TemporaryDirectory(prefix="dg-bench-proxy-") as tmp:
        database_url = uvloop.run(prepare_database(admin_url))
        fake_end, fake_here = context.Pipe()
        fake = context.Process(target=run_fake, args=(fake_end,), daemon=True)
        fake.start()
        asterisk_url = fake_here.recv()
        service_end, service_here = context.Pipe()
        service = context.Process(
            target=run_service, args=(service_end, asterisk_url, database_url, tmp), daemon=True
        )
        service.start()
        if not service_here.poll(60):
            die("the dialguard service did not start")
        proxy_url = service_here.recv()
        try:
            results = uvloop.run(measure(args, asterisk_url, proxy_url))
        finally:
            service_here.send("stop")
            stats = service_here.recv() if service_here.poll(30) else {}
            service.join(30)
            fake_here.send("stop")
            fake.join(10)
    text = report(results)
    decisions = stats.get("decisions") or 0
    if decisions:
        mean = stats["decision_seconds"] / decisions * 1000
        text += (
            f"\n\nOf the origination's added time, the decision itself (dg_decide in"
            f" PostgreSQL, measured in the service) took {mean:.3f} ms on average over"
            f" {decisions:.0f} decisions; ungated calls counted: {stats.get('ungated') or 0:.0f}."
        )
    print(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
