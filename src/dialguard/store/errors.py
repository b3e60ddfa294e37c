"""The store's named errors; callers never see an asyncpg exception."""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises."""


class StoreUnavailable(StoreError):
    """The database did not answer: refused, dropped, timed out or shutting down."""


class NotFound(StoreError):
    """The named row does not exist."""


class Conflict(StoreError):
    """The change contradicts the row's state (e.g. releasing a retired caller ID)."""


class InvalidValue(StoreError, ValueError):
    """A value the store refuses to write (e.g. a blacklist expiry already past)."""
