"""Helpers shared by tests: decider construction and fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from dialguard.decider import Decider, NumberPolicy
from dialguard.policy.profile import builtin_raw
from dialguard.store.campaigns import CampaignStore
from dialguard.store.decisions import DecideParams, DecideRules, DecisionStore


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

# Number blocks (a prefix to complete with four digits) in zones that cover the clock between
# them: at any moment one of them is well inside the default calling hours (08:00-21:00).
_DAYTIME_BLOCKS = (
    ("+1212264", "America/New_York"),
    ("+44207946", "Europe/London"),
    ("+8133555", "Asia/Tokyo"),
    ("+86106552", "Asia/Shanghai"),
)


def daytime_block(now: datetime | None = None) -> str:
    """A number block whose local time is now between 09:00 and 20:00, so that live decisions
    (on the real clock) to its numbers are inside calling hours for the next hour at least."""
    now = now or datetime.now(UTC)
    for prefix, zone in _DAYTIME_BLOCKS:
        if 9 <= now.astimezone(ZoneInfo(zone)).hour < 20:
            return prefix
    raise AssertionError(f"no daytime block at {now.isoformat()}")


# Every limit off.
RULES_ALL_OFF = DecideRules(
    require_registered=False,
    cooldown_s=None,
    conversation_min_s=None,
    interval_s=None,
    dest_cap_limits=(),
    dest_cap_windows=(),
    rotation_limit=None,
    rotation_window_s=None,
    campaign_rotation_limit=None,
    cid_cap_limits=(),
    cid_cap_windows=(),
    cid_max_concurrent=None,
    max_call_s=7200,
)


def params_all_off(destination: str = "+12122641234", seconds: int = 0) -> DecideParams:
    """A recorded decision at noon in New York (plus ``seconds``) with every limit off, for a
    campaign never set."""
    return DecideParams(
        at=NOON_NY + timedelta(seconds=seconds),
        caller_id="+12125550100",
        destination=destination,
        campaign="default",
        campaign_version=0,
        record=True,
        source="test",
        channel_id=None,
        pre_rule=None,
        pre_facts=None,
        hours_facts=None,
        rules=RULES_ALL_OFF,
    )
