"""The composition root: the one place that builds and wires the adapters and the use cases."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from dialguard.config import Settings, profile_raw
from dialguard.decider import Decider, DecisionMetrics, FailOpenSpool, NumberPolicy
from dialguard.store.blacklist import BlacklistStore
from dialguard.store.callerids import CallerIdStore
from dialguard.store.campaigns import CampaignStore
from dialguard.store.connection import create_pool
from dialguard.store.decisions import DecisionStore
from dialguard.store.embedded import EmbeddedPostgres
from dialguard.store.migrate import migrate

log = logging.getLogger(__name__)


class SettingsProfiles:
    """Profiles by name from the settings: the ProfileSource the decider reads."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def raw(self, name: str) -> Mapping[str, Any] | None:
        if name not in self._settings.profiles:
            return None
        return profile_raw(self._settings, name)


@dataclass
class Stores:
    pool: asyncpg.Pool
    decisions: DecisionStore
    campaigns: CampaignStore
    callerids: CallerIdStore
    blacklist: BlacklistStore

    @classmethod
    def on(cls, pool: asyncpg.Pool) -> Stores:
        return cls(
            pool,
            DecisionStore(pool),
            CampaignStore(pool),
            CallerIdStore(pool),
            BlacklistStore(pool),
        )


def build_decider(
    settings: Settings,
    stores: Stores,
    *,
    metrics: DecisionMetrics | None = None,
    spool: FailOpenSpool | None = None,
    deadline: float | None = None,
) -> Decider:
    return Decider(
        decisions=stores.decisions,
        campaigns=stores.campaigns,
        profiles=SettingsProfiles(settings),
        numbers=NumberPolicy(settings.numbers.default_region, settings.numbers.fallback_timezone),
        metrics=metrics,
        deadline=settings.gate.decision_deadline if deadline is None else deadline,
        fail_mode=settings.gate.fail_mode,
        spool=spool,
    )


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """The configured database, or an embedded PostgreSQL in the data directory."""
    if settings.database.url:
        yield settings.database.url
        return
    embedded = EmbeddedPostgres(settings.database.data_dir / "pgdata")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@asynccontextmanager
async def open_stores(
    settings: Settings, *, url: str | None = None, run_migrations: bool = True
) -> AsyncIterator[Stores]:
    """A migrated pool and the stores on it; closes the pool (and any embedded server)."""
    if url is not None:
        pool = await create_pool(url, max_size=settings.database.pool_size)
        try:
            if run_migrations:
                await migrate(pool)
            yield Stores.on(pool)
        finally:
            await pool.close()
        return
    async with (
        database_url(settings) as found,
        open_stores(settings, url=found, run_migrations=run_migrations) as stores,
    ):
        yield stores
