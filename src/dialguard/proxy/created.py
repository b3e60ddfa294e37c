"""Trunk channels made by ``POST /channels/create``, remembered until they are dialed.

A created channel places no call; the ``/dial`` that follows does, and that request names only
the channel. What to decide on (the destination in the create's endpoint, the caller ID and
campaign in its variables) is kept here from the create. Memory is bounded: an entry lives at
most ``max_age`` seconds and the oldest go first beyond ``max_entries``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CreatedTrunkChannel:
    destination: str
    caller_number: str | None
    campaign: str | None
    created: float


class CreatedChannels:
    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_age: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, CreatedTrunkChannel] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock

    def remember(
        self, channel_id: str, destination: str, caller_number: str | None, campaign: str | None
    ) -> None:
        now = self._clock()
        self._entries.pop(channel_id, None)
        self._entries[channel_id] = CreatedTrunkChannel(destination, caller_number, campaign, now)
        while self._entries:
            oldest_id, oldest = next(iter(self._entries.items()))
            if len(self._entries) <= self._max_entries and oldest.created >= now - self._max_age:
                break
            del self._entries[oldest_id]

    def get(self, channel_id: str) -> CreatedTrunkChannel | None:
        found = self._entries.get(channel_id)
        if found is not None and found.created < self._clock() - self._max_age:
            del self._entries[channel_id]
            return None
        return found

    def forget(self, channel_id: str) -> None:
        self._entries.pop(channel_id, None)

    def __len__(self) -> int:
        return len(self._entries)
