"""Helpers shared by tests: decider construction and fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from dialguard.decider import Decider, NumberPolicy
from dialguard.policy.profile import builtin_raw
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecisionStore


class BuiltinProfiles:
    """The shipped profiles, as a ProfileSource, with per-test overrides of `default`."""

    def __init__(self, **default_changes: Any) -> None:
        self.changes = default_changes

    def raw(self, name: str) -> dict[str, Any]:
        values = builtin_raw(name)
        if name == "default":
            values.update(self.changes)
        return values


def make_decider(pool: asyncpg.Pool, profiles: BuiltinProfiles | None = None, **kw: Any) -> Decider:
    """A decider on ``pool``; ``decisions`` replaces its DecisionStore (batches, say)."""
    return Decider(
        decisions=kw.pop("decisions", None) or DecisionStore(pool),
        campaigns=CampaignStore(pool),
        profiles=profiles or BuiltinProfiles(),
        numbers=NumberPolicy("US", "America/New_York"),
        deadline=kw.pop("deadline", 5.0),
        **kw,
    )


# 15:00 UTC = 10:00 in New York: inside the default calling hours for US numbers.
NOON_NY = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
