"""The database's clock as seen from here: the offset between a local clock and the database's.

A live decision's time is the database's clock once its locks are held. The pure checks
(calling hours) run before, on this side, so they read this estimate of that clock, which every
round trip that brings back a database time sharpens: the time was read somewhere between the
request leaving (``sent``) and its answer arriving (``received``), so the offset lies between
``stamp - received`` and ``stamp - sent``. The estimate is the middle of the narrowest such
bounds seen lately; bounds older than ``horizon`` are dropped, so a clock that steps or drifts
is followed within that time.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class ClockOffset:
    """How far the database's clock is ahead of the local one (pure: fed observations)."""

    def __init__(self, horizon: timedelta = timedelta(seconds=60)) -> None:
        self._horizon = horizon
        self._low: timedelta | None = None
        self._high: timedelta | None = None
        self._since: datetime | None = None

    @property
    def known(self) -> bool:
        return self._low is not None

    @property
    def offset(self) -> timedelta:
        if self._low is None or self._high is None:
            return timedelta(0)
        return self._low + (self._high - self._low) / 2

    @property
    def uncertainty(self) -> timedelta:
        """Half the width of the bounds: the estimate is at most this far off."""
        if self._low is None or self._high is None:
            return timedelta.max
        return (self._high - self._low) / 2

    def observe(self, sent: datetime, stamp: datetime, received: datetime) -> None:
        """The database read ``stamp`` between local times ``sent`` and ``received``."""
        low, high = stamp - received, stamp - sent
        fresh = self._since is None or received - self._since > self._horizon
        if fresh or self._low is None or self._high is None or low > self._high or high < self._low:
            # First, old, or disagreeing with what was known (the clock stepped): start again.
            self._low, self._high, self._since = low, high, received
            return
        self._low = max(self._low, low)
        self._high = min(self._high, high)
