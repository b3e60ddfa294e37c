"""The admin use cases behind the API's ports that are more than one store call: the audit
trail and complaint log, caller IDs with their health, campaigns with validated profiles."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from dialguard.decider import ProfileSource
from dialguard.policy.feedback import FeedbackPolicy
from dialguard.policy.model import LogQuery
from dialguard.policy.profile import ProfileError, build_profile
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.complaints import ComplaintStore
from dialguard.store.decisions import list_decisions
from dialguard.store.health import HealthStore

Row = dict[str, Any]


class Audit:
    """The decision log and the complaint log, newest first."""

    def __init__(self, pool: asyncpg.Pool, complaints: ComplaintStore) -> None:
        self._pool = pool
        self._complaints = complaints

    async def decisions(self, query: LogQuery) -> list[Row]:
        return await list_decisions(self._pool, query)

    async def complaints(self, query: LogQuery) -> list[Row]:
        return await self._complaints.list(query)


class CallerIds:
    """Caller IDs, shown with their health figures; state changes raise the store's errors."""

    def __init__(
        self,
        store: CallerIdStore,
        health: HealthStore,
        policy: FeedbackPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._health = health
        self._policy = policy
        self._clock = clock

    async def list(self, state: str | None = None) -> list[Row]:
        return await self._store.list(state)

    async def add(self, number: str, campaign: str | None) -> Row:
        return await self._store.add(number, campaign)

    async def get(self, number: str) -> Row | None:
        row = await self._store.get(number)
        if row is None:
            return None
        health = await self._health.callerid(
            number,
            at=self._clock(),
            window=self._policy.health_calls,
            short_call_seconds=self._policy.short_call_seconds,
        )
        return {**row, "health": health.as_json()}

    async def set_state(self, number: str, state: str, reason: str | None) -> Row:
        return await self._store.set_state(number, state, reason)


class Campaigns:
    """Campaigns; a profile and its overrides are validated before anything is stored, and
    ``changed`` (the decider's ``forget``) hears of every change."""

    def __init__(
        self,
        store: CampaignStore,
        profiles: ProfileSource,
        changed: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._profiles = profiles
        self._changed = changed

    async def list(self) -> list[Row]:
        return await self._store.list()

    async def get(self, name: str) -> Row | None:
        return await self._store.get(name)

    async def set(self, name: str, profile: str | None, overrides: Mapping[str, Any] | None) -> Row:
        current = await self._store.get(name)
        chosen = profile or (str(current["profile"]) if current else "default")
        raw = self._profiles.raw(chosen)
        if raw is None:
            raise ProfileError([f"campaign {name}: unknown profile {chosen!r}"])
        merged = dict(current["overrides"]) if current and overrides is None else {}
        merged.update(overrides or {})
        build_profile(raw, merged, where=f"campaign {name}")
        row = await self._store.set(name, chosen, merged)
        self._tell(name)
        return row

    async def set_paused(self, name: str, paused: bool, reason: str | None) -> Row:
        row = await self._store.set_paused(name, paused, reason)
        self._tell(name)
        return row

    def _tell(self, name: str) -> None:
        if self._changed is not None:
            self._changed(name)
