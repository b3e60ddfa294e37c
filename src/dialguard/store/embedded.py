"""An embedded PostgreSQL (the ``pgserver`` package) for machines with no database configured.

The server lives in a data directory and listens on a Unix socket only. Several dialguard
processes may share one directory: pgserver serialises start-up with a file lock and the last
process to leave stops the server.
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
            import pgserver

            self.data_dir.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        self._server = server
        uri: str = server.get_uri()
        log.info("embedded PostgreSQL ready in %s", self.data_dir)
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None


def _runtime_dir() -> Path:
    path = Path("/tmp") / f"dialguard-runtime-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path
