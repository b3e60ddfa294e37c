"""An embedded PostgreSQL (the ``pgserver`` package) for machines with no database configured.

The server lives in a data directory and listens on a Unix socket only. Several dialguard
processes may share one directory: pgserver serialises start-up with a file lock and the last
process to leave stops the server.

PostgreSQL's own defaults suit a server that shares a small machine with anything else; this one
runs decisions. So the data directory gets ``dialguard.conf`` (see :func:`server_settings`),
included from ``postgresql.conf`` and written only where it is missing: an operator's edits to
it, or ``ALTER SYSTEM``, win. It takes effect when the server starts.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """Owns one embedded server handle; ``stop()`` releases it (the server stops with the last)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self) -> str:
        """Start (or join) the server and return its connection URL."""
        os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import PostgresServer

            class TunedServer(PostgresServer):
                """pgserver's server, given dialguard's settings between ``initdb`` and the
                start (pgserver runs both under its file lock, in its constructor)."""

                def ensure_pgdata_inited(self) -> None:
                    super().ensure_pgdata_inited()
                    write_settings(self.pgdata)

            # As pgserver.get_server, with the subclass: one handle per directory a process.
            path = self.data_dir.expanduser().resolve()
            path.mkdir(parents=True, exist_ok=True)
            server = PostgresServer._instances.get(path) or TunedServer(path, cleanup_mode="stop")
        self._server = server
        uri: str = server.get_uri()
        log.info("embedded PostgreSQL ready in %s", self.data_dir)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


SETTINGS_FILE = "dialguard.conf"
_INCLUDE = f"include_if_exists = '{SETTINGS_FILE}'"
_MB = 1024 * 1024


def server_settings(memory_bytes: int) -> dict[str, str]:
    """The settings dialguard writes for a machine with ``memory_bytes`` of memory.

    * ``shared_buffers``: an eighth of the memory, from PostgreSQL's 128MB up to 1GB. At 128MB
      the benchmark's data (1,000,000 blacklisted numbers, 100,000 destinations with history)
      does not fit: backends wrote 25,000-106,000 evicted pages a 15 s run and decided 2,562 a
      second on average, against none and 2,738 with 1GB (seven runs each, in turns;
      ``bench/README.md``).
    * ``checkpoint_timeout`` and ``max_wal_size``: the first change to a page after a checkpoint
      writes the whole page to the WAL. Right after one, 15 s of decisions wrote 100-134 MB of
      WAL instead of 20-45 MB; checkpoints every 15 minutes instead of 5 pay that a third as
      often, for a longer recovery after a crash.
    """
    buffers_mb = min(1024, max(128, memory_bytes // 8 // _MB))
    return {
        "shared_buffers": f"{buffers_mb}MB",
        "checkpoint_timeout": "15min",
        "max_wal_size": "4GB",
    }


def write_settings(pgdata: Path, memory_bytes: int | None = None) -> None:
    """Write ``dialguard.conf`` where it is missing and include it from ``postgresql.conf``."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    settings = pgdata / SETTINGS_FILE
    if not settings.exists():
        lines = [
            "# dialguard's settings for its embedded server, written once. Edit them here (or",
            "# with ALTER SYSTEM, which wins); they take effect when the server next starts.",
        ]
        lines += [f"{k} = '{v}'" for k, v in server_settings(memory_bytes).items()]
        settings.write_text("\n".join(lines) + "\n")
        settings.chmod(0o644)  # pgserver runs the server as its own user when started by root
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _INCLUDE not in text.splitlines():
        conf.write_text(text + ("" if text.endswith("\n") else "\n") + _INCLUDE + "\n")


def _runtime_dir() -> Path:
    path = Path("/tmp") / f"dialguard-runtime-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path
