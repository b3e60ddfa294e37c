"""The asyncpg pool and the translation of driver failures into :class:`StoreUnavailable`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from dialguard.store.errors import StoreConflict, StoreUnavailable

log = logging.getLogger(__name__)

# Failures that mean "the database is not there", as opposed to a bug in a query.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
)


def failure_kind(exc: BaseException) -> str | None:
    """The class of failure a PostgreSQL error reports, when it means the database cannot
    decide now rather than a fault in what was asked (``None``):

    - ``conflict``: a serialization failure or a deadlock (40001, 40P01); worth one retry;
    - ``read_only``: a read-only transaction (25006), as on a hot standby after a failover;
    - ``canceled``: a statement timeout or a cancel (57014);
    - ``resources``: disk full, out of memory, too many connections (class 53);
    - ``shutdown``: an administrator's or a crash's shutdown, or a server starting (57P01-03);
    - ``connection``: the connection failed or was lost (class 08), or the socket did.
    """
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return "connection"
    state = str(getattr(exc, "sqlstate", "") or "")
    if state in ("40001", "40P01"):
        return "conflict"
    if state == "25006":
        return "read_only"
    if state == "57014":
        return "canceled"
    for prefix, kind in (("53", "resources"), ("57P", "shutdown"), ("08", "connection")):
        if state.startswith(prefix):
            return kind
    return None


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """``exc`` as the store's error when it means the database cannot decide now."""
    kind = failure_kind(exc)
    if kind is None:
        return None
    message = f"{kind}: {str(exc) or type(exc).__name__}"
    return (StoreConflict if kind == "conflict" else StoreUnavailable)(message, kind)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release.

    The default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` every
    time a connection goes back to the pool: one more round trip per decision. dialguard takes
    only transaction-level advisory locks, opens no cursors outside transactions, never LISTENs
    and sets no session state, so there is nothing to reset; asyncpg still rolls back a
    transaction left open before calling this.
    """


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """Open a pool; the caller owns it and must ``await pool.close()``."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=30,
            # JIT off: the decision's plans, costed on tables without statistics (a new
            # database), looked expensive enough to compile, at tens of milliseconds a call.
            server_settings={"application_name": "dialguard", "jit": "off"},
        )
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        translated = unavailable(exc)
        if translated is None:
            raise
        raise StoreUnavailable(f"cannot connect to the database: {exc}", translated.kind) from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, with driver failures translated.

    When the driver loses track of a connection's state (asyncpg's ``InternalClientError``: seen
    when the server shuts down while a statement is being prepared, or when a migration changed
    a type the connection had cached), the connection is closed, so the pool replaces it, and
    the caller sees the database as unavailable.
    """
    try:
        async with pool.acquire() as conn:
            try:
                yield conn
            except asyncpg.exceptions.InternalClientError:
                conn.terminate()
                raise
    except asyncpg.exceptions.InternalClientError as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        translated = unavailable(exc)
        if translated is None:
            raise  # a fault in what was asked: the caller's to handle
        raise translated from exc


def row_to_dict(row: Any) -> dict[str, Any]:
    return dict(row.items())


class OneConnection:
    """A pool stand-in over one connection, so that stores can work inside one transaction
    that the caller commits or rolls back (``dialguard replay`` rolls back by default)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn
