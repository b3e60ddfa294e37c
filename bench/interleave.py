"""The decider of two versions, run in turns against copies of one data set.

This machine's speed swings by 2x within an hour, so two versions measured an hour apart say
little. This script runs them in turns, minutes apart:

    .venv/bin/python bench/interleave.py --old HEAD~1 --rounds 3 --clients 16

It checks the old version out into a temporary worktree and builds its data set with its own
``bench/dataset.py`` (its own migrations), keeps that as a second database, and rebuilds the
current one. Then, each round, it runs ``bench/decisions.py --no-pgbench`` of each version
against its own database (renamed to ``dialguard_bench`` for the run), and prints decisions/s,
p99 and the CPU each decision cost the client and the server. Server CPU is read from /proc
(every process named ``postgres``) over the whole run, warm-up included, so the server must be
on this machine; it is divided by every decision the run made, warm-up included, at the run's
measured rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import BENCH_DB, add_server_arguments, admin_connection, machine_cpu, server

ROOT = Path(__file__).resolve().parent.parent
OLD_DB = "dialguard_bench_old"
NEW_DB = "dialguard_bench_new"


def postgres_cpu_seconds() -> float:
    """User and system time of every process named postgres on this machine, in seconds, with
    that of their children that have exited (a backend's time moves to the postmaster when
    its connection closes)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


async def rename(url: str, old: str, new: str) -> None:
    async with admin_connection(url) as conn:
        await conn.execute(f'ALTER DATABASE "{old}" RENAME TO "{new}"')


async def set_aside_as(url: str, name: str) -> None:
    """Rename the data set just built to ``name``, replacing any older one of that name."""
    async with admin_connection(url) as conn:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'ALTER DATABASE "{BENCH_DB}" RENAME TO "{name}"')


async def restore(url: str) -> None:
    """Leave the working tree's data set as dialguard_bench, and drop the old one."""
    async with admin_connection(url) as conn:
        names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        if NEW_DB in names and BENCH_DB not in names:
            await conn.execute(f'ALTER DATABASE "{NEW_DB}" RENAME TO "{BENCH_DB}"')
        await conn.execute(f'DROP DATABASE IF EXISTS "{OLD_DB}" WITH (FORCE)')


def run(tree: Path, script: str, url: str, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run(
        [sys.executable, str(tree / "bench" / script), "--database", url, *extra],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"{tree / 'bench' / script} failed:\n{done.stdout}{done.stderr}")


def measure(tree: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        before = postgres_cpu_seconds()
        run(
            tree,
            "decisions.py",
            url,
            "--clients",
            str(args.clients),
            "--batches",
            str(args.batches),
            "--seconds",
            str(args.seconds),
            "--synchronous-commit",
            "on",
            "--no-pgbench",
            "--json",
            out.name,
        )
        server_cpu = postgres_cpu_seconds() - before
        found = [m for m in json.loads(Path(out.name).read_text()) if m["driver"] == "decider"]
    m = found[0]
    decisions = m["per_second"] * (args.seconds + args.warmup)
    m["server_cpu_us"] = server_cpu / decisions * 1e6 if decisions else 0.0
    return dict(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_server_arguments(parser)
    parser.add_argument("--old", required=True, help="the version to compare with (a git rev)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="decisions.py's default")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, server(args) as url:
        old_tree = Path(tmp) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), args.old],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            print(f"building the data set of {args.old} and of the working tree", flush=True)
            run(old_tree, "dataset.py", url)
            asyncio.run(set_aside_as(url, OLD_DB))
            run(ROOT, "dataset.py", url)
            asyncio.run(set_aside_as(url, NEW_DB))
            print("| round | version | decisions/s | p99 ms | client µs | server µs | stolen % |")
            print("|---:|---|---:|---:|---:|---:|---:|")
            for n in range(1, args.rounds + 1):
                for label, tree, db in (("new", ROOT, NEW_DB), (args.old, old_tree, OLD_DB)):
                    asyncio.run(rename(url, db, BENCH_DB))
                    machine0 = machine_cpu()
                    try:
                        m = measure(tree, url, args)
                    finally:
                        asyncio.run(rename(url, BENCH_DB, db))
                    _, stolen = machine_cpu().shares_since(machine0)
                    print(
                        f"| {n} | {label} | {m['per_second']:,.0f} | {m['p99_ms']:.2f} |"
                        f" {m['client_cpu_us']:.0f} | {m['server_cpu_us']:.0f} | {stolen:.0f} |",
                        flush=True,
                    )
        finally:
            asyncio.run(restore(url))
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False
            )


if __name__ == "__main__":
    main()
