"""Closed sets of codes that operators, dashboards and tests rely on. Keep them stable."""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Rule(StrEnum):
    """Every rule a decision can name, in the order they are checked."""

    INVALID_NUMBER = "invalid_number"
    CALLERID_UNKNOWN = "callerid_unknown"
    CALLERID_RESTED = "callerid_rested"
    CAMPAIGN_PAUSED = "campaign_paused"
    BLACKLISTED = "blacklisted"
    CALLING_HOURS = "calling_hours"
    DESTINATION_COOLDOWN = "destination_cooldown"
    DESTINATION_INTERVAL = "destination_interval"
    DESTINATION_CAP = "destination_cap"
    CALLERID_ROTATION = "callerid_rotation"
    CAMPAIGN_ROTATION = "campaign_rotation"
    CALLERID_RATE = "callerid_rate"
    CALLERID_CONCURRENCY = "callerid_concurrency"
    STORE_UNAVAILABLE = "store_unavailable"


RULE_ORDER: tuple[Rule, ...] = tuple(Rule)


class CallerIdState(StrEnum):
    ACTIVE = "active"
    RESTED = "rested"
    RETIRED = "retired"


class RestReason(StrEnum):
    COMPLAINTS = "complaints"
    CARRIER_BLOCK_SUSPECTED = "carrier_block_suspected"
    MANUAL = "manual"


class Outcome(StrEnum):
    """What became of an allowed call, as counted in dialguard_call_outcomes_total."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    CONGESTION = "congestion"
    CARRIER_REJECTED = "carrier_rejected"
    FAILED = "failed"


# Q.850 cause 21 and the SIP answers carriers use to refuse a caller: the carrier-block signal.
CARRIER_REJECT_CAUSE = 21
CARRIER_REJECT_SIP_CODES: frozenset[int] = frozenset({403, 603, 607, 608})

# Label values of dialguard_carrier_rejections_total{cause}.
CARRIER_REJECTION_LABELS: tuple[str, ...] = ("q850_21", "sip_403", "sip_603", "sip_607", "sip_608")

COMPLAINT_SOURCES: tuple[str, ...] = ("carrier", "12321", "regulator", "crm", "internal")

# A call without a campaign, or in a campaign never set, belongs to this one (profile `default`).
DEFAULT_CAMPAIGN = "default"
