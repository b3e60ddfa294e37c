"""Blacklist import through the real CSV path: rows per second, and where the time goes.

    .venv/bin/python bench/blacklist_import.py                  # the CLI, 10,000,000 rows
    .venv/bin/python bench/blacklist_import.py --mode breakdown # in process, parse vs database
    .venv/bin/python bench/blacklist_import.py --mode prototype # the proposed empty-table path

``cli`` runs ``dialguard blacklist import FILE --database URL --json`` into a fresh, empty, migrated
database ``dialguard_import`` and reports what it reports. ``breakdown`` runs the same two calls
the CLI makes (``blacklist_csv.read_rows`` and ``BlacklistStore.import_chunk``, one chunk after
the other) in this process and times each side separately; with ``--profile`` it also runs under
cProfile and prints the top functions. ``prototype`` measures the change proposed in the README
for an import into an empty table (see ``run_prototype``); it uses no dialguard import code.

The file (made once, kept in ``--file``) holds ``--rows`` random US numbers in E.164, one a line
under a ``number`` header, in random order, as a national registry download would (``+1`` and ten
digits: the CSV reader's fast path). ``--national-sample N`` also times parsing N numbers written
without ``+1`` (the full phonenumbers parse), without importing them.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import uvloop

from common import (
    add_server_arguments,
    admin_connection,
    die,
    load_average,
    machine,
    server,
    with_database,
)
from dialguard.blacklist_csv import read_rows
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.connection import create_pool
from dialguard.store.migrate import migrate

IMPORT_DB = "dialguard_import"
DEFAULT_FILE = Path("/tmp/dialguard-bench/blacklist-10m.csv")


def make_file(path: Path, rows: int, seed: int) -> None:
    if path.exists() and path.stat().st_size > 0:
        with path.open() as handle:
            if sum(1 for _ in handle) - 1 == rows:
                return
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    started = time.perf_counter()
    with path.open("w") as out:
        out.write("number\n")
        batch: list[str] = []
        for _ in range(rows):
            # NANP: area code and exchange 200-999, any line.
            n = rng.randrange(200, 1000) * 10_000_000 + rng.randrange(2_000_000, 10_000_000)
            batch.append(f"+1{n}\n")
            if len(batch) == 100_000:
                out.writelines(batch)
                batch = []
        out.writelines(batch)
    print(f"wrote {rows:,} rows to {path} in {time.perf_counter() - started:.1f} s", flush=True)


async def fresh_database(admin_url: str) -> str:
    async with admin_connection(admin_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {IMPORT_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {IMPORT_DB}")
    dsn = with_database(admin_url, IMPORT_DB)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        await migrate(pool)
    finally:
        await pool.close()
    return dsn


async def drop_database(admin_url: str) -> None:
    async with admin_connection(admin_url) as admin:
        await admin.execute(f"DROP DATABASE IF EXISTS {IMPORT_DB} WITH (FORCE)")


def run_cli(dsn: str, path: Path) -> dict[str, float]:
    exe = Path(sys.executable).parent / "dialguard"
    started = time.perf_counter()
    proc = subprocess.run(
        [str(exe), "--json", "blacklist", "import", str(path), "--database", dsn],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        die(f"dialguard blacklist import failed: {proc.stderr.strip()[-500:]}")
    result = json.loads(proc.stdout)
    return {
        "rows": float(result["imported"]),
        "seconds": float(result["seconds"]),
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(result["imported"] / result["seconds"]),
    }


async def run_breakdown(dsn: str, path: Path, chunk_size: int) -> dict[str, float]:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    store = BlacklistStore(pool)
    parse = db = 0.0
    imported = 0
    try:
        started = time.perf_counter()
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            chunks = read_rows(handle, region="US", default_source="import", chunk_size=chunk_size)
            while True:
                t0 = time.perf_counter()
                found = next(chunks, None)
                parse += time.perf_counter() - t0
                if found is None:
                    break
                rows, _errors = found
                t0 = time.perf_counter()
                imported += await store.import_chunk(rows)
                db += time.perf_counter() - t0
        total = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "rows": imported,
        "seconds": round(total, 2),
        "rows_per_second": round(imported / total),
        "parse_seconds": round(parse, 2),
        "parse_rows_per_second": round(imported / parse),
        "database_seconds": round(db, 2),
        "database_rows_per_second": round(imported / db),
    }


def fast_numbers(lines: Iterable[str], chunk_size: int) -> Iterator[list[tuple[int]]]:
    """The proposed parser for one-column E.164 files: no csv module, no dict, no regex.

    A line that is not ``+`` and 7 to 15 digits would go to the existing full parser; the
    benchmark file has none, so that branch is only sketched here.
    """
    chunk: list[tuple[int]] = []
    for line in lines:
        text = line.strip()
        if text[:1] == "+" and text[1:].isdigit() and 8 <= len(text) <= 16 and text[1] != "0":
            chunk.append((int(text[1:]),))
        elif text and text != "number":
            raise ValueError(f"not handled by the prototype: {text!r}")
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_prototype(dsn: str, path: Path, chunk_size: int) -> dict[str, float]:
    """The proposed empty-table path: fast parse, COPY the numbers alone into an unlogged
    stage, then one de-duplicating INSERT into the table with its primary key dropped and
    rebuilt afterwards (one sort instead of ten million random b-tree insertions)."""
    parse = copy = 0.0
    staged = 0
    # Not dialguard's pool: its 30 s command timeout is shorter than the one big INSERT.
    async with admin_connection(dsn) as conn:
        started = time.perf_counter()
        await conn.execute("CREATE UNLOGGED TABLE blacklist_load (number bigint)")
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            chunks = fast_numbers(handle, chunk_size)
            while True:
                t0 = time.perf_counter()
                rows = next(chunks, None)
                parse += time.perf_counter() - t0
                if rows is None:
                    break
                t0 = time.perf_counter()
                await conn.copy_records_to_table("blacklist_load", records=rows, columns=["number"])
                copy += time.perf_counter() - t0
                staged += len(rows)
        t0 = time.perf_counter()
        async with conn.transaction():
            # Memory for the one de-duplicating sort and the index build, this transaction only.
            await conn.execute("SET LOCAL work_mem = '256MB'")
            await conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
            await conn.execute(
                "ALTER TABLE blacklist_numbers DROP CONSTRAINT blacklist_numbers_pkey"
            )
            await conn.execute(
                "INSERT INTO blacklist_numbers (number, campaign, source)"
                " SELECT DISTINCT number, '', 'import' FROM blacklist_load"
            )
            await conn.execute("ALTER TABLE blacklist_numbers ADD PRIMARY KEY (number, campaign)")
            await conn.execute("DROP TABLE blacklist_load")
        merge = time.perf_counter() - t0
        total = time.perf_counter() - started
        rows_in = await conn.fetchval("SELECT count(*) FROM blacklist_numbers")
    return {
        "rows": staged,
        "distinct_rows": rows_in,
        "seconds": round(total, 2),
        "rows_per_second": round(staged / total),
        "parse_seconds": round(parse, 2),
        "parse_rows_per_second": round(staged / parse),
        "copy_seconds": round(copy, 2),
        "merge_and_index_seconds": round(merge, 2),
    }


def national_sample(count: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    lines = ["number\n"]
    for _ in range(count):
        # Area codes 201-210, all assigned, so every row is valid and takes the full parse.
        n = rng.randrange(201, 211) * 10_000_000 + rng.randrange(2_000_000, 10_000_000)
        lines.append(f"{n}\n")
    started = time.perf_counter()
    rows = bad = 0
    for good, errors in read_rows(lines, region="US"):
        rows += len(good)
        bad += len(errors)
    seconds = time.perf_counter() - started
    return {"rows": rows, "bad": bad, "parse_rows_per_second": round(count / seconds)}


async def main_async(args: argparse.Namespace, admin_url: str) -> None:
    print(f"# machine: {machine()}", flush=True)
    try:
        for mode in args.mode:
            dsn = await fresh_database(admin_url)
            before = load_average()
            if mode == "cli":
                result = run_cli(dsn, args.file)
            elif mode == "prototype":
                result = await run_prototype(dsn, args.file, args.chunk_size)
            elif args.profile:
                profiler = cProfile.Profile()
                profiler.enable()
                result = await run_breakdown(dsn, args.file, args.chunk_size)
                profiler.disable()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
                print(text.getvalue())
            else:
                result = await run_breakdown(dsn, args.file, args.chunk_size)
            print(
                f"{mode}: {json.dumps(result)} load {before} -> {load_average()}",
                flush=True,
            )
    finally:
        if not args.keep:
            await drop_database(admin_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_server_arguments(parser)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument(
        "--mode",
        type=lambda s: s.split(","),
        default=["cli"],
        help="comma-separated: cli (the real command), breakdown (the same calls in process, "
        "timed), prototype (the proposed empty-table path, see run_prototype)",
    )
    parser.add_argument("--chunk-size", type=int, default=50_000, help="breakdown only")
    parser.add_argument("--profile", action="store_true", help="breakdown under cProfile")
    parser.add_argument("--national-sample", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for mode in args.mode:
        if mode not in ("cli", "breakdown", "prototype"):
            die(f"unknown mode {mode!r}")
    make_file(args.file, args.rows, args.seed)
    if args.national_sample:
        print(f"national format: {json.dumps(national_sample(args.national_sample, args.seed))}")
    with server(args) as url:
        uvloop.run(main_async(args, url))


if __name__ == "__main__":
    main()
