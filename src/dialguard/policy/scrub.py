"""Scrubbing a list: which destinations are callable now, and why not.

A scrub judges what belongs to the destination, in the documented rule order, exactly as a
decision would at the same moment: ``invalid_number``, ``blacklisted``, ``calling_hours``,
``destination_cooldown``, ``destination_interval``, ``destination_cap``. Given a caller ID it also
judges the caller ID's standing (``callerid_unknown``, ``callerid_rested``) and
``callerid_rotation`` per destination; given a campaign, ``campaign_paused``. It does not judge
what only the moment of dialling decides (``campaign_rotation``, ``callerid_rate``,
``callerid_concurrency``): a list is scrubbed for later, and those change minute by minute. Without
a caller ID no caller-ID rule is judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from dialguard.policy.codes import Rule
from dialguard.policy.model import Facts
from dialguard.policy.profile import Profile

Call = tuple[datetime, str, int | None]
"""One allowed call to a destination: (at, caller ID, answered seconds or None)."""


@dataclass(frozen=True, slots=True)
class ScrubRequest:
    caller_id: str | None = None
    campaign: str | None = None


class ScrubRow(NamedTuple):
    """The verdict on one input number, in input order (a tuple: a scrub makes millions)."""

    destination: str
    callable: bool
    rule: Rule | None
    callable_at: datetime | None


def lookback_seconds(profile: Profile) -> int:
    """How far back a destination's calls can matter to any destination rule."""
    spans = [profile.destination_min_interval or 0]
    spans += [w.seconds for w in profile.destination_caps]
    if profile.conversation_cooldown is not None:
        spans.append(profile.conversation_cooldown + max(profile.max_call_duration, 86400))
    if profile.rotation_per_destination is not None:
        spans.append(profile.rotation_per_destination.seconds)
    return max(spans)


def judge_calls(
    calls: Sequence[Call], profile: Profile, at: datetime, caller_id: str | None
) -> tuple[Rule | None, Facts]:
    """The first destination rule that ``calls`` (oldest first, all at or before ``at``) break.

    The same checks, windows and facts as ``dg_decide``; a call at t counts in a window W when
    ``at - W < t``.
    """
    cooldown = _cooldown(calls, profile, at)
    if cooldown is not None:
        return Rule.DESTINATION_COOLDOWN, cooldown
    interval = profile.destination_min_interval
    if interval is not None:
        last = calls[-1][0] if calls else None
        if last is not None and last > at - timedelta(seconds=interval):
            frees = last + timedelta(seconds=interval)
            return Rule.DESTINATION_INTERVAL, {
                "last_at": last,
                "interval_s": interval,
                "frees_at": frees,
            }
    for window in profile.destination_caps:
        span = timedelta(seconds=window.seconds)
        inside = [t for t, _, _ in calls if t > at - span]
        if len(inside) >= window.limit:
            frees = inside[len(inside) - window.limit] + span
            return Rule.DESTINATION_CAP, {
                "count": len(inside),
                "limit": window.limit,
                "window_s": window.seconds,
                "frees_at": frees,
            }
    rotation = profile.rotation_per_destination
    if caller_id is not None and rotation is not None:
        since = at - timedelta(seconds=rotation.seconds)
        seen = {c for t, c, _ in calls if t > since}
        if caller_id not in seen and len(seen) >= rotation.limit:
            return Rule.CALLERID_ROTATION, {
                "seen": len(seen),
                "limit": rotation.limit,
                "window_s": rotation.seconds,
            }
    return None, {}


def _cooldown(calls: Sequence[Call], profile: Profile, at: datetime) -> Facts | None:
    cooldown, minimum = profile.conversation_cooldown, profile.conversation_min_seconds
    if cooldown is None or minimum is None:
        return None
    oldest = at - timedelta(seconds=cooldown + max(profile.max_call_duration, 86400))
    quiet_since = at - timedelta(seconds=cooldown)
    latest: tuple[datetime, int] | None = None
    for t, _, answered in calls:
        if answered is None or answered < minimum or t <= oldest:
            continue
        ended = t + timedelta(seconds=answered)
        if ended > quiet_since and (latest is None or ended > latest[0]):
            latest = (ended, answered)
    if latest is None:
        return None
    ended, answered = latest
    return {
        "ended_at": ended,
        "answered_seconds": answered,
        "cooldown_s": cooldown,
        "min_seconds": minimum,
        "frees_at": ended + timedelta(seconds=cooldown),
    }
