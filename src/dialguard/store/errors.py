"""The store's named errors; callers never see an asyncpg exception."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database cannot answer now: refused, dropped, timed out, shutting down, read-only,
    out of disk, memory or connections, or the statement was cancelled. ``kind`` names the
    class (see :func:`dialguard.store.connection.failure_kind`)."""

    def __init__(self, message: str, kind: str = "connection") -> None:
        super().__init__(message)
        self.kind = kind


class StoreConflict(StoreUnavailable):
    """A serialization failure or a deadlock: the same work, run again, may well succeed."""


class NotFound(StoreError):
    """The named row does not exist."""


class Conflict(StoreError):
    """The change contradicts the row's state (e.g. releasing a retired caller ID)."""


class InvalidValue(StoreError, ValueError):
    """A value the store refuses to write (e.g. a blacklist expiry already past)."""
