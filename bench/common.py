"""What the benchmark scripts share: the server they run against and the shape of the data set.

The data set is described by formulas rather than stored lists so that the Python decider run and
the ``pgbench`` script draw destinations, caller IDs and campaigns from exactly the same ranges.
Every range below is made of valid NANP numbers (checked with ``phonenumbers``), so the decider's
normalisation accepts them.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from dialguard.policy.profile import builtin_raw
from dialguard.store.embedded import EmbeddedError, EmbeddedPostgres, install_dir

BENCH_DB = "dialguard_bench"
DEFAULT_DATA_DIR = Path("/tmp/dialguard-bench/pgdata")

# Blacklisted numbers: +1 718 200 0000 + i, i < BLACKLIST_COUNT.
BLACKLIST_BASE = 17182000000
BLACKLIST_COUNT = 1_000_000
# Prefixes live in ranges no benchmark destination is drawn from (a prefix hit would hide the
# exact-number lookup); every decision still probes the prefix index once per possible length.
PREFIX_COUNT = 10_000
# Destinations with history: +1 212 200 0000 + i, i < HISTORY_COUNT.
HISTORY_BASE = 12122000000
HISTORY_COUNT = 100_000
# Registered caller IDs: +1 415 200 0000 + i, i < CALLER_COUNT, 15,000 to each of 20 campaigns
# (caller i in campaign c{i // CALLERS_PER_CAMPAIGN}).
CALLER_BASE = 14152000000
CALLER_COUNT = 300_000
CAMPAIGN_COUNT = 20
CALLERS_PER_CAMPAIGN = CALLER_COUNT // CAMPAIGN_COUNT
# Fresh destinations: area codes 201..210, exchanges 200..999, any line: 80 million numbers.
FRESH_AREAS = 10
FRESH_SPAN = 8_000_000

# The destination mix, in percent: blacklisted, then with history, the rest fresh.
MIX_BLACKLISTED = 5
MIX_HISTORY = 20


def fresh_number(k: int) -> int:
    """The k-th fresh destination (0 <= k < FRESH_AREAS * FRESH_SPAN), as E.164 digits."""
    return 12010000000 + (k // FRESH_SPAN) * 10_000_000 + 2_000_000 + k % FRESH_SPAN


def campaign_of(caller_index: int) -> str:
    return f"c{caller_index // CALLERS_PER_CAMPAIGN}"


def caller_number(caller_index: int) -> str:
    return f"+{CALLER_BASE + caller_index}"


def prefix(i: int) -> str:
    """Half UK ranges, half an unassigned NANP area code: never a benchmark destination."""
    if i % 2 == 0:
        return f"+44{7000 + i // 2}"
    return f"+1976{i // 2:04d}"


@dataclass(frozen=True, slots=True)
class Pick:
    destination: str
    caller_index: int
    kind: str  # "blacklisted", "history" or "fresh"


def pick(rng: random.Random) -> Pick:
    """One decision's destination and caller, in the same mix as the pgbench script."""
    caller = rng.randrange(CALLER_COUNT)
    r = rng.randint(1, 100)
    if r <= MIX_BLACKLISTED:
        return Pick(f"+{BLACKLIST_BASE + rng.randrange(BLACKLIST_COUNT)}", caller, "blacklisted")
    if r <= MIX_BLACKLISTED + MIX_HISTORY:
        return Pick(f"+{HISTORY_BASE + rng.randrange(HISTORY_COUNT)}", caller, "history")
    return Pick(f"+{fresh_number(rng.randrange(FRESH_AREAS * FRESH_SPAN))}", caller, "fresh")


def bench_profile_raw() -> dict[str, Any]:
    """The shipped default profile with two changes, both so that the rules run but never bind.

    * ``calling_hours`` all day: the hours are judged in Python before the round trip; left at
      08:00-21:00 local, the mix would depend on the hour the benchmark runs (at night every US
      destination is denied before the database is asked anything).
    * ``campaign_callerids_per_day`` = the caller IDs of a campaign (15,000 instead of 20): the
      per-caller-ID caps (5 a minute, 10 up at once) need hundreds of thousands of caller IDs at
      thousands of decisions a second, and 20 a campaign would mean 15,000 campaigns, which no
      single site runs (and which would make the per-campaign caches and metrics the story).

    Every other rule keeps its default, so every decision that gets past the blacklist runs every
    count: cool-down, interval, both destination caps, rotation, campaign rotation, the three
    caller-ID caps and concurrency.
    """
    raw = builtin_raw("default")
    raw["calling_hours"] = "00:00-24:00"
    raw["campaign_callerids_per_day"] = CALLERS_PER_CAMPAIGN
    return raw


class BenchProfiles:
    """A ProfileSource: every profile name is the benchmark profile."""

    def raw(self, name: str) -> dict[str, Any]:
        return bench_profile_raw()


# -- the server ------------------------------------------------------------------------------


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=os.environ.get("DIALGUARD_BENCH_DSN"),
        help="admin URL of an existing server (env DIALGUARD_BENCH_DSN); the benchmark uses its "
        f"own database {BENCH_DB} there. Default: dialguard's embedded server in --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("DIALGUARD_BENCH_DATA_DIR", str(DEFAULT_DATA_DIR))),
        help="data directory of the embedded server (env DIALGUARD_BENCH_DATA_DIR)",
    )


@contextmanager
def server(args: argparse.Namespace) -> Iterator[str]:
    """The admin URL of the server to use; an embedded one is stopped on exit."""
    if args.database:
        yield str(args.database)
        return
    embedded = EmbeddedPostgres(args.data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass(frozen=True, slots=True)
class LibpqTarget:
    """How the libpq tools (pgbench, psql) reach the server named by a URL."""

    host: str
    port: str
    user: str

    @classmethod
    def from_url(cls, url: str) -> LibpqTarget:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "localhost"])[0]
        port = query.get("port", [str(parts.port or 5432)])[0]
        return cls(host=host, port=port, user=parts.username or "postgres")

    def args(self) -> list[str]:
        return ["-h", self.host, "-p", self.port, "-U", self.user]


def pg_bin(name: str) -> str:
    """A PostgreSQL client program: the embedded server's (its version), else PATH."""
    try:
        candidate = install_dir() / "bin" / name
    except EmbeddedError:
        return name
    return str(candidate) if candidate.exists() else name


@asynccontextmanager
async def admin_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB RAM"


def die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class MachineCpu:
    """CPU seconds of the whole machine since boot, from /proc/stat (guest time, which Linux
    counts inside user time too, left out)."""

    busy: float  # neither idle nor waiting on I/O; stolen time included
    # What the hypervisor gave to other guests while this one had work to do: on a shared
    # virtual machine, what makes the same code run at half speed an hour later.
    stolen: float
    total: float

    def shares_since(self, before: MachineCpu) -> tuple[float, float]:
        """The busy and the stolen share of the machine's CPU time since ``before``, in %."""
        total = max(self.total - before.total, 1e-9)
        return (
            round(100 * (self.busy - before.busy) / total, 1),
            round(100 * (self.stolen - before.stolen) / total, 1),
        )


def machine_cpu() -> MachineCpu:
    fields = [
        float(x) / _TICKS for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return MachineCpu(busy=total - idle, stolen=fields[7], total=total)
